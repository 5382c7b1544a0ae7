"""Every registered model reloads in a fresh process (the build process registered its
custom layers; the loading process must not depend on that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli, tiny_knobs

import mobilecv
from mobilecv.modelio import save_model

# Options that change which layer classes a family uses, with the values that do.
OPTION_VARIANTS = {"shortcut": ["pad"], "lrn": [True], "dims": [1, 3]}


def _variants():
    """(name, options, keras, first of its family): every model with every option value
    that adds a custom layer."""
    seen_families = set()
    for name in mobilecv.list_models():
        entry = mobilecv.registry.get(name)
        first = entry.family not in seen_families
        seen_families.add(entry.family)
        yield name, {}, "tf_keras", first
        for option in sorted(entry.options() & OPTION_VARIANTS.keys()):
            for value in OPTION_VARIANTS[option]:
                yield name, {option: value}, "tf_keras", first
                if option in ("shortcut", "lrn"):
                    yield name, {option: value}, "keras3", first


def _case_id(name: str, options: dict, keras: str) -> str:
    option = "".join(f"-{k}={v}" for k, v in options.items())
    return f"{name}{option}{'-keras3' if keras == 'keras3' else ''}"


def _cli(*args: str):
    return run_cli(*args, timeout=300)


def _build_and_save(path, name: str, options: dict, keras: str):
    knobs = tiny_knobs(name)
    if options.get("dims", 2) != 2:
        knobs["resolution"] = max(knobs["resolution"], 32)
    model = mobilecv.build(name, keras=keras, **knobs, **options)
    save_model(model, path)
    return model


# The first model of each family goes through `mobilecv profile` in its own process.
@pytest.mark.parametrize(
    ("name", "options", "keras"),
    [pytest.param(*case[:3], id=_case_id(*case[:3])) for case in _variants() if case[3]],
)
def test_saved_model_profiles_in_a_fresh_process(tmp_path, name, options, keras):
    model = _build_and_save(tmp_path / "model.keras", name, options, keras)
    done = _cli("profile", str(tmp_path / "model.keras"), "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["params"] == model.count_params()
    assert figures["macs"] == mobilecv.profile(model).macs


# Their siblings share the builder code: all of them are loaded in one fresh process (a
# process each took 10 minutes), by the loader `mobilecv profile` uses.
LOAD_AND_PROFILE = """
import json, sys
import mobilecv
from mobilecv.modelio import load_model
figures = {}
for path in sys.argv[1:]:
    model = load_model(path)
    figures[path] = [model.count_params(), mobilecv.profile(model).macs]
print(json.dumps(figures))
"""


@pytest.mark.slow
def test_every_other_saved_model_loads_in_one_fresh_process(tmp_path):
    expected = {}
    for i, (name, options, keras, first) in enumerate(_variants()):
        if not first:
            path = tmp_path / f"{i}.keras"
            model = _build_and_save(path, name, options, keras)
            expected[str(path)] = (_case_id(name, options, keras), model)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PROFILE, *expected],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for path, (case, model) in expected.items():
        assert figures[path] == [model.count_params(), mobilecv.profile(model).macs], case


def test_an_unloadable_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    done = _cli("profile", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in done.stderr


def test_an_unregistered_layer_class_is_named_not_dumped(tmp_path):
    """A model with a user's custom layer, loaded where that layer is not registered."""
    script = f"""
import tf_keras as K
@K.utils.register_keras_serializable(package="user")
class Twice(K.layers.Layer):
    def call(self, x):
        return 2 * x
i = K.Input((4,))
K.Model(i, Twice(name="twice")(K.layers.Dense(3)(i))).save({str(tmp_path / "user.keras")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    done = _cli("profile", str(tmp_path / "user.keras"))
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and len(line) < 400, line
    assert "Twice" in line, line

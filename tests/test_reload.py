"""Every registered model reloads in a fresh process (the build process registered its
custom layers; the loading process must not depend on that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mobilecv
from mobilecv.modelio import save_model
from tests.conftest import tiny_knobs

# Options that change which layer classes a family uses, with the values that do.
OPTION_VARIANTS = {"shortcut": ["pad"], "lrn": [True], "dims": [1, 3]}


def _variants():
    seen_families = set()
    for name in mobilecv.list_models():
        entry = mobilecv.registry.get(name)
        # One model per family in the default run; its siblings share the builder code.
        marks = [pytest.mark.slow] if entry.family in seen_families else []
        seen_families.add(entry.family)
        yield pytest.param(name, {}, "tf_keras", id=name, marks=marks)
        for option in sorted(entry.options() & OPTION_VARIANTS.keys()):
            for value in OPTION_VARIANTS[option]:
                yield pytest.param(name, {option: value}, "tf_keras", id=f"{name}-{option}={value}", marks=marks)  # fmt: skip
                if option in ("shortcut", "lrn"):
                    yield pytest.param(name, {option: value}, "keras3", id=f"{name}-{option}={value}-keras3", marks=marks)  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(("name", "options", "keras"), list(_variants()))
def test_saved_model_profiles_in_a_fresh_process(tmp_path, name, options, keras):
    knobs = tiny_knobs(name)
    if options.get("dims", 2) != 2:
        knobs["resolution"] = max(knobs["resolution"], 32)
    model = mobilecv.build(name, keras=keras, **knobs, **options)
    path = tmp_path / "model.keras"
    save_model(model, path)
    done = _cli("profile", str(path), "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["params"] == model.count_params()
    assert figures["macs"] == mobilecv.profile(model).macs


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

"""Generic over the registry, at tiny sizes (docs/ARCHITECTURE.md, rule 13)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_knobs

import mobilecv
from mobilecv import arch
from mobilecv.profiling import profile
from mobilecv.registry import register_model, resolve
from mobilecv.tasks.base import as_outputs, get_task

ALL = mobilecv.list_models()


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_tiny_and_runs(name):
    knobs = tiny_knobs(name)
    model = mobilecv.build(name, **knobs)
    task = get_task(mobilecv.registry.get(name).task)
    x = np.random.rand(2, *model.input_shape[1:]).astype("float32")
    outputs = as_outputs(model(x, training=False), task.outputs)
    assert list(outputs) == list(task.outputs)
    for value in outputs.values():
        assert len(value) == 2 and np.isfinite(value).all()
    if task.name == "classification":
        y = outputs["scores"]
        assert y.shape == (2, knobs["classes"])
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_params_do_not_change_with_resolution_but_macs_do(name):
    knobs = tiny_knobs(name)
    small = profile(mobilecv.build(name, **knobs))
    knobs["resolution"] *= 2
    big = profile(mobilecv.build(name, **knobs))
    assert small.params == big.params
    assert big.macs > 3 * small.macs


@pytest.mark.parametrize("name", ALL)
def test_grayscale_input(name):
    model = mobilecv.build(name, input_channels=1, **tiny_knobs(name))
    assert model.input_shape[-1] == 1


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "efficientnet_b0", "mobilenet_v1", "efficientnet_lite0"]
)
def test_keras3_builds_the_same_model_and_takes_the_same_weights(name):
    knobs = tiny_knobs(name)
    ours2 = mobilecv.build(name, **knobs)
    ours3 = mobilecv.build(name, keras="keras3", **knobs)
    assert type(ours3).__module__.startswith("keras.")
    assert ours2.count_params() == ours3.count_params()
    assert [layer.name for layer in ours2.layers] == [layer.name for layer in ours3.layers]
    ours3.set_weights(ours2.get_weights())
    x = np.random.rand(2, *ours2.input_shape[1:]).astype("float32") * 255
    np.testing.assert_allclose(
        ours2(x, training=False).numpy(), np.asarray(ours3(x, training=False)), atol=1e-5
    )


def test_width_rounds_channels_and_depth_uses_ceil():
    stages = arch.decode_table(["ir_r2_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c40"])
    scaled = arch.scale(stages, width=0.35, depth=1.1)
    assert [s.channels for s in scaled] == [8, 16]
    assert [s.repeats for s in scaled] == [math.ceil(2.2), math.ceil(3.3)]
    assert arch.scale(stages, depth=1.1, fixed_depth_stages=(0, -1))[0].repeats == 2


def test_make_divisible_rule():
    assert arch.make_divisible(32 * 0.35) == 16  # 11.2 -> 8 would lose more than 10%
    assert arch.make_divisible(1280 * 1.4) == 1792
    assert arch.make_divisible(3) == 8
    assert arch.make_divisible(100) == 104


def test_make_divisible_exists_exactly_once():
    root = Path(mobilecv.__file__).parent.parent
    files = [*root.glob("mobilecv/**/*.py"), *root.glob("converters/**/*.py")]
    hits = [p for p in files if "def make_divisible" in p.read_text()]
    assert [p.relative_to(root).as_posix() for p in hits] == ["mobilecv/arch.py"]


def test_block_grammar_round_trip_and_errors():
    spec = arch.decode("ir_r2_k5_s2_e6_c40_se0.25")
    assert (
        spec.kind,
        spec.repeats,
        spec.kernel,
        spec.stride,
        spec.expand,
        spec.channels,
        spec.se_ratio,
    ) == ("ir", 2, 5, 2, 6, 40, 0.25)
    with pytest.raises(ValueError, match="bad token"):
        arch.decode("ir_r2_x5_c4")
    with pytest.raises(ValueError, match="lacks"):
        arch.decode("ir_r2_k3")
    with pytest.raises(ValueError, match="unknown block kind"):
        arch.decode("zz_r1_k3_s1_c8")


def test_compound_scale():
    c = mobilecv.compound_scale(2)
    assert c.depth == pytest.approx(1.2**2)
    assert c.width == pytest.approx(1.1**2)
    assert c.resolution == round(224 * 1.15**2)
    assert mobilecv.compound_scale(1, base_resolution=200).resolution == 230


def test_phi_sets_all_three_and_explicit_knobs_override():
    knobs = resolve("efficientnet", phi=1)
    assert (knobs["width"], knobs["depth"], knobs["resolution"]) == pytest.approx((1.1, 1.2, 258))
    knobs = resolve("efficientnet", phi=1, resolution=200, width=0.5)
    assert (knobs["width"], knobs["depth"], knobs["resolution"]) == pytest.approx((0.5, 1.2, 200))
    with pytest.raises(ValueError, match="phi"):
        resolve("mobilenet_v2", phi=1)


def test_efficientnet_rows_come_from_one_table():
    for i in range(8):
        knobs = resolve(f"efficientnet_b{i}")
        row = mobilecv.models.efficientnet.EFFICIENTNET_ROWS[f"b{i}"]
        assert (knobs["width"], knobs["depth"], knobs["resolution"]) == (
            row.width,
            row.depth,
            row.resolution,
        )


def test_mobilenet_v2_head_stays_1280_below_width_one():
    for width, head in [(0.35, 1280), (0.5, 1280), (1.0, 1280), (1.4, 1792)]:
        model = mobilecv.build("mobilenet_v2", width=width, resolution=32, classes=10)
        assert model.get_layer("Conv_1").filters == head


def test_lite_is_relu6_without_se_and_fixed_stem_and_head():
    model = mobilecv.build("efficientnet_lite4", resolution=32, classes=10)
    names = [layer.name for layer in model.layers]
    assert not any("se_" in n for n in names)
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    assert type(model.get_layer("stem_activation")).__name__ == "ReLU"
    # first and last stage keep their repeats when depth scales (1.8 here)
    assert sum(n.startswith("block1") and n.endswith("_dwconv") for n in names) == 1
    assert sum(n.startswith("block7") and n.endswith("_dwconv") for n in names) == 1
    assert sum(n.startswith("block6") and n.endswith("_dwconv") for n in names) == math.ceil(
        4 * 1.8
    )


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"width": 0}, "width must be > 0"),
        ({"width": -1}, "width must be > 0"),
        ({"width": 5}, "absurd"),
        ({"depth": 0}, "depth must be > 0"),
        ({"depth": 4.5}, "absurd"),
        ({"resolution": 16}, "too small"),
        ({"classes": 0}, "classes"),
        ({"bogus": 1}, "does not accept 'bogus'"),
    ],
)
def test_bad_knobs_raise_value_error(knobs, message):
    with pytest.raises(ValueError, match=message):
        mobilecv.build("mobilenet_v2", **knobs)


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean mobilenet_v2"):
        mobilecv.build("mobilenet_v3")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mobilenet_v2", family="x", default_resolution=224)(lambda **k: None)


def test_list_models_filters_with_fnmatch():
    assert mobilecv.list_models("mobilenet*") == ["mobilenet_v1", "mobilenet_v2"]
    assert "efficientnet_b7" in mobilecv.list_models("efficientnet_b?")
    assert mobilecv.list_models("nothing*") == []


def test_import_is_quiet_and_light():
    code = "import sys, mobilecv; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert out.stderr == ""


def test_building_does_not_flood_stderr():
    code = "import mobilecv; mobilecv.build('mobilenet_v2', width=0.35, resolution=32)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == ""

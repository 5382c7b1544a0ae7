"""MobileNet builder options for int8 speed (issue 17, section 5): channel divisor,
expansion ratio, activation, squeeze-excite (Howard et al., "Searching for MobileNetV3",
ICCV 2019). Defaults must stay keras.applications' network (tests/test_golden.py holds the
full-size counts); here tiny sizes."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import run_cli

import mobilecv
from mobilecv.errors import InputError

TINY = {"width": 0.35, "resolution": 32, "classes": 10, "input_channels": 1}


def _v2(**options):
    return mobilecv.build("mobilenet_v2", **TINY, **options)


def _conv_filters(model) -> dict[str, int]:
    """Output channels of every convolution but the classifier (depthwise included)."""
    return {
        layer.name: int(layer.output.shape[-1])
        for layer in model.layers
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")
        and "_se_" not in layer.name
        and layer.name != "conv_preds"  # MobileNetV1's classifier
    }


def test_default_options_are_keras_applications_network():
    import tf_keras as K

    ours = mobilecv.build("mobilenet_v2", width=0.35, resolution=32, classes=10)
    theirs = K.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    explicit = mobilecv.build(
        "mobilenet_v2", width=0.35, resolution=32, classes=10,
        divisor=8, expansion=None, activation="relu6", se_ratio=0.0,
    )  # fmt: skip
    assert ours.count_params() == theirs.count_params() == explicit.count_params()
    assert [layer.name for layer in ours.layers] == [layer.name for layer in explicit.layers]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v1"])
@pytest.mark.parametrize("divisor", [16, 32])
def test_divisor_makes_every_channel_count_a_multiple(name, divisor):
    model = mobilecv.build(name, **TINY, divisor=divisor)
    filters = _conv_filters(model)
    # width 0.35 with the default divisor 8 has counts that are not multiples of 16.
    default = _conv_filters(mobilecv.build(name, **TINY))
    assert any(f % 16 for f in default.values())
    assert len(filters) > 20
    assert all(f % divisor == 0 for f in filters.values()), filters


@pytest.mark.parametrize("expansion", [3, 4])
def test_expansion_replaces_the_ratio_six(expansion):
    model = _v2(expansion=expansion)
    layers = {layer.name: layer for layer in model.layers}
    assert "expanded_conv_expand" not in layers  # the first block keeps its ratio 1
    for block in range(1, 17):
        expand = layers[f"block_{block}_expand"]
        assert expand.output.shape[-1] == expansion * expand.input.shape[-1]
    assert model.count_params() < _v2().count_params()


def test_activation_swaps_every_relu6():
    relu6 = [layer for layer in _v2().layers if type(layer).__name__ == "ReLU"]
    swish = _v2(activation="swish")
    assert not any(type(layer).__name__ == "ReLU" for layer in swish.layers)
    acts = [layer for layer in swish.layers if type(layer).__name__ == "Activation"]
    assert len(acts) == len(relu6) == 35
    assert {layer.get_config()["activation"] for layer in acts} == {"swish"}
    relu = _v2(activation="relu")
    assert all(layer.max_value is None for layer in relu.layers if type(layer).__name__ == "ReLU")


def test_se_ratio_adds_a_gate_to_every_block():
    model = _v2(se_ratio=0.25)
    names = [layer.name for layer in model.layers]
    assert sum(n.endswith("se_excite") for n in names) == 17
    reduce = model.get_layer("block_1_se_reduce")
    assert reduce.filters == int(model.get_layer("block_1_expand").input.shape[-1] * 0.25)
    assert not any("_se_" in n for n in (layer.name for layer in _v2().layers))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"divisor": 0}, "divisor"),
        ({"divisor": 12.5}, "divisor"),
        ({"expansion": 0}, "expansion"),
        ({"activation": "gelu"}, "activation"),
        ({"se_ratio": 1.5}, "se_ratio"),
        ({"se_ratio": "a lot"}, "se_ratio"),
    ],
)
def test_bad_options_are_one_line_input_errors(options, words):
    with pytest.raises(InputError) as error:
        _v2(**options)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_bad_option_on_the_cli_is_exit_2_one_line(tmp_path):
    done = run_cli(
        "build", "mobilenet_v2", "--width", "0.35", "--resolution", "32",
        "-O", "activation=gelu", "-o", tmp_path / "m.keras",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "activation" in lines[0], done.stderr
    assert not (tmp_path / "m.keras").exists()


def _build_and_convert_on_the_cli(tmp_path, options: list[str], keras: str = "tf_keras"):
    """`mobilecv build` with -O options, then `mobilecv convert` int8 in another process;
    the .tflite's op counts and the reloaded model's parameter count."""
    from mobilecv.modelio import load_model
    from mobilecv.tflite_graph import load

    keras_path, tflite = tmp_path / "m.keras", tmp_path / "m.tflite"
    args = [f"-O{o}" for o in options]
    built = run_cli(
        "build", "mobilenet_v2", "--width", "0.35", "--resolution", "32", "--classes", "10",
        "--input-channels", "1", "--keras", keras, *args, "-o", keras_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    done = run_cli(
        "convert", keras_path, "--quantize", "int8", "--calibration", "fashion_mnist",
        "--samples", "16", "-o", tflite,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Counter(op.opcode for op in load(tflite).ops), load_model(keras_path).count_params()


@pytest.mark.slow  # two CLI processes and a conversion
def test_every_option_saves_reloads_and_converts_int8_in_other_processes(tmp_path):
    options = ["divisor=16", "expansion=4", "activation=hard_swish", "se_ratio=0.25"]
    ops, params = _build_and_convert_on_the_cli(tmp_path, options)
    direct = _v2(divisor=16, expansion=4, activation="hard_swish", se_ratio=0.25)
    assert params == direct.count_params()
    assert ops["HARD_SWISH"] == 35 and ops["LOGISTIC"] == 17  # the 17 SE gates


@pytest.mark.slow
def test_swish_and_divisor_32_convert_int8_in_other_processes_from_keras3(tmp_path):
    ops, params = _build_and_convert_on_the_cli(
        tmp_path, ["divisor=32", "activation=swish", "expansion=3"], "keras3"
    )
    assert params == _v2(divisor=32, activation="swish", expansion=3).count_params()
    # swish in int8 is x * sigmoid(x): a LOGISTIC and a MUL for each of the 35.
    assert ops["LOGISTIC"] == 35 and ops["MUL"] == 35

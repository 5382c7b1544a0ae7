"""mobilecv.inspection: reading .tflite files without TensorFlow, and `mobilecv inspect`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mobilecv import tflite_graph
from mobilecv.commands.convert import inspect_cmd
from mobilecv.errors import InputError
from mobilecv.inspection import format_report, read_tflite


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """float32 and int8 .tflite files of a tiny conv net with known shapes."""
    from mobilecv._tf import get_keras
    from mobilecv.converters.tflite import convert

    k = get_keras("tf_keras")
    k.utils.set_random_seed(0)
    inp = k.Input((8, 8, 1))
    x = k.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)  # 8*8*4*9 = 2304 MACs
    x = k.layers.DepthwiseConv2D(3, padding="same")(x)  # 8*8*4*9 = 2304
    x = k.layers.Conv2DTranspose(2, 2, strides=2)(x)  # 8*8*4 inputs * 2*2*2 = 2048
    x = k.layers.Flatten()(x)
    out = k.layers.Dense(10)(x)  # 16*16*2*10 = 5120
    model = k.Model(inp, out)
    w = model.layers[-1].get_weights()
    w[0][::2] = 0.0  # half of the dense kernel rows are zero
    model.layers[-1].set_weights(w)
    root = tmp_path_factory.mktemp("tfl")
    paths = {}
    for mode in ("none", "int8"):
        result = convert(model, mode, calibration="digits", samples=16, verify=False, sparse=False)
        paths[mode] = root / f"{mode}.tflite"
        paths[mode].write_bytes(result.tflite)
    return paths


def test_float_graph(models):
    g = read_tflite(models["none"])
    assert g.quantization == "float32"
    assert g.op_counts["CONV_2D"] == 1 and g.op_counts["DEPTHWISE_CONV_2D"] == 1
    assert g.op_counts["TRANSPOSE_CONV"] == 1 and g.op_counts["FULLY_CONNECTED"] == 1
    assert g.macs_by_op == {
        "FULLY_CONNECTED": 5120,
        "CONV_2D": 2304,
        "DEPTHWISE_CONV_2D": 2304,
        "TRANSPOSE_CONV": 2048,
    }
    params = 4 * 9 + 4 + 4 * 9 + 4 + 2 * 2 * 2 * 4 + 2 + 512 * 10 + 10
    # float32 weights: 4 bytes a parameter, plus a few int32 shape constants, less the zero
    # biases the converter stores once (metadata entries are not weights)
    assert params * 4 - 64 <= g.weight_bytes <= params * 4 + 128
    assert g.weight_bytes + g.graph_bytes == g.size_bytes == models["none"].stat().st_size
    dense = next(w for w in g.weights if w.op == "FULLY_CONNECTED")
    assert dense.zeros == pytest.approx(0.5, abs=0.01)
    assert g.inputs[0].dtype == "FLOAT32" and g.inputs[0].shape_signature == [-1, 8, 8, 1]
    assert g.float_ops == []  # only listed for integer models


def test_int8_graph(models):
    g = read_tflite(models["int8"].read_bytes())
    assert g.quantization == "int8" and g.float_ops == []
    assert g.inputs[0].dtype == "INT8" and g.inputs[0].quant is not None
    assert g.inputs[0].quant.zero_point == [-128]  # digits are in [0, 1]
    assert g.weight_dtypes["INT8"] > 0
    conv = next(w for w in g.weights if w.op == "CONV_2D")
    assert conv.dtype == "INT8"
    dense = next(w for w in g.weights if w.op == "FULLY_CONNECTED")
    assert dense.zeros == pytest.approx(0.5, abs=0.01)
    text = format_report(g)
    assert "fully integer" in text and "INT8" in text


def test_float_ops_in_integer_model_are_reported():
    """A partly quantisation-annotated model (what an unsupported layer such as
    squeeze-excite's Multiply produces) converts with a float island; inspect
    must name the op that stayed float, and the converter must say so too."""
    import tensorflow_model_optimization as tfmot

    from mobilecv._tf import get_keras
    from mobilecv.converters.tflite import convert

    tk = get_keras("tf_keras")
    q = tfmot.quantization.keras
    inp = tk.Input((8, 8, 1))
    x = q.quantize_annotate_layer(tk.layers.Conv2D(4, 3, padding="same", activation="relu"))(inp)
    x = tk.layers.GlobalAveragePooling2D()(x)
    out = tk.layers.Dense(10)(x)  # not annotated: stays float
    with q.quantize_scope():
        model = q.quantize_apply(tk.Model(inp, out))
    result = convert(model, "int8", io="float", verify_samples=8)
    g = read_tflite(result.tflite)
    assert g.quantization == "int8"
    assert [f.split("#")[0] for f in g.float_ops] == ["FULLY_CONNECTED"]
    assert "float ops left in an integer model (1): FULLY_CONNECTED" in format_report(g)
    assert any("still compute in float" in n for n in result.notes)


def test_custom_and_unknown_ops_are_listed(models):
    """Rewrite an opcode to CUSTOM and another to an unknown builtin code."""
    custom = tflite_graph.schema().BuiltinOperator.CUSTOM

    def edit(m):
        codes = m.operatorCodes
        codes[0].builtinCode = codes[0].deprecatedBuiltinCode = custom
        codes[0].customCode = "MyVendorOp"
        codes[1].builtinCode = 9999
        codes[1].deprecatedBuiltinCode = 127

    g = read_tflite(tflite_graph.rewrite(models["none"].read_bytes(), edit))
    assert g.custom_ops == ["MyVendorOp"]
    assert g.unknown_ops == ["UNKNOWN_9999"]
    assert "MyVendorOp" in format_report(g)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_truncated_files_are_input_errors(models, cut):
    data = models["int8"].read_bytes()
    with pytest.raises(InputError):
        read_tflite(data[: int(len(data) * cut)])


def test_corrupted_bytes_never_crash(models):
    """Random byte flips either still parse or raise InputError: nothing else."""
    data = bytearray(models["int8"].read_bytes())
    rng = np.random.default_rng(0)
    for _ in range(40):
        bad = bytearray(data)
        for pos in rng.integers(8, len(bad), size=20):
            bad[pos] = int(rng.integers(0, 256))
        with contextlib.suppress(InputError):
            read_tflite(bytes(bad))


def test_cli_inspect_text_and_json(models):
    res = CliRunner().invoke(inspect_cmd, [str(models["int8"])])
    assert res.exit_code == 0, res.output
    assert "CONV_2D" in res.output and "quantization: int8" in res.output
    res = CliRunner().invoke(inspect_cmd, [str(models["int8"]), "--json"])
    data = json.loads(res.stdout)
    assert data["quantization"] == "int8" and data["float_ops"] == []
    assert data["macs"] == 5120 + 2304 + 2304 + 2048
    assert data["inputs"][0]["quant"]["zero_point"] == -128


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 10, b"\x18\x00\x00\x00TFL3" + b"\xff" * 40],
    ids=["empty", "garbage", "bad-body"],
)
def test_cli_inspect_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    res = CliRunner().invoke(inspect_cmd, [str(path)])
    assert res.exit_code == 2
    assert res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1


def test_cli_inspect_missing_file(tmp_path):
    res = CliRunner().invoke(inspect_cmd, [str(tmp_path / "nope.tflite")])
    assert res.exit_code == 2 and "Error:" in res.output


def test_reader_does_not_import_tensorflow(models):
    code = (
        "import sys; from mobilecv.inspection import read_tflite; "
        f"g = read_tflite({str(models['int8'])!r}); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(g.macs)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 5120 + 2304 + 2304 + 2048

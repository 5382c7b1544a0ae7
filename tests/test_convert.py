"""mobilecv.converters.tflite / mobilecv.converters.c_array / `mobilecv convert` on tiny models.

Every mode is converted and verified in LiteRT; the figures asserted here are
the ones the converter measured (max error against Keras, top-1 agreement).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from mobilecv._tf import get_keras
from mobilecv.commands.convert import convert as convert_cmd
from mobilecv.converters.c_array import c_identifier, to_c_array
from mobilecv.converters.tflite import Quantize, convert, kernel_sparsity
from mobilecv.errors import InputError
from mobilecv.inspection import read_tflite


def tiny_model(keras="tf_keras", size=8, channels=1, seed=0):
    """conv/BN/ReLU6/depthwise/1x1/dense: the op mix of a MobileNet, ~12k params.
    The 3x3 conv has 4608 weights so dynamic-range quantisation applies to it."""
    k = get_keras(keras)
    k.utils.set_random_seed(seed)
    inp = k.Input((size, size, channels))
    x = k.layers.Conv2D(16, 3, padding="same")(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.DepthwiseConv2D(3, padding="same")(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    x = k.layers.Dense(64, activation="relu")(x)
    out = k.layers.Dense(10)(x)
    return k.Model(inp, out)


def digits_xy(n=400):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n, :, :, None] / 16.0).astype(np.float32), d.target[:n]


@pytest.fixture(scope="module")
def trained():
    """A tf_keras model briefly fitted on digits, so top-1 agreement means something."""
    model = tiny_model()
    x, y = digits_xy()
    model.compile("adam", get_keras().losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("mode", ["none", "dynamic", "float16", "int8", "int16x8"])
def test_every_mode_converts_and_verifies(trained, mode):
    calibration = "digits" if mode in ("int8", "int16x8") else None
    result = convert(trained, mode, calibration=calibration, samples=64, verify_samples=48)
    graph = read_tflite(result.tflite)
    v = result.verification
    assert v is not None and v.samples == 48 and v.runtime == "default"
    if mode == "none":
        assert v.max_abs_error < 1e-4
        assert graph.quantization == "float32"
    elif mode == "float16":
        assert v.max_abs_error < 1e-2
        assert graph.weight_dtypes.get("FLOAT16", 0) > 0
    elif mode == "dynamic":
        assert graph.quantization == "dynamic"
        assert v.top1_agreement >= 0.9
    elif mode == "int8":
        assert v.data == "held-out"
        assert result.calibration_samples == 64
        assert graph.quantization == "int8" and graph.float_ops == []
        assert graph.inputs[0].dtype == "INT8" and graph.outputs[0].dtype == "INT8"
        assert v.top1_agreement >= 0.9, v
    else:
        assert graph.quantization == "int16x8"
        assert graph.inputs[0].dtype == "FLOAT32"
        assert v.top1_agreement >= 0.95, v


def test_int8_float_io_keeps_float_boundary(trained):
    result = convert(
        trained, "int8", calibration="digits", samples=32, verify_samples=32, io="float"
    )
    graph = read_tflite(result.tflite)
    assert graph.inputs[0].dtype == "FLOAT32" and graph.outputs[0].dtype == "FLOAT32"
    assert graph.op_counts.get("QUANTIZE") and graph.op_counts.get("DEQUANTIZE")
    assert graph.float_ops == []  # boundary QUANTIZE/DEQUANTIZE are not float compute
    assert result.verification.top1_agreement >= 0.9


def test_int16x8_with_int16_io(trained):
    result = convert(
        trained, "int16x8", calibration="digits", samples=32, verify_samples=32, io="int16"
    )
    graph = read_tflite(result.tflite)
    assert graph.inputs[0].dtype == "INT16" and graph.inputs[0].quant.zero_point == [0]
    # The briefly trained model has near-tied logits, so judge the error as well.
    assert result.verification.top1_agreement >= 0.9
    assert result.verification.max_abs_error < 0.05


def test_per_tensor_int8_has_one_weight_scale_per_tensor_and_is_smaller(trained, tmp_path):
    per_channel = convert(trained, "int8", calibration="digits", samples=64, verify_samples=48)
    per_tensor = convert(
        trained, "int8", calibration="digits", samples=64, verify_samples=48, per_channel=False
    )
    assert per_channel.per_channel and not per_tensor.per_channel
    assert per_tensor.to_dict()["per_channel"] is False

    def weight_scales(result):
        graph = read_tflite(result.tflite)
        return [
            len(t.quant.scale)
            for t in graph.tensors
            if t.is_constant and t.dtype == "INT8" and len(t.shape) == 4
        ]

    assert max(weight_scales(per_channel)) > 1  # the default really is per channel
    assert set(weight_scales(per_tensor)) == {1}
    assert per_tensor.size < per_channel.size
    assert per_tensor.verification.top1_agreement >= 0.9, per_tensor.verification
    for mode in ("none", "dynamic", "float16"):
        with pytest.raises(InputError, match="per-tensor weights apply to post-training"):
            convert(trained, mode, per_channel=False)
    src = tmp_path / "model.h5"
    trained.save(src)
    args = [str(src), "-o", str(tmp_path / "pt.tflite"), "--per-tensor", "--json"]
    res = CliRunner().invoke(
        convert_cmd, [*args, "--quantize", "int8", "--calibration", "digits", "--samples", "32"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["per_channel"] is False
    res = CliRunner().invoke(convert_cmd, [*args, "--quantize", "float16", "--force"])
    assert res.exit_code == 2 and "per-tensor" in res.output


def test_calibration_from_npy_and_holdout_is_distinct(tmp_path, trained):
    x, _ = digits_xy(100)
    np.save(tmp_path / "calib.npy", (x[..., 0] * 255).astype(np.uint8))  # uint8, no channel axis
    result = convert(
        trained, "int8", calibration=tmp_path / "calib.npy", samples=60, verify_samples=40
    )
    assert result.calibration_samples == 60
    assert result.verification.samples == 40 and result.verification.data == "held-out"
    # Too few rows for a held-out set: verified on calibration rows, and it says so.
    small = convert(trained, "int8", calibration=x[:20], samples=50, verify_samples=10)
    assert small.verification.data == "calibration"
    assert any("no held-out" in n for n in small.notes)


def test_vector_input_calibrates_from_an_array():
    """A dense-only model (no image input) takes calibration rows shaped like its input;
    anything else is refused with one clear line."""
    k = get_keras("tf_keras")
    k.utils.set_random_seed(0)
    inp = k.Input((32,))
    model = k.Model(inp, k.layers.Dense(8)(k.layers.Dense(16, activation="relu")(inp)))
    rows = np.random.default_rng(0).uniform(0, 1, (24, 32)).astype(np.float32)
    result = convert(model, "int8", calibration=rows, samples=16, verify_samples=8)
    graph = read_tflite(result.tflite)
    assert graph.quantization == "int8" and graph.op_counts["FULLY_CONNECTED"] == 2
    assert result.calibration_samples == 16 and result.verification.data == "held-out"
    assert result.verification.max_abs_error < 0.1, result.verification
    with pytest.raises(InputError, match="rows shaped like the input"):
        convert(model, "int8", calibration=rows[:, :16])
    with pytest.raises(InputError, match="rows shaped like the input"):
        convert(model, "int8", calibration="digits")


def test_bad_arguments_are_input_errors(trained):
    with pytest.raises(InputError, match="quantize must be one of"):
        convert(trained, "int4")
    with pytest.raises(InputError, match="needs calibration"):
        convert(trained, "int8")
    with pytest.raises(InputError, match="io=int8 is not possible"):
        convert(trained, "float16", io="int8")
    with pytest.raises(InputError, match="unknown calibration source"):
        convert(trained, "int8", calibration="no_such_dataset")
    assert Quantize("int8") is Quantize.INT8


def test_keras3_model_goes_through_export(tmp_path):
    model = tiny_model("keras3")
    for mode in ("none", "int8"):
        result = convert(model, mode, calibration="digits", samples=32, verify_samples=32)
        assert result.keras == "keras3"
        if mode == "none":
            assert result.verification.max_abs_error < 1e-4
        else:
            graph = read_tflite(result.tflite)
            assert graph.quantization == "int8" and not graph.float_ops
            assert graph.op_counts.get("READ_VARIABLE") is None
            # Untrained model: agreement is measured and reported, not asserted high.
            assert 0.0 <= result.verification.top1_agreement <= 1.0


def test_qat_model_converts_to_full_int8():
    import tensorflow_model_optimization as tfmot

    tk = get_keras("tf_keras")
    tk.utils.set_random_seed(1)
    inp = tk.Input((8, 8, 1))
    x = tk.layers.Conv2D(8, 3, padding="same")(inp)
    x = tk.layers.BatchNormalization()(x)
    x = tk.layers.ReLU(6.0)(x)
    x = tk.layers.GlobalAveragePooling2D()(x)
    out = tk.layers.Dense(10)(x)
    qat = tfmot.quantization.keras.quantize_model(tk.Model(inp, out))
    x_train, y_train = digits_xy(300)
    qat.compile("adam", tk.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)  # sets the learned ranges

    result = convert(qat, "int8", calibration="digits", samples=16, verify_samples=64)
    graph = read_tflite(result.tflite)
    assert result.qat and result.calibration_samples == 0  # ranges come from training
    assert graph.quantization == "int8" and graph.float_ops == []
    assert graph.inputs[0].dtype == "INT8"
    assert result.verification.top1_agreement >= 0.9, result.verification
    with pytest.raises(InputError, match="quantisation-aware"):
        convert(qat, "float16")


def _pruned_tiny(sparsity=0.8):
    model = tiny_model()
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and weights[0].ndim >= 2:  # kernels only, not BN
            w = weights[0]
            w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
            layer.set_weights([w, *weights[1:]])
    return model


def test_sparse_int8_trap_is_detected_and_repaired():
    """80%-zero kernels + int8 with EXPERIMENTAL_SPARSITY: XNNPACK refuses the sparse
    FULLY_CONNECTED ("failed to delegate ... failed to prepare"); the converter
    notices and hands back a dense int8 model that runs under the default runtime."""
    from ai_edge_litert.interpreter import Interpreter

    model = _pruned_tiny()
    assert kernel_sparsity(model) == pytest.approx(0.8, abs=0.01)
    result = convert(model, "int8", calibration="digits", samples=32, verify_samples=32)
    assert not result.sparse
    assert any("XNNPACK" in n and "reconverted" in n for n in result.notes), result.notes
    assert result.verification.runtime == "default"
    interp = Interpreter(model_content=result.tflite)  # default delegates: must work
    interp.allocate_tensors()
    interp.invoke()
    graph = read_tflite(result.tflite)
    assert graph.weight_sparsity == pytest.approx(0.8, abs=0.02)  # zeros survived, dense-stored


def test_sparse_float_keeps_sparse_encoding():
    result = convert(_pruned_tiny(), "none", verify_samples=16)
    graph = read_tflite(result.tflite)
    assert result.sparse and graph.op_counts.get("DENSIFY")
    assert any(w.sparse_encoded for w in graph.weights)
    assert result.verification.max_abs_error < 1e-4


def test_pruning_wrappers_are_stripped():
    import tensorflow_model_optimization as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(tiny_model())
    result = convert(pruned, "none", verify_samples=8)
    assert any("stripped pruning" in n for n in result.notes)
    assert result.verification.max_abs_error < 1e-4


# --- C arrays ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_c_array_compiles_and_length_matches(tmp_path, trained):
    result = convert(trained, "int8", calibration="digits", samples=16, verify_samples=8)
    written = result.save(tmp_path / "tiny-int8.tflite", format="c")
    cc, h = written
    assert cc.suffix == ".cc" and h.suffix == ".h"
    name = c_identifier("tiny-int8")
    assert f"alignas(16) const unsigned char {name}[]" in cc.read_text()
    main = tmp_path / "main.cc"
    main.write_text(
        f'#include <cstdio>\n#include <cstdint>\n#include "{h.name}"\n'
        f'int main() {{ std::printf("%u %d\\n", {name}_len, '
        f"(int)(reinterpret_cast<std::uintptr_t>({name}) % 16)); "
        f"return {name}[4] == 'T' ? 0 : 3; }}\n"
    )
    subprocess.run(
        ["g++", "-c", str(cc), "-o", str(tmp_path / "model.o")], check=True, cwd=tmp_path
    )
    subprocess.run(
        [
            "g++",
            str(main),
            str(tmp_path / "model.o"),
            "-I",
            str(tmp_path),
            "-o",
            str(tmp_path / "m"),
        ],
        check=True,
    )
    out = subprocess.run(
        [str(tmp_path / "m")], check=True, capture_output=True, text=True
    ).stdout.split()
    assert int(out[0]) == len(result.tflite)
    assert out[1] == "0"  # 16-byte aligned at run time


def test_c_array_rejects_bad_names():
    with pytest.raises(ValueError):
        to_c_array(b"\x00" * 8, "1bad-name")
    assert c_identifier("1bad-name") == "m_1bad_name"


# --- CLI ----------------------------------------------------------------------


def test_cli_convert_model_file_json(tmp_path, trained):
    src = tmp_path / "model.h5"
    trained.save(src)
    out = tmp_path / "model.tflite"
    args = [str(src), "-o", str(out), "--quantize", "int8", "--calibration", "digits"]
    res = CliRunner().invoke(
        convert_cmd, [*args, "--samples", "32", "--verify-samples", "16", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["bytes"] == out.stat().st_size
    assert data["verification"]["top1_agreement"] >= 0.9
    # Existing output without --force: exit 2, nothing rewritten.
    res = CliRunner().invoke(convert_cmd, [str(src), "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output


def test_cli_convert_keras3_file_and_c_format(tmp_path):
    src = tmp_path / "k3.keras"
    tiny_model("keras3").save(src)
    res = CliRunner().invoke(
        convert_cmd, [str(src), "-o", str(tmp_path / "k3.tflite"), "--format", "c"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "k3.cc").exists() and (tmp_path / "k3.h").exists()
    assert "max |err|" in res.output


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a keras model at all", b"PK\x03\x04truncated zip"],
    ids=["empty", "garbage", "truncated-zip"],
)
def test_cli_convert_corrupt_model_file(tmp_path, content):
    src = tmp_path / "broken.keras"
    src.write_bytes(content)
    res = CliRunner().invoke(convert_cmd, [str(src), "-o", str(tmp_path / "o.tflite")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.tflite").exists()


def test_cli_convert_truncated_h5(tmp_path, trained):
    src = tmp_path / "model.h5"
    trained.save(src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(convert_cmd, [str(src), "-o", str(tmp_path / "o.tflite")])
    assert res.exit_code == 2 and res.output.startswith("Error:"), res.output


def test_cli_unknown_model_name_is_one_line_error(tmp_path):
    res = CliRunner().invoke(convert_cmd, ["mobilenet_v9", "-o", str(tmp_path / "o.tflite")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: mobilenet_v9") and "did you mean" in res.output


def test_conversion_prints_no_chatter():
    """TensorFlow, the MLIR converter and LiteRT all write to fd 1/2 from C++;
    a conversion in a fresh process must leave both streams empty."""
    import sys

    code = (
        "import numpy as np\n"
        "from mobilecv._tf import get_keras\n"
        "from mobilecv.converters.tflite import convert\n"
        "k = get_keras('tf_keras')\n"
        "inp = k.Input((8, 8, 1)); x = k.layers.Conv2D(4, 3)(inp)\n"
        "out = k.layers.Dense(3)(k.layers.Flatten()(x))\n"
        "r = convert(k.Model(inp, out), 'int8', calibration='digits', samples=8, verify_samples=4)\n"
        "assert r.verification.samples == 4\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MOBILECV_VERBOSE_TF"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the library must quieten TF by itself
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == "", (proc.stdout + proc.stderr)[-2000:]


def test_cli_c_format_defaults_to_dense_weights(tmp_path):
    """TFLite Micro cannot run DENSIFY, so a pruned model exported as a C array
    keeps its zeros in dense form (the float .tflite route would sparse-encode)."""
    import re

    src = tmp_path / "pruned.h5"
    _pruned_tiny().save(src)
    res = CliRunner().invoke(
        convert_cmd, [str(src), "-o", str(tmp_path / "p.tflite"), "--format", "c"]
    )
    assert res.exit_code == 0, res.output
    hex_bytes = re.findall(r"0x([0-9a-f]{2})", (tmp_path / "p.cc").read_text())
    graph = read_tflite(bytes(int(b, 16) for b in hex_bytes))
    assert "DENSIFY" not in graph.op_counts
    assert graph.weight_sparsity == pytest.approx(0.8, abs=0.02)


# --- untrained models: near-constant outputs, int16x8 overflow --------------------


def near_constant_classifier():
    """Untrained, with a softmax of near-equal logits (probabilities 0.1 +- 1e-4), as
    keras.applications DenseNet121 / EfficientNetV2B0 with weights=None."""
    k = get_keras("tf_keras")
    k.utils.set_random_seed(0)
    inp = k.Input((8, 8, 1))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(8, 3, activation="relu")(inp))
    init = k.initializers.RandomNormal(stddev=1e-3)
    return k.Model(inp, k.layers.Dense(10, activation="softmax", kernel_initializer=init)(x))


def test_near_constant_outputs_are_judged_by_the_error_not_top1(tmp_path):
    """int8's softmax output step (1/256) is larger than all the variation of these
    outputs, so top-1 agreement was noise (0-10%); float keeps it meaningful."""
    model = near_constant_classifier()
    q = convert(model, "int8", calibration="digits", samples=32, verify_samples=32)
    v = q.verification
    assert v.near_constant_output and v.top1_agreement is None
    assert 0 < v.output_spread < v.mean_abs_error < 0.01
    assert v.to_dict()["near_constant_output"] is True
    assert any("near-constant" in n and "output error" in n for n in q.notes), q.notes
    f = convert(model, "none", calibration="digits", verify_samples=32)
    assert not f.verification.near_constant_output and f.verification.top1_agreement == 1.0
    src = tmp_path / "untrained.h5"
    model.save(src)
    args = [str(src), "-o", str(tmp_path / "u.tflite"), "--quantize", "int8"]
    res = CliRunner().invoke(convert_cmd, [*args, "--calibration", "digits", "--samples", "32"])
    assert res.exit_code == 0, res.output
    verified = next(line for line in res.output.splitlines() if line.startswith("verified"))
    assert "top-1" not in verified and "max |err|" in verified
    assert "near-constant" in res.output


def test_int16x8_on_a_collapsed_fresh_model_says_train_first():
    """A freshly initialised MobileNetV2 has activations with an almost-zero range; the
    int16 scale (4e-15 there) makes the ReLU6 bound overflow int32 in LiteRT. Tiny
    kernels give the same here."""
    from mobilecv.errors import RunFailed

    k = get_keras("tf_keras")
    k.utils.set_random_seed(0)
    inp = k.Input((8, 8, 1))
    init = k.initializers.RandomNormal(stddev=1e-12)
    x = k.layers.ReLU(6.0)(k.layers.Conv2D(4, 3, kernel_initializer=init)(inp))
    model = k.Model(inp, k.layers.Dense(10)(k.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(RunFailed, match="no_integer_overflow_from_quantization.*train it first"):
        convert(model, "int16x8", calibration="digits", samples=8, verify_samples=4)


# --- argument checks before TensorFlow -----------------------------------------------

_CLI_WITHOUT_TF = (
    "import json, sys\n"
    "from mobilecv.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "print(json.dumps({'exit': code, 'tensorflow': 'tensorflow' in sys.modules}))\n"
)


def test_cli_refuses_bad_combinations_before_loading_tensorflow(tmp_path, trained):
    import sys

    src = tmp_path / "model.h5"
    trained.save(src)
    out = ["-o", str(tmp_path / "o.tflite")]
    cases = {
        "int8 needs calibration": [str(src), "--quantize", "int8"],
        "int16x8 needs calibration": ["mobilenet_v2", "--quantize", "int16x8"],
        "per-tensor weights apply": [str(src), "--quantize", "float16", "--per-tensor"],
        "io=int16 is not possible": [str(src), "--quantize", "int8", "--io", "int16"],
    }
    for expected, args in cases.items():
        proc = subprocess.run(
            [sys.executable, "-c", _CLI_WITHOUT_TF, "convert", *args, *out],
            capture_output=True,
            text=True,
            timeout=300,
        )
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report == {"exit": 2, "tensorflow": False}, (expected, proc.stderr)
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr


def test_model_is_qat_reads_the_file_without_loading_it(tmp_path, trained):
    import tensorflow_model_optimization as tfmot

    from mobilecv.converters.tflite import model_is_qat

    trained.save(tmp_path / "float.h5")
    tfmot.quantization.keras.quantize_model(tiny_model()).save(tmp_path / "qat.h5")
    tiny_model("keras3").save(tmp_path / "k3.keras")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    assert model_is_qat(tmp_path / "qat.h5") is True
    assert model_is_qat(tmp_path / "float.h5") is False
    assert model_is_qat(tmp_path / "k3.keras") is False
    assert model_is_qat("mobilenet_v2") is False  # registered names build untrained
    assert model_is_qat(tmp_path / "broken.h5") is None  # the loader will say why
    assert model_is_qat(tmp_path / "missing.keras") is None
    # A QAT file needs no --calibration: the early check lets it through to conversion.
    out = tmp_path / "qat.tflite"
    res = CliRunner().invoke(convert_cmd, [str(tmp_path / "qat.h5"), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["qat"] is True and out.exists()

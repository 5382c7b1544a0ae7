"""Keras -> .tflite in every post-training mode, verified in LiteRT after conversion.

`convert(model, quantize=...)` hides three conversion routes:
- tf_keras models (including tfmot QAT models) go through `from_keras_model`;
- Keras 3 models go through `model.export()` and `from_saved_model`, because a
  plain `tf.saved_model.save` keeps variables as resources and full-integer
  calibration then fails on READ_VARIABLE ops;
- pruning wrappers are stripped first (they would otherwise be exported).

The converted bytes are loaded into `ai_edge_litert.interpreter.Interpreter` and
run against Keras on held-out samples, so every result carries measured
figures. Sparse + quantised models are a known trap: with
`Optimize.EXPERIMENTAL_SPARSITY` the converter emits sparse int8 weights that
LiteRT's default XNNPACK delegate refuses ("failed to delegate FULLY_CONNECTED
node ... TfLiteXNNPackDelegate failed to prepare", google/XNNPACK#3061,
tensorflow#60762; XNNPACK's sparse kernels are fp32-only, google/XNNPACK#1419).
Verification catches that and reconverts with dense weights (zeros still
compress well under gzip), saying so in `notes`. TFLite Micro has no DENSIFY
kernel (tflite-micro#491), so C-array exports default to dense weights.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilecv._tf import is_keras3_model, silenced_fd, silenced_stderr, tf
from mobilecv.errors import InputError, RunFailed, parse_choice
from mobilecv.modelinfo import add_to_tflite, carry, get_info, map_range, range_name


class Quantize(enum.StrEnum):
    NONE = "none"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT16X8 = "int16x8"


class IoType(enum.StrEnum):
    INT8 = "int8"
    INT16 = "int16"
    FLOAT = "float"


class OutputFormat(enum.StrEnum):
    TFLITE = "tflite"
    C = "c"


# Modes whose figure of merit is the output error (the arithmetic stays float).
FLOAT_MODES = (Quantize.NONE, Quantize.FLOAT16)
# Fraction of zero kernel weights above which sparse encoding is tried by default.
SPARSE_THRESHOLD = 0.5
DEFAULT_SAMPLES = 100
DEFAULT_VERIFY_SAMPLES = 64


@dataclass
class Verification:
    """Measured agreement between the .tflite and the Keras model."""

    runtime: str  # "default" (XNNPACK delegate applied) or "no-default-delegates"
    samples: int
    data: str  # where the inputs came from: "held-out", "calibration" or "random"
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None  # None when the output is not a class vector

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "samples": self.samples,
            "data": self.data,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "top1_agreement": self.top1_agreement,
        }


@dataclass
class ConversionResult:
    tflite: bytes
    mode: Quantize
    io: IoType
    keras: str  # "tf_keras" or "keras3"
    qat: bool
    sparse: bool  # whether the saved bytes use the converter's sparse weight encoding
    calibration_samples: int
    verification: Verification | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    per_channel: bool = True  # False: one weight scale per tensor (post-training int modes)

    @property
    def size(self) -> int:
        return len(self.tflite)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "io": self.io.value,
            "keras": self.keras,
            "qat": self.qat,
            "sparse": self.sparse,
            "per_channel": self.per_channel,
            "bytes": self.size,
            "calibration_samples": self.calibration_samples,
            "verification": self.verification.to_dict() if self.verification else None,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }

    def save(
        self,
        path: str | os.PathLike,
        format: str | OutputFormat = OutputFormat.TFLITE,
        force: bool = False,
        name: str | None = None,
    ) -> list[Path]:
        """Write the model atomically: `.tflite`, or a `.cc`/`.h` pair for TFLite Micro."""
        return save_tflite(self.tflite, path, format=format, force=force, name=name)


def save_tflite(
    data: bytes,
    path: str | os.PathLike,
    format: str | OutputFormat = OutputFormat.TFLITE,
    force: bool = False,
    name: str | None = None,
) -> list[Path]:
    from mobilecv.fileio import check_writable, write_bytes, write_text

    fmt = parse_choice(OutputFormat, format, "format")
    path = Path(path)
    if fmt is OutputFormat.TFLITE:
        return [write_bytes(path, data, force=force)]
    from mobilecv.converters.c_array import c_identifier, to_c_array

    stem = path.with_suffix("") if path.suffix in (".tflite", ".cc", ".h", ".c", ".cpp") else path
    cc_path, h_path = stem.with_suffix(".cc"), stem.with_suffix(".h")
    for p in (cc_path, h_path):  # refuse before writing either file
        check_writable(p, force)
    cc_text, h_text = to_c_array(data, name or c_identifier(stem.name), header_name=h_path.name)
    write_text(h_path, h_text, force=force)
    write_text(cc_path, cc_text, force=force)
    return [cc_path, h_path]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converter: C++ logs on fd 2, MLIR summaries on fd 1, Python warnings."""
    with (
        silenced_stderr(),
        silenced_fd(1),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _is_qat(model) -> bool:
    return any(
        type(layer).__module__.startswith("tensorflow_model_optimization")
        and "Quantize" in type(layer).__name__
        for layer in model.layers
    )


def _has_pruning_wrappers(model) -> bool:
    return any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers)


def kernel_sparsity(model) -> float:
    """Fraction of exactly-zero values over the model's conv/dense kernels."""
    zeros = total = 0
    for w in model.weights:
        name = getattr(w, "path", None) or w.name
        if "kernel" not in name or "quantize" in name.split("/")[-1]:
            continue
        value = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        zeros += int(value.size - np.count_nonzero(value))
        total += int(value.size)
    return zeros / total if total else 0.0


def _input_shapes(model) -> list[tuple[int, ...]]:
    shapes = []
    for t in model.inputs:
        shape = tuple(int(d) if d is not None else -1 for d in t.shape[1:])
        if any(d < 0 for d in shape):
            raise InputError(
                f"model input {tuple(t.shape)} has unknown dimensions; build it with a fixed resolution"
            )
        shapes.append(shape)
    return shapes


def _samples(
    calibration, model, count: int, holdout: int, notes: list[str]
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(calibration rows, verification rows, where the verification rows came from).

    Image rows are mapped to the input range the model declares (mobilecv.modelinfo).
    """
    from mobilecv.calibration import cover_range, load_samples

    shapes = _input_shapes(model)
    input_range = get_info(model).input_range
    if calibration is None or len(shapes) != 1:
        if calibration is not None:
            raise InputError("calibration data is supported for single-input models only")
        check = _random_rows(holdout, shapes[0], input_range) if len(shapes) == 1 else None
        return None, check, "random"
    if len(shapes[0]) == 3:
        rows = load_samples(calibration, count + holdout, shapes[0], input_range)
    elif isinstance(calibration, np.ndarray) and calibration.shape[1:] == shapes[0]:
        # A non-image input (a dense layer's vector): rows already shaped like it.
        rows = calibration[: count + holdout].astype(np.float32)
    else:
        raise InputError(
            f"calibration needs an image input (H, W, C) or an array of rows shaped like the "
            f"input; the model takes {shapes[0]}"
        )
    calib = cover_range(rows[:count], input_range) if len(shapes[0]) == 3 else rows[:count]
    if len(rows) > count:
        return calib, rows[count:], "held-out"
    notes.append(
        f"only {len(rows)} samples available: no held-out rows left, verified on calibration samples"
    )
    return calib, rows[:holdout], "calibration"


def _random_rows(n: int, shape, input_range: tuple[float, float]) -> np.ndarray:
    """Uniform random rows over the model's declared input range."""
    unit = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
    return map_range(unit, input_range, peak=1.0).astype(np.float32)


def _make_converter(model, keras3: bool, workdir: Path):
    tfm = tf()
    if not keras3:
        return tfm.lite.TFLiteConverter.from_keras_model(model)
    export_dir = workdir / "saved_model"
    if not export_dir.exists():
        # export() traces a serving function with variables captured as constants
        # at conversion time; tf.saved_model.save would leave READ_VARIABLE ops.
        model.export(str(export_dir), format="tf_saved_model", verbose=False)
    return tfm.lite.TFLiteConverter.from_saved_model(str(export_dir))


def _configure(
    conv,
    mode: Quantize,
    io_type: IoType,
    calib: np.ndarray | None,
    qat: bool,
    sparse: bool,
    per_channel: bool = True,
):
    tfm = tf()
    # The converter's only switch for per-tensor weight scales (TF 2.x keeps it private).
    conv._experimental_disable_per_channel = not per_channel
    opts = []
    if mode is not Quantize.NONE:
        opts.append(tfm.lite.Optimize.DEFAULT)
    if sparse:
        opts.append(tfm.lite.Optimize.EXPERIMENTAL_SPARSITY)
    conv.optimizations = opts
    if mode is Quantize.FLOAT16:
        conv.target_spec.supported_types = [tfm.float16]
    if mode in (Quantize.INT8, Quantize.INT16X8) and calib is not None and not qat:

        def representative():
            for row in calib:
                yield [row[None]]

        conv.representative_dataset = representative
    if mode is Quantize.INT8 and not qat:
        conv.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if mode is Quantize.INT16X8:
        conv.target_spec.supported_ops = [
            tfm.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if io_type is IoType.INT8:
        conv.inference_input_type = tfm.int8
        conv.inference_output_type = tfm.int8
    elif io_type is IoType.INT16:
        conv.inference_input_type = tfm.int16
        conv.inference_output_type = tfm.int16


def _run_converter(conv) -> bytes:
    try:
        with _quiet():
            return bytes(conv.convert())
    except Exception as exc:  # the converter raises many types; report one line
        first = str(exc).strip().splitlines()
        raise RunFailed(
            f"TFLite conversion failed: {first[0] if first else type(exc).__name__}"
        ) from exc


def convert(
    model,
    quantize: str | Quantize = Quantize.NONE,
    calibration: str | os.PathLike | np.ndarray | None = None,
    samples: int = DEFAULT_SAMPLES,
    io: str | IoType | None = None,
    verify: bool = True,
    verify_samples: int = DEFAULT_VERIFY_SAMPLES,
    sparse: bool | None = None,
    progress: bool = True,
    per_channel: bool = True,
) -> ConversionResult:
    """Convert a Keras model (tf_keras, Keras 3 or tfmot QAT) to .tflite bytes.

    quantize: none | dynamic | float16 | int8 (full integer) | int16x8.
    calibration: array, .npy/.npz path, image folder or dataset name; needed for
      int8/int16x8 unless the model is QAT. The first `samples` rows calibrate and
      the next `verify_samples` rows are held out for verification.
    io: int8 mode: "int8" (default) or "float"; int16x8: "float" (default) or "int16".
    sparse: use the converter's sparse weight encoding; None = when >= 50% of kernel
      weights are zero.
    per_channel: int8/int16x8 post-training: one weight scale per output channel (the
      default) or, when False, one per tensor. Per-tensor drops two float32 scales and
      two int64 zero points per channel (~24 B, ~7 B after gzip); on the 80%-pruned
      MobileNetV2 of benchmarks/compression.py that is a fifth of the gzip size
      (69 of 341 KB), at some cost in accuracy (0.24 points there).
    progress: show a tqdm bar on stderr (only when stderr is a terminal).
    """
    start = time.perf_counter()
    mode = parse_choice(Quantize, quantize, "quantize")
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    io_type = _resolve_io(mode, io)
    notes: list[str] = []
    info = get_info(model)  # written into the .tflite as its "mobilecv" metadata
    qat = _is_qat(model)
    if qat and mode not in (Quantize.INT8, Quantize.NONE):
        raise InputError(
            f"{mode.value} does not apply to a quantisation-aware-trained model; use int8 "
            "(or none for a float simulation)"
        )
    if not per_channel and (qat or mode not in (Quantize.INT8, Quantize.INT16X8)):
        raise InputError(
            "per-tensor weights apply to post-training int8/int16x8 only"
            + (" (a QAT model's quantisers fix its scales)" if qat else f", not {mode.value}")
        )
    if _has_pruning_wrappers(model):
        import tensorflow_model_optimization as tfmot

        model = carry(model, tfmot.sparsity.keras.strip_pruning(model))
        notes.append("stripped pruning wrappers before conversion")
    keras3 = is_keras3_model(model)
    needs_calibration = mode in (Quantize.INT8, Quantize.INT16X8) and not qat
    if needs_calibration and calibration is None:
        raise InputError(
            f"{mode.value} needs calibration data: pass a dataset name, a .npy/.npz file or an image folder"
        )
    calib, check, data_kind = _samples(
        calibration, model, samples, verify_samples if verify else 0, notes
    )
    if data_kind == "random" and verify:
        notes.append(
            "no calibration data given: verified on uniform random inputs over the declared "
            f"input range ({range_name(info.input_range)})"
        )
    if sparse is None:
        sparsity = kernel_sparsity(model)
        sparse = sparsity >= SPARSE_THRESHOLD
        if sparse:
            notes.append(f"kernels are {sparsity:.0%} zeros: tried sparse weight encoding")

    workdir = Path(tempfile.mkdtemp(prefix="mobilecv-convert-"))
    try:

        def build(use_sparse: bool) -> bytes:
            with _quiet():
                conv = _make_converter(model, keras3, workdir)
            _configure(conv, mode, io_type, calib, qat, use_sparse, per_channel)
            return _run_converter(conv)

        from tqdm import tqdm

        # disable=None: the bar only shows on a terminal, never in logs or pipes.
        with tqdm(
            total=2 if verify else 1,
            desc=f"tflite {mode.value}",
            unit="stage",
            disable=None if progress else True,
            leave=False,
        ) as bar:
            bar.set_postfix_str("converting")
            data = build(sparse)
            bar.update()
            verification = None
            if verify:
                bar.set_postfix_str("verifying in LiteRT")
                data, verification, sparse = _verify_or_repair(
                    data, model, check, data_kind, mode, sparse, build, notes
                )
                bar.update()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = add_to_tflite(data, info)
    notes.extend(_graph_notes(data, mode))
    return ConversionResult(
        tflite=data,
        mode=mode,
        io=io_type,
        keras="keras3" if keras3 else "tf_keras",
        qat=qat,
        sparse=sparse,
        calibration_samples=0 if calib is None or not needs_calibration else len(calib),
        verification=verification,
        seconds=time.perf_counter() - start,
        notes=notes,
        per_channel=per_channel,
    )


def _graph_notes(data: bytes, mode: Quantize) -> list[str]:
    """Say when the converter quietly did less than the mode promises."""
    from mobilecv.inspection import read_tflite

    graph = read_tflite(data)
    notes = []
    if mode is Quantize.DYNAMIC and graph.quantization == "float32":
        notes.append(
            "no weight tensor was large enough for dynamic-range quantisation (the converter "
            "skips tensors under 1024 values): the model stayed float32"
        )
    if mode in (Quantize.INT8, Quantize.INT16X8) and graph.float_ops:
        shown = ", ".join(graph.float_ops[:5]) + (" ..." if len(graph.float_ops) > 5 else "")
        notes.append(f"{len(graph.float_ops)} ops still compute in float: {shown}")
    return notes


def _resolve_io(mode: Quantize, io: str | IoType | None) -> IoType:
    if io is None:
        return IoType.INT8 if mode is Quantize.INT8 else IoType.FLOAT
    io_type = parse_choice(IoType, io, "io")
    allowed = {
        Quantize.INT8: (IoType.INT8, IoType.FLOAT),
        Quantize.INT16X8: (IoType.FLOAT, IoType.INT16),
    }.get(mode, (IoType.FLOAT,))
    if io_type not in allowed:
        raise InputError(
            f"io={io_type.value} is not possible with quantize={mode.value} "
            f"(choose {' or '.join(a.value for a in allowed)})"
        )
    return io_type


def _verify_or_repair(data, model, check, data_kind, mode, sparse, build, notes):
    from ai_edge_litert.interpreter import OpResolverType

    try:
        return data, _verify(data, model, check, data_kind, OpResolverType.AUTO), sparse
    except _RuntimeFailure as exc:
        default_error = exc.message
    # The default runtime refused the model. Check the model itself is sound.
    try:
        fallback = _verify(
            data, model, check, data_kind, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    except _RuntimeFailure as exc:
        raise RunFailed(f"the converted model does not run in LiteRT: {exc.message}") from None
    if sparse:
        # Known trap: sparse quantised weights break the XNNPACK delegate. Dense
        # weights run everywhere; zeros still shrink to nothing under gzip.
        dense = build(False)
        try:
            verification = _verify(dense, model, check, data_kind, OpResolverType.AUTO)
        except _RuntimeFailure:
            pass
        else:
            notes.append(
                "sparse-encoded model failed under LiteRT's default XNNPACK delegate "
                f"({default_error}); reconverted without Optimize.EXPERIMENTAL_SPARSITY "
                "(dense weights) and verified it runs"
            )
            return dense, verification, False
    notes.append(
        f"model fails under LiteRT's default XNNPACK delegate ({default_error}); it runs with "
        "Interpreter(..., experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)"
    )
    return data, fallback, sparse


class _RuntimeFailure(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return re.sub(r"\s+", " ", text.splitlines()[0] if text else type(exc).__name__)[:200]


def _verify(data: bytes, model, check: np.ndarray | None, data_kind: str, resolver) -> Verification:
    from ai_edge_litert.interpreter import Interpreter

    try:
        with silenced_stderr():  # "Created TensorFlow Lite XNNPACK delegate" goes to fd 2
            interp = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
    except Exception as exc:
        raise _RuntimeFailure(_first_line(exc)) from None
    in_details = interp.get_input_details()
    out_details = interp.get_output_details()
    if check is None:  # multi-input model: random inputs per input tensor
        input_range = get_info(model).input_range
        inputs = [
            _random_rows(DEFAULT_VERIFY_SAMPLES, [int(d) for d in det["shape"][1:]], input_range)
            for det in in_details
        ]
    else:
        inputs = [check]
    n = len(inputs[0])
    reference = _keras_outputs(model, inputs)
    got = [np.zeros_like(r) for r in reference]
    # Map interpreter outputs to Keras outputs by shape order (names differ per route).
    order = _match_outputs(out_details, reference)
    for i in range(n):
        for det, x in zip(in_details, inputs, strict=False):
            interp.set_tensor(det["index"], quantize_input(x[i : i + 1], det))
        try:
            with silenced_stderr():
                interp.invoke()
        except Exception as exc:
            raise _RuntimeFailure(_first_line(exc)) from None
        for k, det in zip(order, out_details, strict=True):
            got[k][i] = dequantize(interp.get_tensor(det["index"]), det).reshape(got[k][i].shape)
    errors = np.concatenate([np.abs(g - r).ravel() for g, r in zip(got, reference, strict=True)])
    top1 = None
    if reference[0].ndim == 2 and reference[0].shape[1] > 1:
        top1 = float(np.mean(np.argmax(got[0], 1) == np.argmax(reference[0], 1)))
    from ai_edge_litert.interpreter import OpResolverType

    return Verification(
        runtime="default" if resolver == OpResolverType.AUTO else "no-default-delegates",
        samples=n,
        data=data_kind,
        max_abs_error=float(errors.max()) if errors.size else 0.0,
        mean_abs_error=float(errors.mean()) if errors.size else 0.0,
        top1_agreement=top1,
    )


def _keras_outputs(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    outs = []
    for start in range(0, len(inputs[0]), 32):
        batch = [x[start : start + 32] for x in inputs]
        y = model(batch if len(batch) > 1 else batch[0], training=False)
        ys = (
            list(y.values())
            if isinstance(y, dict)
            else (list(y) if isinstance(y, list | tuple) else [y])
        )
        outs.append([np.asarray(v, dtype=np.float32) for v in ys])
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _match_outputs(details, reference) -> list[int]:
    if len(details) == 1:
        return [0]
    remaining = list(range(len(reference)))
    order = []
    for det in details:
        shape = tuple(int(d) for d in det["shape"][1:])
        k = next((r for r in remaining if reference[r].shape[1:] == shape), remaining[0])
        remaining.remove(k)
        order.append(k)
    return order


def quantize_input(x: np.ndarray, det) -> np.ndarray:
    """Float input -> the interpreter input's dtype, using its scale and zero point."""
    dtype = det["dtype"]
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zero = det["quantization"]
    if not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, det) -> np.ndarray:
    """An interpreter output -> float32, using its scale and zero point."""
    if np.issubdtype(det["dtype"], np.floating):
        return y.astype(np.float32)
    scale, zero = det["quantization"]
    return ((y.astype(np.float32) - zero) * scale) if scale else y.astype(np.float32)


def load_keras_model(path: str | os.PathLike):
    """Load a full Keras model file (.keras, .h5) saved by any project, including
    tfmot QAT models: those need tfmot's scope plus mobilecv's quantize configs
    (Rescaling, Normalization, Multiply), and a QAT sidecar rebuilds CQAT exactly."""
    tf()  # quiet TensorFlow start-up before tfmot imports it
    import tensorflow_model_optimization as tfmot

    from mobilecv.compress import qat
    from mobilecv.modelio import load_model

    with _quiet():
        if Path(path).suffix == ".h5":
            return qat.load(path)
        with tfmot.quantization.keras.quantize_scope(qat.custom_objects()):
            return load_model(path)


def resolve_model(spec: str | os.PathLike):
    """A model file path, or the name of a registered mobilecv model (built untrained)."""
    path = Path(spec)
    if path.exists() or path.suffix in (".keras", ".h5", ".hdf5"):
        return load_keras_model(path)
    import mobilecv

    try:
        return mobilecv.build(str(spec))
    except KeyError as exc:
        reason = exc.args[0] if exc.args else "unknown model"
        raise InputError(f"{spec}: no such model file, and {reason}") from None

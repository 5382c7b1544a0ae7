"""Keras -> .tflite in every post-training mode, verified in LiteRT after conversion.

`convert(model, quantize=...)` hides the conversion routes:
- the model is written as a SavedModel and converted by `from_saved_model` in a
  worker process (mobilecv.converters.isolated), so a converter crash (TF 2.21 has
  died with SIGSEGV) fails one conversion instead of the caller;
- tf_keras models (including tfmot QAT models) are saved the way `from_keras_model`
  saves them internally, so the bytes are the ones it would give;
- Keras 3 models go through `model.export()`, because a plain
  `tf.saved_model.save` keeps variables as resources and full-integer
  calibration then fails on READ_VARIABLE ops;
- pruning wrappers are stripped first (they would otherwise be exported), and
  NaN/inf weights (a diverged training) are refused.

The converted bytes are loaded into `ai_edge_litert.interpreter.Interpreter` (in
the worker too) and run against the Keras model (here) on held-out samples, so every
result carries measured figures. Where the class outputs are near-constant (an
untrained model), top-1 agreement is not reported: the output error is the measure.
Sparse + quantised models are a known trap: with
`Optimize.EXPERIMENTAL_SPARSITY` the converter emits sparse int8 weights that
LiteRT's default XNNPACK delegate refuses ("failed to delegate FULLY_CONNECTED
node ... TfLiteXNNPackDelegate failed to prepare", google/XNNPACK#3061,
tensorflow#60762; XNNPACK's sparse kernels are fp32-only, google/XNNPACK#1419).
Verification catches that and reconverts with dense weights (zeros still
compress well under gzip), saying so in `notes`. TFLite Micro has no DENSIFY
kernel (tflite-micro#491), so C-array exports default to dense weights.

A detector with its NMS in the graph (`nms=`, mobilecv.tasks.detection_graph) converts in
every float mode as it is. Its NMS op has float kernels only, so in int8 the layer that
decodes and suppresses stays float: the model is calibrated, then quantised with that
layer's ops (and every op after them) on the quantiser's deny list (the selective
quantisation of tf.lite.experimental.QuantizationDebugOptions), so the backbone and the
head are int8 and the tail starts with a DEQUANTIZE. Its outputs are decoded detections:
verification compares them by name, and they stay float32/int32 whatever `io` says.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import io
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilecv._tf import is_keras3_model, silenced_fd, silenced_stderr, tf
from mobilecv.converters.isolated import RuntimeRefused, Session, start_worker
from mobilecv.errors import InputError, RunFailed, parse_choice
from mobilecv.modelinfo import add_to_tflite, carry, get_info, map_range, range_name
from mobilecv.progress import Progress


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
    # None when the output is not a class vector, or is near-constant (below).
    top1_agreement: float | None
    # Max - min of the Keras class outputs over samples and classes.
    output_spread: float | None = None
    # The class outputs vary less than the conversion's mean error (an untrained model's
    # softmax of near-equal logits): top-1 says nothing there, the output error does.
    near_constant_output: bool = False
    # The model's task's figures (top1_agreement; box_iou for localisation; point_error
    # for landmarks): what the converted model's decoded outputs share with the float's.
    agreement: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "samples": self.samples,
            "data": self.data,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "top1_agreement": self.top1_agreement,
            "output_spread": self.output_spread,
            "near_constant_output": self.near_constant_output,
            "agreement": self.agreement,
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


def _weight_name(w) -> str:
    return getattr(w, "path", None) or w.name


def _require_finite_weights(model) -> None:
    """Refuse NaN/inf weights: they come from a training run that diverged. TF 2.21's
    converter died with SIGSEGV on such a model (a QAT EfficientNet whose fine-tune
    diverged), and LiteRT's allocate_tensors() does on the NaN scales they give."""
    bad = [
        _weight_name(w)
        for w in model.weights
        if not np.all(np.isfinite(np.asarray(w.numpy() if hasattr(w, "numpy") else w)))
    ]
    if bad:
        raise RunFailed(
            f"the model has NaN/inf weights ({len(bad)} of {len(model.weights)} variables, "
            f"first {bad[0]}): its training diverged; retrain it before converting"
        )


def kernel_sparsity(model) -> float:
    """Fraction of exactly-zero values over the model's conv/dense kernels."""
    zeros = total = 0
    for w in model.weights:
        name = _weight_name(w)
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
        source = _task_images(calibration, model, count + holdout)
        rows = load_samples(source, count + holdout, shapes[0], input_range)
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


def _task_images(calibration, model, count: int):
    """A data source only a task can read ("scenes") is read by the model's task, which
    owns its representative data. Calibration needs images, not labels, so a dataset the
    loaders know (fashion_mnist, a folder, a .npy) calibrates a model of any task."""
    from mobilecv.calibration import CALIBRATION_SOURCES
    from mobilecv.train import task_of

    if not isinstance(calibration, str) or calibration in CALIBRATION_SOURCES:
        return calibration
    task = task_of(model)
    if task.name == "classification" or Path(calibration).exists():
        return calibration
    return task.load(calibration, "train", limit=count).x


def _random_rows(n: int, shape, input_range: tuple[float, float]) -> np.ndarray:
    """Uniform random rows over the model's declared input range."""
    unit = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
    return map_range(unit, input_range, peak=1.0).astype(np.float32)


def _export_saved_model(model, keras3: bool, export_dir: Path) -> None:
    """Write the SavedModel the converter reads in the worker process. Keras 3: `model.export()`, which captures the
    variables as constants at conversion time (a plain tf.saved_model.save would leave
    READ_VARIABLE ops that full-integer calibration rejects). tf_keras: the same
    tf.saved_model.save call that TFLiteConverter.from_keras_model makes internally
    (TF 2.21 lite.py, TFLiteKerasModelConverterV2._convert_keras_to_saved_model), so the
    bytes are those from_keras_model gives (measured: equal but for the conversion
    metadata's model-type byte), and the worker needs neither Keras nor tfmot."""
    tfm = tf()
    with _quiet():
        if keras3:
            model.export(
                str(export_dir), format="tf_saved_model", verbose=False, **_signature(model)
            )
        else:
            options = tfm.saved_model.SaveOptions(save_debug_info=True)
            tfm.saved_model.save(model, str(export_dir), options=options)


def _signature(model) -> dict[str, Any]:
    """Keras 3 export's input signature for a model built for a fixed batch (an in-graph
    NMS detector: 1), which the export would otherwise leave open; {} for the others."""
    if any(t.shape[0] is None for t in model.inputs):
        return {}
    return {"input_signature": [tf().TensorSpec(tuple(t.shape), t.dtype) for t in model.inputs]}


def _conversion_backend(
    model, keras3: bool, calib: np.ndarray | None, session, notes: list[str]
) -> Callable[[dict[str, Any]], bytes]:
    """Settings -> .tflite bytes: in the worker process from an exported SavedModel, so a
    converter crash fails this conversion only; in this process when the model cannot
    be saved as a SavedModel (from_keras_model then freezes the Keras graph itself)."""
    try:
        session.write_model(lambda path: _export_saved_model(model, keras3, path))
    except Exception as exc:  # noqa: BLE001 - any save failure has the same remedy
        if keras3:
            raise RunFailed(f"cannot export the Keras 3 model: {_first_line(exc)}") from exc
        notes.append(
            f"the model cannot be saved as a SavedModel ({_first_line(exc)}): converted in "
            "this process, where a converter crash would end the process"
        )
        return lambda settings: _convert_in_process(model, calib, settings)
    session.write_calibration(calib)
    return session.convert


def _convert_in_process(model, calib: np.ndarray | None, settings: dict[str, Any]) -> bytes:
    with _quiet():
        conv = tf().lite.TFLiteConverter.from_keras_model(model)
    configure_from_settings(conv, settings, calib)
    return _run_converter(conv)


def _settings(
    mode: Quantize,
    io_type: IoType,
    qat: bool,
    sparse: bool,
    per_channel: bool,
    float_tail: str | None = None,
) -> dict[str, Any]:
    """The converter settings, as JSON the worker process reads. ``float_tail``: the name
    of a Keras layer whose ops, and every op after them, stay float in int8."""
    return {
        "mode": mode.value,
        "io": io_type.value,
        "qat": qat,
        "sparse": sparse,
        "per_channel": per_channel,
        "float_tail": float_tail,
    }


def configure_from_settings(conv, settings: dict[str, Any], calib: np.ndarray | None) -> None:
    _configure(
        conv,
        Quantize(settings["mode"]),
        IoType(settings["io"]),
        calib,
        settings["qat"],
        settings["sparse"],
        settings["per_channel"],
        settings.get("float_tail"),
    )


def _configure(
    conv,
    mode: Quantize,
    io_type: IoType,
    calib: np.ndarray | None,
    qat: bool,
    sparse: bool,
    per_channel: bool = True,
    float_tail: str | None = None,
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
    if float_tail and mode is Quantize.INT8 and calib is not None and not qat:
        # Calibrate only: _run_converter quantises all but the tail and sets the input type.
        conv._experimental_calibrate_only = True
        conv._mobilecv_finish = lambda calibrated: _quantize_all_but(
            calibrated, float_tail, per_channel, io_type
        )
    elif io_type is IoType.INT8:
        conv.inference_input_type = tfm.int8
        conv.inference_output_type = tfm.int8
    elif io_type is IoType.INT16:
        conv.inference_input_type = tfm.int16
        conv.inference_output_type = tfm.int16


def _run_converter(conv) -> bytes:
    finish = getattr(conv, "_mobilecv_finish", None)
    try:
        with _quiet():
            data = bytes(conv.convert())
            return finish(data) if finish else data
    except Exception as exc:  # the converter raises many types; report one line
        first = str(exc).strip().splitlines()
        raise RunFailed(
            f"TFLite conversion failed: {first[0] if first else type(exc).__name__}"
        ) from exc


def tail_ops(graph, layer: str) -> list:
    """The ops of Keras layer ``layer`` (by their tensor names: "model/layer/op", or
    "model/layer_1/op" in a Keras 3 export) and every op that reads what they compute."""
    own = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")
    found, downstream = [], set()
    for op in graph.ops:  # in execution order: producers come first
        names = [graph.tensors[i].name for i in op.outputs]
        if any(own.search(n) for n in names) or downstream.intersection(op.inputs):
            found.append(op)
            downstream.update(op.outputs)
    return found


def _quantize_all_but(calibrated: bytes, layer: str, per_channel: bool, io_type: IoType) -> bytes:
    """Full-integer quantisation of a calibrated model but for the :func:`tail_ops` of
    ``layer``, which stay float after a DEQUANTIZE (ops without int8 kernels, as NMS). The
    input is int8 when ``io_type`` is; the outputs are the tail's own (float32, int32)."""
    from tensorflow.lite.python.convert import mlir_quantize

    from mobilecv.tflite_graph import parse

    graph = parse(calibrated)
    nodes = [graph.tensors[i].name for op in tail_ops(graph, layer) for i in op.outputs]
    if not nodes:
        raise RunFailed(f"no ops of layer {layer!r} in the converted graph to keep float")
    tfm = tf()
    quantized = mlir_quantize(
        calibrated,
        disable_per_channel=not per_channel,
        input_data_type=tfm.int8 if io_type is IoType.INT8 else tfm.float32,
        output_data_type=tfm.float32,
        denylisted_nodes=nodes,
    )
    return bytes(quantized)


def check_request(
    quantize: str | Quantize,
    io: str | IoType | None,
    calibration: object,
    samples: int,
    per_channel: bool,
    qat: bool,
) -> tuple[Quantize, IoType]:
    """(mode, I/O type) of a valid request, else an InputError. Needs no TensorFlow, so
    the CLI checks a request before it loads the model."""
    mode = parse_choice(Quantize, quantize, "quantize")
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    io_type = _resolve_io(mode, io)
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
    if mode in (Quantize.INT8, Quantize.INT16X8) and not qat and calibration is None:
        raise InputError(
            f"{mode.value} needs calibration data: pass a dataset name, a .npy/.npz file or an image folder"
        )
    return mode, io_type


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
    nms: dict | None = None,
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
    nms: a YOLO detector gets its decode and per-class NMS in the graph first
      (mobilecv.tasks.detection_graph.with_nms with these keyword arguments, {} for the
      defaults; batch 1); a model made by with_nms already has them.
    progress: show a bar on stderr when it is a terminal (nothing in a file or pipe).
    """
    start = time.perf_counter()
    if nms is not None:
        from mobilecv.tasks.detection_graph import with_nms

        model = with_nms(model, **nms)
    qat = _is_qat(model)
    mode, io_type = check_request(quantize, io, calibration, samples, per_channel, qat)
    info = get_info(model)  # written into the .tflite as its "mobilecv" metadata
    start_worker()  # its TensorFlow import overlaps the export and calibration below
    needs_calibration = mode in (Quantize.INT8, Quantize.INT16X8) and not qat
    notes: list[str] = []
    if _has_pruning_wrappers(model):
        import tensorflow_model_optimization as tfmot

        model = carry(model, tfmot.sparsity.keras.strip_pruning(model))
        notes.append("stripped pruning wrappers before conversion")
    _require_finite_weights(model)
    keras3 = is_keras3_model(model)
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
    float_tail, sparse = _nms_tail(info, mode, qat, sparse, notes)

    workdir = Path(tempfile.mkdtemp(prefix="mobilecv-convert-"))
    try:
        # QAT models carry their ranges and float modes calibrate nothing: no rows then.
        rows = calib if needs_calibration else None
        session = Session(workdir, notes)
        backend = _conversion_backend(model, keras3, rows, session, notes)

        def build(use_sparse: bool) -> bytes:
            return backend(_settings(mode, io_type, qat, use_sparse, per_channel, float_tail))

        # A live bar on a terminal only: in a log or pipe the caller's result line (the
        # CLI's "mode int8 ..., 12.3 s") is the one line of this stage.
        bar = Progress(
            f"tflite {mode.value}", 2 if verify else 1, "stage", enabled=progress, summary=False
        )
        with bar:
            bar.note("converting")
            data = build(sparse)
            bar.update(note="converted")
            verification = None
            if verify:
                bar.note("verifying in LiteRT")
                data, verification, sparse = _verify_or_repair(
                    data, model, check, data_kind, mode, sparse, build, notes, session.run_litert
                )
                notes.extend(_verification_notes(verification))
                bar.update(note="verified in LiteRT")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = add_to_tflite(data, info)
    notes.extend(_graph_notes(data, mode, float_tail))
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


def _nms_tail(info, mode: Quantize, qat: bool, sparse: bool, notes: list[str]):
    """(the layer to keep float in int8, or None; sparse) for a model with in-graph NMS."""
    from mobilecv.tasks.detection_graph import LAYER_NAME, has_nms

    if not has_nms(info):
        return None, sparse
    if mode is Quantize.INT16X8:
        raise InputError("int16x8 cannot keep the in-graph NMS float; use int8 or a float mode")
    if mode is not Quantize.INT8 or qat:
        return None, sparse
    notes.append(
        "NMS has float kernels only: the decode and NMS run in float after a DEQUANTIZE, "
        "the backbone and head in int8; the outputs are float32 boxes and scores, int32 "
        "classes and count"
    )
    if sparse:
        notes.append("sparse weight encoding is not applied with the float NMS tail")
    return LAYER_NAME, False


def _graph_notes(data: bytes, mode: Quantize, float_tail: str | None = None) -> list[str]:
    """Say when the converter quietly did less than the mode promises."""
    from mobilecv.inspection import read_tflite

    graph = read_tflite(data)
    notes, float_ops = [], graph.float_ops
    if float_tail:  # float by design (the note of _nms_tail): only other float ops are news
        from mobilecv.tflite_graph import parse

        tail = {f"{op.opcode}#{op.index}" for op in tail_ops(parse(data), float_tail)}
        float_ops = [op for op in float_ops if op not in tail]
    if mode is Quantize.DYNAMIC and graph.quantization == "float32":
        notes.append(
            "no weight tensor was large enough for dynamic-range quantisation (the converter "
            "skips tensors under 1024 values): the model stayed float32"
        )
    if mode in (Quantize.INT8, Quantize.INT16X8) and float_ops:
        shown = ", ".join(float_ops[:5]) + (" ..." if len(float_ops) > 5 else "")
        notes.append(f"{len(float_ops)} ops still compute in float: {shown}")
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


# LiteRT's op resolvers, by name: the default runtime (XNNPACK delegate applied) and
# the reference kernels alone.
DEFAULT_RUNTIME = "AUTO"
NO_DELEGATES = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"


def _verify_or_repair(data, model, check, data_kind, mode, sparse, build, notes, litert):
    """(bytes, Verification, sparse): `litert(data, inputs, resolver)` runs the bytes."""
    try:
        return data, _verify(data, model, check, data_kind, DEFAULT_RUNTIME, litert), sparse
    except RuntimeRefused as exc:
        default_error = str(exc)
    # The default runtime refused the model. Check the model itself is sound.
    try:
        fallback = _verify(data, model, check, data_kind, NO_DELEGATES, litert)
    except RuntimeRefused as exc:
        raise RunFailed(_refusal(str(exc), mode)) from None
    if sparse:
        # Known trap: sparse quantised weights break the XNNPACK delegate. Dense
        # weights run everywhere; zeros still shrink to nothing under gzip.
        dense = build(False)
        try:
            verification = _verify(dense, model, check, data_kind, DEFAULT_RUNTIME, litert)
        except RuntimeRefused:
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


def _refusal(error: str, mode: Quantize) -> str:
    message = f"the converted model does not run in LiteRT: {error}"
    if mode is Quantize.INT16X8 and "no_integer_overflow_from_quantization" in error:
        # A calibrated range of almost zero (a freshly initialised network's collapsed
        # activations) gives an int16 scale so small that the ReLU6 bound overflows int32.
        message += (
            " (an activation's calibrated range is almost zero, as in a freshly initialised "
            "model: train it first, one epoch is enough, or use int8)"
        )
    return message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return re.sub(r"\s+", " ", text.splitlines()[0] if text else type(exc).__name__)[:200]


def _verification_inputs(model, check: np.ndarray | None) -> list[np.ndarray]:
    if check is not None:
        return [check]
    # A multi-input model: random rows over the declared range for each input.
    input_range = get_info(model).input_range
    return [
        _random_rows(DEFAULT_VERIFY_SAMPLES, shape, input_range) for shape in _input_shapes(model)
    ]


def _verify(data: bytes, model, check: np.ndarray | None, data_kind: str, resolver: str, litert):
    """Keras (here, on the caller's model) against LiteRT (`litert`, in the worker process:
    LiteRT has crashed with SIGSEGV on a model with NaN quantisation scales), compared by
    the output error and by the agreement figure of the model's task."""
    inputs = _verification_inputs(model, check)
    names, reference = _keras_outputs(model, inputs)
    outputs = litert(data, inputs, resolver)
    got = [None] * len(reference)
    for k, out in zip(_match_outputs(data, outputs, names, reference), outputs, strict=True):
        got[k] = out.reshape(reference[k].shape)
    errors = np.concatenate([np.abs(g - r).ravel() for g, r in zip(got, reference, strict=True)])
    agreement, spread, near_constant = _task_agreement(model, names, reference, got)
    return Verification(
        runtime="default" if resolver == DEFAULT_RUNTIME else "no-default-delegates",
        samples=len(inputs[0]),
        data=data_kind,
        max_abs_error=float(errors.max()) if errors.size else 0.0,
        mean_abs_error=float(errors.mean()) if errors.size else 0.0,
        top1_agreement=agreement.get("top1_agreement"),
        output_spread=spread,
        near_constant_output=near_constant,
        agreement=agreement,
    )


def _task_agreement(model, names, reference, got) -> tuple[dict[str, float], float | None, bool]:
    """(the task's agreement figures, output spread, near-constant?). A classifier whose
    class outputs vary less than the conversion's mean error (an untrained model's softmax
    of near-equal logits) gets no top-1 figure: it would mean nothing."""
    from mobilecv.tasks.base import as_outputs
    from mobilecv.tasks.detection_graph import has_nms
    from mobilecv.train import task_of

    task = task_of(model)
    if names and has_nms(model):  # the graph decodes: compare the decoded outputs by name
        ref, out = (dict(zip(names, v, strict=True)) for v in (reference, got))
        return _decoded_view(task).agreement(ref, out), None, False
    try:
        ref = as_outputs(
            dict(zip(names, reference, strict=True)) if names else reference, task.outputs
        )
        out = as_outputs(dict(zip(names, got, strict=True)) if names else got, task.outputs)
    except InputError:  # outputs that are not the task's (a backbone, a custom model)
        return {}, None, False
    if task.name != "classification":
        return task.agreement(ref, out), None, False
    scores = ref["scores"]
    classes = scores.shape[-1]
    if scores.ndim < 2 or classes < 2:
        return {}, None, False
    # A grid of class vectors (a fully convolutional classifier) is scored cell by cell.
    flat_ref = {"scores": scores.reshape(-1, classes)}
    flat_out = {"scores": out["scores"].reshape(-1, classes)}
    spread = float(np.ptp(scores))
    if spread <= float(np.abs(out["scores"] - scores).mean()):
        return {}, spread, True
    return task.agreement(flat_ref, flat_out), spread, False


def _decoded_view(task):
    """``task`` for a model that decodes in its graph: its outputs are already what
    ``decode`` would give, so the task's agreement compares them as they are."""
    view = copy.copy(task)
    view.decode = lambda outputs, **options: dict(outputs)
    return view


def _verification_notes(v: Verification | None) -> list[str]:
    if v is None or not v.near_constant_output:
        return []
    return [
        f"the Keras class outputs are near-constant (they span {v.output_spread:.3g} over "
        f"samples and classes, within the conversion's mean |error| {v.mean_abs_error:.3g}), "
        "as in an untrained model: top-1 agreement means nothing here and is not reported; "
        f"judge the conversion by its output error (max |err| {v.max_abs_error:.3g})"
    ]


def run_in_litert(data: bytes, inputs: list[np.ndarray], resolver: str) -> list[np.ndarray]:
    """Run `data` in LiteRT one row at a time: its float outputs, in the interpreter's
    output order. RuntimeRefused when LiteRT will not prepare or run it."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        with silenced_stderr():  # "Created TensorFlow Lite XNNPACK delegate" goes to fd 2
            interp = Interpreter(
                model_content=data, experimental_op_resolver_type=OpResolverType[resolver]
            )
            interp.allocate_tensors()
    except Exception as exc:
        raise RuntimeRefused(_first_line(exc)) from None
    in_details = interp.get_input_details()
    out_details = interp.get_output_details()
    rows = []
    for i in range(len(inputs[0])):
        for det, x in zip(in_details, inputs, strict=False):
            interp.set_tensor(det["index"], quantize_input(x[i : i + 1], det))
        try:
            with silenced_stderr():
                interp.invoke()
        except Exception as exc:
            raise RuntimeRefused(_first_line(exc)) from None
        rows.append([dequantize(interp.get_tensor(det["index"]), det) for det in out_details])
    return [np.concatenate(parts) for parts in zip(*rows, strict=True)]


def _keras_outputs(model, inputs: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """(output names, or [] when the model's outputs are not a dict; float outputs)."""
    outs, names = [], []
    step = model.inputs[0].shape[0] or 32  # a model built for a fixed batch runs at it
    for start in range(0, len(inputs[0]), step):
        batch = [x[start : start + step] for x in inputs]
        y = model(batch if len(batch) > 1 else batch[0], training=False)
        if isinstance(y, dict):
            names = list(y)
            ys = list(y.values())
        else:
            ys = list(y) if isinstance(y, list | tuple) else [y]
        outs.append([np.asarray(v, dtype=np.float32) for v in ys])
    return names, [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _match_outputs(data: bytes, outputs, names: list[str], reference) -> list[int]:
    """For each interpreter output, the index of its Keras output: by the signature's
    output names where the model's outputs are named (a localiser's box and its 4 class
    scores have the same shape), else by shape."""
    from mobilecv.tflite_graph import parse

    if len(outputs) == 1:
        return [0]
    litert_names = parse(data).output_names
    if names and sorted(litert_names) == sorted(names):
        return [names.index(n) for n in litert_names]
    remaining = list(range(len(reference)))
    order = []
    for out in outputs:
        shape = tuple(out.shape[1:])
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


MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
# tfmot's QAT layers, as a saved model config names them (QuantizeWrapperV2, QuantizeLayer).
_QAT_CLASS = re.compile(r'"class_name":\s*"Quantize(Wrapper|Layer)')


def model_is_qat(spec: str | os.PathLike) -> bool | None:
    """Whether MODEL (a file or a registered name, as `resolve_model` takes it) is a
    tfmot QAT model, read from the file's config without TensorFlow; None when the
    file cannot tell (it is then loaded, and the loader reports what is wrong)."""
    path = Path(spec)
    if not path.exists():
        return None if path.suffix in MODEL_SUFFIXES else False  # names build untrained
    try:
        if path.suffix == ".keras":
            import zipfile

            with zipfile.ZipFile(path) as archive:
                config = archive.read("config.json").decode()
        else:
            import h5py

            with h5py.File(path, "r") as h5:
                config = h5.attrs["model_config"]
            config = config.decode() if isinstance(config, bytes) else str(config)
    except Exception:  # noqa: BLE001 - unreadable here; loading the model will say why
        return None
    return bool(_QAT_CLASS.search(config))


def resolve_model(spec: str | os.PathLike):
    """A model file path, or the name of a registered mobilecv model (built untrained)."""
    path = Path(spec)
    if path.exists() or path.suffix in MODEL_SUFFIXES:
        return load_keras_model(path)
    import mobilecv

    try:
        return mobilecv.build(str(spec))
    except KeyError as exc:
        reason = exc.args[0] if exc.args else "unknown model"
        raise InputError(f"{spec}: no such model file, and {reason}") from None

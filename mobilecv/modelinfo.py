"""What a model declares about itself: the input range it expects, its task, its source.

Every stage that feeds a model reads the declared range with :func:`get_info` and maps
images with :func:`map_range`, the one pixel -> input mapping (training, calibration,
verification, evaluation, sweeps); the benchmark scripts draw random inputs in it. So a
model whose graph expects [0, 255] (keras.applications' EfficientNet) and one that
expects [0, 1] (every registered model by default) are both fed what they expect.

The info travels with the model:

- in memory, as an attribute Keras does not track (:func:`set_info`, :func:`carry` for
  every function that returns a new model made from an old one);
- in Keras files, as a ``mobilecv.json`` entry of the .keras zip or a ``mobilecv_info``
  root attribute of the .h5 (both Kerases ignore them when loading);
- in .tflite files, as a flatbuffer metadata entry named ``mobilecv`` holding the same
  JSON (:func:`add_to_tflite`, :func:`read_info`). ``mobilecv/bench/ondevice.py`` reads
  it with the LiteRT schema alone, since it must not import mobilecv.

A model without the info (a foreign model) gets it from its graph: a first layer that
rescales by less than 0.1 (keras.applications' EfficientNet, EfficientNetV2 and
MobileNetV3 preprocessing) or normalises by a pixel-sized mean (ConvNeXt) means it
takes pixels in [0, 255]; anything else is taken to want [0, 1].
"""

from __future__ import annotations

import enum
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilecv.errors import InputError, parse_choice

METADATA_NAME = "mobilecv"  # the .tflite metadata entry
KERAS_ZIP_ENTRY = "mobilecv.json"  # the entry added to a .keras zip
H5_ATTRIBUTE = "mobilecv_info"  # the root attribute added to a .h5 file
FORMAT_VERSION = 1
_ATTRIBUTE = "_mobilecv_info"  # where the info lives on a Keras model object

# A first-layer rescale below this means the graph expects pixels (1/255, 1/127.5, 1/128).
PIXEL_RESCALE_BELOW = 0.1
# A first-layer Normalization mean above this is a pixel mean (ConvNeXt: 0.485 * 255).
PIXEL_MEAN_ABOVE = 2.0


class InputRange(enum.StrEnum):
    """The input ranges a builder can declare (the `input_range` knob)."""

    UNIT = "unit"  # [0, 1]: what every registered model takes by default
    PIXELS = "pixels"  # [0, 255]: keras.applications' EfficientNet convention
    SYMMETRIC = "symmetric"  # [-1, 1]: keras.applications' MobileNet convention

    @property
    def bounds(self) -> tuple[float, float]:
        return _BOUNDS[self]


_BOUNDS = {
    InputRange.UNIT: (0.0, 1.0),
    InputRange.PIXELS: (0.0, 255.0),
    InputRange.SYMMETRIC: (-1.0, 1.0),
}
UNIT_RANGE = InputRange.UNIT.bounds


def parse_range(value: str | InputRange | tuple | list) -> tuple[float, float]:
    """(lo, hi) from a range name (unit, pixels, symmetric) or a pair of numbers."""
    if isinstance(value, str):
        return parse_choice(InputRange, value, "input_range").bounds
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"input_range must be a name or (lo, hi); got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"input_range needs finite lo < hi; got ({lo:g}, {hi:g})")
    return lo, hi


def range_name(bounds: tuple[float, float]) -> str:
    """'unit', 'pixels', 'symmetric' or '[lo, hi]' for messages and reports."""
    for member, known in _BOUNDS.items():
        if tuple(bounds) == known:
            return member.value
    return f"[{bounds[0]:g}, {bounds[1]:g}]"


@dataclass(frozen=True)
class ModelInfo:
    """The metadata mobilecv keeps with a model (JSON in files).

    `source` records where the model came from (registry name and resolved knobs) for
    provenance; `task` names the model's registered task, and `task_options` what that
    task needs to read the outputs (a detector's anchors), for every runtime that decodes.
    `loss_options` are the keywords of the task's loss the model was trained with (a
    triplet margin, a Dice weight): later training (fine-tuning, QAT) uses the same loss.
    """

    input_range: tuple[float, float] = UNIT_RANGE
    task: str = "classification"
    source: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    loss_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_range", parse_range(self.input_range))
        if not isinstance(self.task, str) or not self.task:
            raise InputError(f"task must be a non-empty string; got {self.task!r}")
        object.__setattr__(self, "source", dict(self.source or {}))
        object.__setattr__(self, "task_options", dict(self.task_options or {}))
        object.__setattr__(self, "loss_options", dict(self.loss_options or {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "input_range": list(self.input_range),
            "task": self.task,
            "source": self.source,
            **({"task_options": self.task_options} if self.task_options else {}),
            **({"loss_options": self.loss_options} if self.loss_options else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        # Keys a newer mobilecv may add are ignored, so older versions still read the range.
        if not isinstance(data, dict) or "input_range" not in data:
            raise InputError(f"not mobilecv model info: {data!r:.120}")
        return cls(
            input_range=data["input_range"],
            task=data.get("task", "classification"),
            source=data.get("source") or {},
            task_options=data.get("task_options") or {},
            loss_options=data.get("loss_options") or {},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelInfo:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"mobilecv model info is not JSON ({exc})") from None
        return cls.from_dict(data)


def map_range(x, input_range: tuple[float, float], peak: float = 255.0):
    """Map images with values in [0, peak] onto `input_range`: lo + (hi - lo) * x / peak.

    The one mapping every stage uses (numpy arrays and tf tensors alike); pixels have
    peak 255, images already in [0, 1] peak 1.
    """
    lo, hi = input_range
    return lo + (hi - lo) / peak * x


# --------------------------------------------------------------------------- Keras models


def set_info(model, info: ModelInfo):
    """Attach `info` to a Keras model (not tracked by Keras, so weights are unaffected)."""
    if not isinstance(info, ModelInfo):
        raise TypeError(f"expected a ModelInfo, got {type(info).__name__}")
    object.__setattr__(model, _ATTRIBUTE, info)
    return model


def carry(src_model, dst_model):
    """Give `dst_model` (made from `src_model`: a clone, a stripped or QAT copy) its info."""
    return set_info(dst_model, get_info(src_model))


def get_info(model) -> ModelInfo:
    """The model's declared info; for a model without one, what its graph implies."""
    info = getattr(model, _ATTRIBUTE, None)
    return info if isinstance(info, ModelInfo) else ModelInfo(input_range=_graph_range(model))


def _graph_range(model) -> tuple[float, float]:
    layer = _first_layer(model)
    kind = type(layer).__name__
    if kind == "Rescaling" and _max_abs(getattr(layer, "scale", 1.0)) < PIXEL_RESCALE_BELOW:
        return InputRange.PIXELS.bounds
    if kind == "Normalization" and _normalization_mean(layer) > PIXEL_MEAN_ABOVE:
        return InputRange.PIXELS.bounds
    return UNIT_RANGE


_PASS_THROUGH = ("InputLayer", "QuantizeLayer")  # tfmot's QAT adds a QuantizeLayer first


def _first_layer(model):
    """The first layer after the input, unwrapped from tfmot/Keras wrappers."""
    for layer in getattr(model, "layers", ()):
        while hasattr(layer, "layer") and not hasattr(layer, "layers"):
            layer = layer.layer
        if type(layer).__name__ not in _PASS_THROUGH:
            return layer
    return None


def _max_abs(value) -> float:
    import numpy as np

    try:
        return float(np.max(np.abs(np.asarray(value, dtype=np.float64))))
    except (TypeError, ValueError):
        return math.inf


def _normalization_mean(layer) -> float:
    """Largest mean a Normalization layer subtracts (given at construction or adapted)."""
    mean = getattr(layer, "input_mean", None)
    if mean is None:
        weights = layer.get_weights()
        mean = weights[0] if weights else 0.0
    return _max_abs(mean)


# --------------------------------------------------------------------------- Keras files


def write_keras_file(path: str | os.PathLike, info: ModelInfo) -> None:
    """Add `info` to a saved .keras (zip entry) or .h5 (root attribute) file in place."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(KERAS_ZIP_ENTRY, info.to_json())
        return
    import h5py

    with h5py.File(path, "a") as handle:
        handle.attrs[H5_ATTRIBUTE] = info.to_json()


def read_keras_file(path: str | os.PathLike) -> ModelInfo | None:
    """The info stored in a .keras or .h5 file, or None when it has none."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if KERAS_ZIP_ENTRY not in archive.namelist():
                return None
            return ModelInfo.from_json(archive.read(KERAS_ZIP_ENTRY))
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            text = handle.attrs.get(H5_ATTRIBUTE)
    except OSError:
        return None
    return None if text is None else ModelInfo.from_json(text)


# --------------------------------------------------------------------------- .tflite files


def add_to_tflite(data: bytes, info: ModelInfo) -> bytes:
    """`data` with a "mobilecv" metadata entry holding `info` (replacing an earlier one).

    The TFLite converter itself repacks its output through the schema's object API to add
    its own CONVERSION_METADATA entry; this does the same.
    """
    import numpy as np

    from mobilecv.tflite_graph import rewrite, schema

    payload = np.frombuffer(info.to_json().encode(), dtype=np.uint8)

    def edit(model) -> None:
        fb = schema()
        model.buffers = model.buffers or []
        model.metadata = model.metadata or []
        for entry in model.metadata:
            if _decoded(entry.name) == METADATA_NAME:
                model.buffers[entry.buffer].data = payload
                return
        buffer = fb.BufferT()
        buffer.data = payload
        model.buffers.append(buffer)
        entry = fb.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)

    return rewrite(data, edit)


def _decoded(name) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name or "")


def read_info(source: str | os.PathLike | bytes | bytearray | memoryview) -> ModelInfo | None:
    """The "mobilecv" metadata of a .tflite model (path or bytes), or None when absent."""
    from mobilecv.tflite_graph import load

    payload = load(source).metadata.get(METADATA_NAME)
    return None if payload is None else ModelInfo.from_json(payload)

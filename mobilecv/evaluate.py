"""Held-out evaluation of .tflite models in LiteRT, and the course's test-time techniques.

- Multi-crop (10-crop) evaluation, as in AlexNet and GoogLeNet: the image is enlarged by
  ``crop_margin``, and the four corner crops and the centre crop, each with its mirror,
  are averaged.
- Ensembles: the outputs of N models are averaged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mobilecv._tf import silenced_stderr


class TfliteModel:
    """A LiteRT interpreter with float-in, float-out batch prediction.

    `info` is the model's mobilecv metadata (its declared input range; the default
    [0, 1] when the file has none): `predict` takes inputs already in that range.
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        from mobilecv.modelinfo import ModelInfo, read_info

        kwargs = (
            {"model_content": model}
            if isinstance(model, bytes)
            else {"model_path": os.fspath(model)}
        )
        with silenced_stderr():
            self.interpreter = Interpreter(num_threads=threads, **kwargs)
            self.interpreter.allocate_tensors()
        from mobilecv.tflite_graph import load

        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.output = self.outputs[0]
        self.info = read_info(model) or ModelInfo()
        # Output names from the file's signature (the Keras output names), in output order.
        self.output_names = load(model).output_names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The first (for a classifier, the only) output, float, one row per input."""
        return self.predict_all(x)[0]

    def predict_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, float, in the interpreter's output order."""
        from mobilecv.converters.tflite import dequantize, quantize_input

        rows = []
        for i in range(len(x)):
            self.interpreter.set_tensor(
                self.input["index"], quantize_input(x[i : i + 1], self.input)
            )
            self.interpreter.invoke()
            rows.append(
                [dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]
            )
        return [np.concatenate(parts) for parts in zip(*rows, strict=True)]

    def predict_outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs by the task's output ``names`` (matched through the signature's names;
        a single output is the task's single output)."""
        from mobilecv.tasks.base import as_outputs

        values = self.predict_all(x)
        if self.output_names and len(values) > 1:
            return as_outputs(dict(zip(self.output_names, values, strict=True)), tuple(names))
        return as_outputs(values, tuple(names))


def stem_input_levels(model: bytes, x: np.ndarray) -> int:
    """Distinct int8 values the input of the first CONV_2D (the stem) takes over `x`
    (rows already in the model's input range): how much of the image survives int8."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mobilecv.converters.tflite import quantize_input
    from mobilecv.tflite_graph import load

    stem = next(op for op in load(model).ops if op.opcode == "CONV_2D")
    with silenced_stderr():
        interp = Interpreter(
            model_content=model,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,  # keeps the intermediate tensors readable
        )
        interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    levels: set[int] = set()
    for row in x:
        interp.set_tensor(detail["index"], quantize_input(row[None], detail))
        interp.invoke()
        levels.update(np.unique(interp.get_tensor(stem.inputs[0])).tolist())
    return len(levels)


def top1(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def ten_crops(images: np.ndarray, size: int, crop_margin: float = 0.125) -> list[np.ndarray]:
    """Four corners and the centre of images enlarged by ``crop_margin``, plus mirrors."""
    from mobilecv._tf import tf

    big = int(round(size * (1 + crop_margin)))
    enlarged = tf().image.resize(images, (big, big), method="bilinear").numpy()
    o = big - size
    c = o // 2
    corners = [(0, 0), (0, o), (o, 0), (o, o), (c, c)]
    crops = [enlarged[:, r : r + size, q : q + size, :] for r, q in corners]
    return crops + [crop[:, :, ::-1, :] for crop in crops]


@dataclass(frozen=True)
class EvalRow:
    technique: str
    accuracy: float
    ms_per_image: float
    cost_vs_single: float


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def test_time_techniques(
    models: Sequence[TfliteModel], x: np.ndarray, y: np.ndarray, multi_crop: bool = True
) -> list[dict]:
    """Single-crop, 10-crop and ensemble accuracy with their latency cost, on one split.

    ``x`` holds images at the model's resolution, in its declared input range
    (`mobilecv.data.datasets.model_inputs`).
    """
    first = models[0]
    size = first.input_shape[1]
    single, t_single = _timed(lambda: first.predict(x))
    rows = [EvalRow("single crop", top1(single, y), 1e3 * t_single / len(x), 1.0)]
    if multi_crop:
        crops = ten_crops(x, size)
        probs, t = _timed(lambda: np.mean([first.predict(c) for c in crops], axis=0))
        rows.append(EvalRow("10-crop", top1(probs, y), 1e3 * t / len(x), t / t_single))
    if len(models) > 1:
        probs, t = _timed(lambda: np.mean([m.predict(x) for m in models], axis=0))
        rows.append(
            EvalRow(f"ensemble of {len(models)}", top1(probs, y), 1e3 * t / len(x), t / t_single)
        )
    return [asdict(r) for r in rows]

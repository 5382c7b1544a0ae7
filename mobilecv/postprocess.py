"""Post-processing of model outputs, in numpy only: the one copy every runtime uses.

The same functions run after Keras, after LiteRT, after TFLite Micro and in the on-device
script. That script must not import TensorFlow or mobilecv, so this module imports only
numpy and the standard library: copy it beside ``ondevice.py`` on a device.

Boxes are (x0, y0, x1, y1) corners; the course's (bx, by, bh, bw) centre form is converted
where a head predicts it. Coordinates are fractions of the image size unless a function
says pixels.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------ boxes


def centre_to_corners(box: np.ndarray) -> np.ndarray:
    """(..., 4) (bx, by, bh, bw) centre/height/width -> (x0, y0, x1, y1) corners."""
    box = np.asarray(box, dtype=np.float32)
    bx, by, bh, bw = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return np.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], axis=-1)


def corners_to_centre(box: np.ndarray) -> np.ndarray:
    """(..., 4) (x0, y0, x1, y1) -> the course's (bx, by, bh, bw)."""
    box = np.asarray(box, dtype=np.float32)
    x0, y0, x1, y1 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, y1 - y0, x1 - x0], axis=-1)


def box_area(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float32)
    return np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of corner boxes, broadcast over leading axes: (..., 4) x (..., 4).

    Boxes of zero area have IoU 0 with everything (no division by zero).
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    x0 = np.maximum(a[..., 0], b[..., 0])
    y0 = np.maximum(a[..., 1], b[..., 1])
    x1 = np.minimum(a[..., 2], b[..., 2])
    y1 = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = box_area(a) + box_area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0).astype(np.float32)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) IoU matrix."""
    return iou(np.asarray(a)[:, None, :], np.asarray(b)[None, :, :])


# ------------------------------------------------------------------ per task


def classification(scores: np.ndarray, top_k: int = 1) -> dict[str, np.ndarray]:
    """Class ids (N, top_k), best first, and their scores."""
    scores = np.asarray(scores, dtype=np.float32).reshape(len(scores), -1)
    order = np.argsort(-scores, axis=1)[:, :top_k]
    return {"classes": order, "scores": np.take_along_axis(scores, order, axis=1)}


def localisation(
    presence: np.ndarray, box: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """The course's (Pc, bx, by, bh, bw, c1..cn) outputs -> present?, corner box, class.

    ``presence`` (N, 1) is Pc after a sigmoid, ``box`` (N, 4) is (bx, by, bh, bw) as fractions
    of the image, ``scores`` (N, n) the class probabilities.
    """
    pc = np.asarray(presence, dtype=np.float32).reshape(-1)
    return {
        "present": pc >= threshold,
        "presence": pc,
        "box": np.clip(centre_to_corners(np.asarray(box).reshape(-1, 4)), 0.0, 1.0),
        "class": np.argmax(np.asarray(scores).reshape(len(pc), -1), axis=1),
    }


def landmarks(points: np.ndarray, visibility: np.ndarray | None = None, threshold: float = 0.5):
    """(N, 2K) or (N, K, 2) point outputs -> (N, K, 2) (x, y) fractions and visible flags."""
    points = np.asarray(points, dtype=np.float32)
    points = points.reshape(len(points), -1, 2)
    if visibility is None:
        visible = np.ones(points.shape[:2], dtype=bool)
    else:
        visible = np.asarray(visibility, dtype=np.float32).reshape(points.shape[:2]) >= threshold
    return {"points": points, "visible": visible}


def normalised_point_error(
    predicted: np.ndarray, truth: np.ndarray, size: np.ndarray, visible: np.ndarray | None = None
) -> np.ndarray:
    """Per-sample mean Euclidean point error divided by the object's size (NME).

    ``predicted`` and ``truth`` are (N, K, 2) in the same units as ``size`` (N,); only
    visible points count. Samples without a visible point give NaN.
    """
    predicted = np.asarray(predicted, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.float32)
    dist = np.linalg.norm(predicted - truth, axis=-1)
    mask = np.ones(dist.shape, bool) if visible is None else np.asarray(visible, bool)
    counts = mask.sum(axis=1)
    mean = np.where(counts > 0, (dist * mask).sum(axis=1) / np.maximum(counts, 1), np.nan)
    return (mean / np.asarray(size, dtype=np.float32)).astype(np.float32)


DECODERS = {
    "classification": classification,
    "localisation": localisation,
    "landmarks": landmarks,
}
# Each task's model outputs, by name (the Keras output names, kept in the .tflite's
# signature); mobilecv.tasks uses these names too.
TASK_OUTPUTS = {
    "classification": ("scores",),
    "localisation": ("presence", "box", "scores"),
    "landmarks": ("points",),
}


def decode(task: str, outputs: dict[str, np.ndarray], **options) -> dict[str, np.ndarray]:
    """Decode a model's named outputs for ``task`` (the name stored in its metadata). A
    task with one output takes a model's single output whatever its name (a classifier's
    is "predictions")."""
    if task not in DECODERS:
        raise ValueError(
            f"no numpy post-processing for task {task!r}; known: {', '.join(DECODERS)}"
        )
    names = TASK_OUTPUTS[task]
    if len(names) == 1 and len(outputs) == 1:
        values = {names[0]: next(iter(outputs.values()))}
    else:
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ValueError(
                f"{task} needs outputs {', '.join(names)}; the model has {', '.join(outputs)}"
            )
        values = {n: outputs[n] for n in names}
    return DECODERS[task](**values, **options)

"""Centroids: a detector for microcontrollers (Edge Impulse's FOMO idea).

YOLO at 160 px does not fit a Cortex-M7. FOMO ("faster objects, more objects") keeps only
what a counter or a tracker needs, where each object is: a backbone cut early (MobileNetV2
at stride 8: 96 x 96 in, 12 x 12 out), a 1x1 conv, and per cell a softmax over background
and the classes. An object is the cell that holds its centre; there are no boxes, no
anchors and no NMS, and the whole graph is int8 builtins that TFLite Micro runs.

- Output ``heatmap`` (N, S, S, classes + 1): channel 0 is background.
- Targets (:meth:`Centroids.keras_targets`, tf ops): the one-hot class at the cell holding
  each object's box centre, background elsewhere; two centres in one cell: the larger
  object keeps it.
- Loss: cross-entropy per cell, object cells weighted ``object_weight`` (FOMO's 100: a
  scene is ~140 background cells and a few object cells).
- Decoding (numpy, :func:`mobilecv.postprocess.centroids`, shared with the on-device
  script): cells whose class probability is >= a threshold, 4-connected cells of one class
  merged into one centroid, as FOMO does (an object often lights its neighbours).
- Metrics (:func:`centroid_scores`): centroid precision, recall and F1 (the primary figure),
  and the counting error per scene. Matching rule: predictions are taken best score first;
  each matches the nearest (to its centre) not yet matched labelled object of the same class
  whose box contains the predicted point or whose centre is within one cell of it (at most
  one cell width away in x and one cell height in y). Matches are one-to-one.

Labels are the detection task's (``box`` (N, 6, 4) corner fractions zero-padded, ``class``
(N, 6) with -1 padding), from the same scene loading, at 96 px.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv.errors import InputError
from mobilecv.registry import register_model
from mobilecv.tasks.base import Task, build_on_backbone, get_task, register_task, scene_config
from mobilecv.tasks.detection import MAX_OBJECTS, NO_CLASS

STRIDES = (4, 8, 16)  # the backbone maps the grid may come from
BACKGROUND = 0  # heatmap channel of "no object centre here"


def default_scenes():
    """1 to 6 objects a scene over Fashion-MNIST's 10 classes at FOMO's 96 px, with the
    detection task's object scale (15-40 % of the scene: 2 to 5 cells of a 12 x 12 grid)."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(size=96, objects=(1, MAX_OBJECTS), scale=(0.15, 0.4))


# -------------------------------------------------------------------------- loss


def centroid_loss(object_weight: float):
    """Cross-entropy per cell of one-hot targets, cells holding an object centre weighted
    ``object_weight`` and background cells 1."""
    from mobilecv._tf import tf

    def loss(y_true, y_pred):
        T = tf()
        p = T.clip_by_value(y_pred, 1e-7, 1.0)
        cross_entropy = -T.reduce_sum(y_true * T.math.log(p), axis=-1)
        is_object = 1.0 - y_true[..., BACKGROUND]
        return cross_entropy * (1.0 + (object_weight - 1.0) * is_object)

    return loss


# -------------------------------------------------------------------------- head


def centroid_head(K, x, *, classes: int, hidden: int) -> dict:
    """FOMO's head: a 1x1 conv of ``hidden`` channels (none when 0), then per cell a 1x1
    conv to background + classes logits and their softmax, named "heatmap"."""
    if hidden:
        x = K.layers.Conv2D(hidden, 1, activation="relu", name="centroid_hidden")(x)
    x = K.layers.Conv2D(classes + 1, 1, name="centroid_logits")(x)
    return {"heatmap": K.layers.Softmax(axis=-1, name="heatmap")(x)}


# -------------------------------------------------------------------------- task


@register_task
class Centroids(Task):
    name = "centroids"
    outputs = postprocess.TASK_OUTPUTS["centroids"]
    primary_metric = "centroid_f1"
    agreement_metric = "centroid_agreement_f1"
    object_weight = 100.0  # FOMO's weight of object cells against background cells
    threshold = 0.5  # class probability a cell needs to count as an object centre

    def __init__(self, grid: tuple[int, int, int] | None = None):
        self.grid = grid  # (rows, cols, classes + 1) of the model's heatmap

    def bind(self, options, model=None):
        if model is None:
            return self
        return Centroids(tuple(int(d) for d in model.outputs[0].shape[1:4]))

    def head(self, K, features, *, classes: int, stride: int = 8, hidden: int = 32):
        if int(stride) not in STRIDES:
            raise InputError(f"stride must be one of {', '.join(map(str, STRIDES))}; got {stride}")
        if int(hidden) < 0:
            raise InputError(f"hidden must be >= 0 (0: no hidden 1x1 conv); got {hidden}")
        name = f"stride{int(stride)}"
        if name not in features:
            raise InputError(f"no feature map at stride {stride}; the backbone has {sorted(features)}")  # fmt: skip
        return centroid_head(K, features[name], classes=classes, hidden=int(hidden))

    def compile(self, model, optimizer, object_weight: float | None = None):
        weight = self.object_weight if object_weight is None else float(object_weight)
        if weight <= 0:
            raise InputError(f"object_weight must be positive; got {object_weight}")
        model.compile(optimizer=optimizer, loss={"heatmap": centroid_loss(weight)})

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        if source != "scenes":
            raise InputError(f"centroids trains on generated scenes (--data scenes), not {source!r}")  # fmt: skip
        config = scene_config(default_scenes(), scenes)
        # The detection task's loading and labels, with this task's scene defaults.
        detection = get_task("detection")
        return detection.load(source, split, limit=limit, scenes=dataclasses.asdict(config))

    def keras_targets(self, y):
        """One-hot heatmap targets of one image's labels (tf ops, inside tf.data)."""
        if self.grid is None:
            raise InputError("centroid targets need the task bound to a Keras model")
        return {"heatmap": heatmap_targets(y["box"], y["class"], self.grid)}, None

    def decode(self, outputs, **options):
        options.setdefault("threshold", self.threshold)
        return postprocess.centroids(outputs["heatmap"], **options)

    def score(self, outputs, y) -> dict[str, float]:
        heatmap = np.asarray(outputs["heatmap"])
        return centroid_scores(self.decode(outputs), y, heatmap.shape[1:3])

    def agreement(self, reference, converted) -> dict[str, float]:
        grid = np.asarray(reference["heatmap"]).shape[1:3]
        a, b = self.decode(reference), self.decode(converted)
        return {"centroid_agreement_f1": match_points(a, b, grid)}

    def paint(self, ax, decoded, y, i: int, size: float) -> None:
        present = np.asarray(y["class"][i]) != NO_CLASS
        boxes = np.asarray(y["box"][i])[present]
        truth = (boxes[:, :2] + boxes[:, 2:]) / 2 * size
        ax.scatter(truth[:, 0], truth[:, 1], c="lime", marker="o", s=22)
        k = int(decoded["count"][i])
        found = np.asarray(decoded["points"][i, :k]) * size
        ax.scatter(found[:, 0], found[:, 1], c="red", marker="x", s=18)
        for (x, cy), label in zip(found, decoded["classes"][i, :k], strict=True):
            ax.text(x + 2, cy, str(int(label)), color="red", fontsize=5, va="center")


def heatmap_targets(box, label, grid: tuple[int, int, int]):
    """(M, 4) corner fractions and (M,) classes (-1: padding) -> (rows, cols, depth) one-hot
    targets: class + 1 at the cell of each box centre, background (0) elsewhere. Where
    two centres share a cell the larger box keeps it. tf ops (a tf.data map)."""
    from mobilecv._tf import tf

    T = tf()
    rows, cols, depth = grid
    box = T.reshape(T.cast(box, T.float32), (-1, 4))
    label = T.reshape(T.cast(label, T.int32), (-1,))
    centre = (box[:, :2] + box[:, 2:]) / 2
    col = T.clip_by_value(T.cast(T.floor(centre[:, 0] * cols), T.int32), 0, cols - 1)
    row = T.clip_by_value(T.cast(T.floor(centre[:, 1] * rows), T.int32), 0, rows - 1)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    present = (label != NO_CLASS) & (area > 0)
    # (cells, objects): which objects claim each cell; the largest claimant wins.
    claims = T.equal((row * cols + col)[None, :], T.range(rows * cols)[:, None]) & present[None]
    owner = T.argmax(T.where(claims, area[None, :], -1.0), axis=1, output_type=T.int32)
    cell_class = T.where(T.reduce_any(claims, axis=1), T.gather(label, owner) + 1, BACKGROUND)
    return T.one_hot(T.reshape(cell_class, (rows, cols)), depth)


# ----------------------------------------------------------------------- metrics


def _match_count(points, classes, scores, centres, truth_classes, boxes, cell) -> int:
    """One image: how many predicted points (best score first) match a distinct labelled
    point of their class, each the nearest eligible one; eligible: within one ``cell``
    (x, y) of it, or inside its box (``boxes`` None: distance only)."""
    taken = np.zeros(len(centres), bool)
    matched = 0
    for j in np.argsort(-np.asarray(scores), kind="stable"):
        near = (np.abs(centres - points[j]) <= cell + 1e-6).all(axis=1)
        if boxes is not None:
            inside = (boxes[:, :2] <= points[j]).all(axis=1) & (points[j] <= boxes[:, 2:]).all(1)
            near |= inside
        eligible = np.flatnonzero(near & ~taken & (truth_classes == classes[j]))
        if eligible.size:
            distance = np.linalg.norm(centres[eligible] - points[j], axis=1)
            taken[eligible[np.argmin(distance)]] = True
            matched += 1
    return matched


def _cell(grid) -> np.ndarray:
    rows, cols = (int(g) for g in grid)
    return np.array([1.0 / cols, 1.0 / rows], np.float32)


def centroid_scores(found: Mapping[str, np.ndarray], y, grid) -> dict[str, float]:
    """Centroid precision, recall and F1 of decoded points against padded box labels, by the
    module's matching rule, over all images; the counting error: mean |predicted count -
    labelled count| per image, and that sum over the labelled objects (count_error_rel)."""
    boxes, labels = np.asarray(y["box"], np.float32), np.asarray(y["class"])
    cell = _cell(grid)
    matched = predicted = labelled = 0
    errors = []
    for i in range(len(labels)):
        present = labels[i] != NO_CLASS
        truth_boxes = boxes[i][present]
        centres = (truth_boxes[:, :2] + truth_boxes[:, 2:]) / 2
        k = int(found["count"][i])
        matched += _match_count(
            found["points"][i, :k], found["classes"][i, :k], found["scores"][i, :k],
            centres, labels[i][present], truth_boxes, cell,
        )  # fmt: skip
        predicted, labelled = predicted + k, labelled + int(present.sum())
        errors.append(abs(k - int(present.sum())))
    precision = matched / predicted if predicted else float(labelled == 0)
    recall = matched / labelled if labelled else 1.0
    f1 = 2 * matched / (predicted + labelled) if predicted + labelled else 1.0
    return {
        "centroid_precision": float(precision),
        "centroid_recall": float(recall),
        "centroid_f1": float(f1),
        "count_error": float(np.mean(errors)) if errors else 0.0,
        "count_error_rel": float(np.sum(errors) / labelled) if labelled else 0.0,
        "objects": labelled,
    }


def match_points(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], grid) -> float:
    """F1 of decoded points ``b`` against ``a`` (a converted model's against the float
    model's): same class, within one cell, one-to-one, ``b``'s best scores first."""
    cell = _cell(grid)
    matched = total = 0
    for i in range(len(a["count"])):
        na, nb = int(a["count"][i]), int(b["count"][i])
        total += na + nb
        matched += _match_count(
            b["points"][i, :nb], b["classes"][i, :nb], b["scores"][i, :nb],
            a["points"][i, :na], a["classes"][i, :na], None, cell,
        )  # fmt: skip
    return 2 * matched / total if total else 1.0


@register_model(
    "centroid_grid",
    family="centroid_grid",
    default_resolution=96,
    task="centroids",
    unsupported=("include_top",),
)
def centroid_grid(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
    stride: int = 8,
    hidden: int = 32,
):
    """FOMO-style centroid grid on any registered backbone: the feature map at ``stride``
    (4, 8 or 16: the grid is resolution / stride cells a side), a 1x1 conv of ``hidden``
    channels (0: none) and a per-cell softmax over background and the classes."""
    return build_on_backbone("centroids", "centroid_grid", **locals())

"""Object detection, YOLO as the course teaches it (Redmon et al. 2016; anchors: YOLOv2).

The image is cut into an S x S grid (a backbone feature map of stride 8, 16 or 32) with B
anchor boxes a cell. Each anchor predicts three things, each its own output tensor so
that int8 gives each its own scale (one tensor of boxes and scores rounds every score to
zero: ultralytics #1683):

- ``objectness`` (N, S, S, B): sigmoid, is an object centred here, of this anchor's shape;
- ``box`` (N, S, S, B, 4): sigmoid (sx, sy, sw, sh); the centre is (col + sx, row + sy) /
  S and the size anchor * (2 s)^2 (YOLOv5's bounded form: the whole tensor lies in [0, 1]
  and a box can be up to four anchors wide);
- ``scores`` (N, S, S, B, C): softmax class probabilities.

Targets (:func:`encode`): each object goes to the cell holding its centre and to the anchor
whose shape has the best IoU with it, as in the course. The loss is the course's sum of
objectness, box and class terms: binary cross-entropy on objectness (weight
``noobj_weight`` where no object is), squared error on the box and cross-entropy on the
class where an object is. Post-processing (decode, score threshold, per-class NMS) is numpy
(mobilecv.postprocess), shared with the on-device script and TFLite Micro; mAP is
pycocotools' COCO evaluation.

Labels (``ArrayData.y``): ``box`` (N, M, 4) corners x0, y0, x1, y1 as fractions of the
image, all-zero rows padding; ``class`` (N, M) int, -1 on padding rows.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv.anchors import shape_iou
from mobilecv.errors import InputError
from mobilecv.registry import register_model
from mobilecv.tasks.base import (
    SCENE_COUNTS,
    Task,
    build_on_backbone,
    draw_box,
    register_task,
    scene_config,
)

MAX_OBJECTS = 6  # label rows a scene: the scenes' most objects
NO_CLASS = -1
# k-means (1 - IoU) anchors of the default training scenes (the first 1,000), as
# fractions of the image, by count: `mobilecv anchors scenes -k K --limit 1000` prints
# them, and tests/test_detection.py checks that this table is what it gives. Mean best IoU
# with the boxes: 0.552, 0.650, 0.695, 0.729, 0.743.
DEFAULT_ANCHORS = {
    1: ((0.203125, 0.234375),),
    2: ((0.15625, 0.179688), (0.265625, 0.304688)),
    3: ((0.132812, 0.210938), (0.226562, 0.132812), (0.257812, 0.3125)),
    4: ((0.109375, 0.1875), (0.226562, 0.132812), (0.171875, 0.257812), (0.28125, 0.320312)),
    5: ((0.09375, 0.1875), (0.148438, 0.195312), (0.234375, 0.125), (0.203125, 0.304688),
        (0.304688, 0.328125)),
}  # fmt: skip
DEFAULT_ANCHOR_SCENES = 1000
MAP_SCORE_THRESHOLD = 0.01  # detections kept for mAP: COCO's curve needs the low scores
MAP_MAX_DETECTIONS = 100  # COCO's maxDets


def default_scenes():
    """1 to 6 objects a scene over Fashion-MNIST's 10 classes, 128 px."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(size=128, objects=(1, MAX_OBJECTS), scale=(0.15, 0.4))


# ----------------------------------------------------------------------- targets


def anchors_array(anchors: int | Sequence) -> np.ndarray:
    """(B, 2) anchor widths and heights from a count (the default table) or pairs."""
    if isinstance(anchors, int | np.integer):
        if int(anchors) not in DEFAULT_ANCHORS:
            raise InputError(
                f"no default anchors for {anchors}; give {sorted(DEFAULT_ANCHORS)} or pairs "
                "(w, h) from `mobilecv anchors`"
            )
        anchors = DEFAULT_ANCHORS[int(anchors)]
    array = np.asarray(anchors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 2 or not len(array) or (array <= 0).any():
        raise InputError(f"anchors must be positive (w, h) pairs; got {anchors!r}")
    return array


def encode(
    boxes: np.ndarray, classes: np.ndarray, anchors: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's objects -> YOLO targets on a (rows, cols) grid with B anchors.

    Returns objectness (rows, cols, B) 0/1; box (rows, cols, B, 4) the sigmoid targets
    (sx, sy, sw, sh), NaN where no object is; class (rows, cols, B) int, -1 where no object
    is. Padding rows (zero area or class -1) are skipped. When two objects claim the same
    cell and anchor, the larger one keeps it (the course's one object per cell and anchor).
    """
    rows, cols = grid
    anchors = np.asarray(anchors, dtype=np.float32)
    objectness = np.zeros((rows, cols, len(anchors)), np.float32)
    target = np.full((rows, cols, len(anchors), 4), np.nan, np.float32)
    label = np.full((rows, cols, len(anchors)), NO_CLASS, np.int64)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh > 0).all(1) & (np.asarray(classes).reshape(-1) != NO_CLASS)
    boxes, wh, classes = boxes[keep], wh[keep], np.asarray(classes).reshape(-1)[keep]
    best = np.argmax(shape_iou(wh, anchors), 1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    for i in np.argsort(wh.prod(1)):  # ascending: a larger object overwrites a smaller one
        x, y = centre[i, 0] * cols, centre[i, 1] * rows
        col, row = min(int(x), cols - 1), min(int(y), rows - 1)
        size = np.sqrt(wh[i] / anchors[best[i]]) / 2  # inverse of anchor * (2 s)^2
        objectness[row, col, best[i]] = 1.0
        target[row, col, best[i]] = (x - col, y - row, *np.clip(size, 0.0, 1.0))
        label[row, col, best[i]] = classes[i]
    return objectness, target, label


def decode_targets(
    objectness: np.ndarray, target: np.ndarray, label: np.ndarray, anchors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode`: (boxes (K, 4) corners, classes (K,)) of the objects."""
    sigmoid = np.nan_to_num(target)
    boxes, _, _ = postprocess.yolo_boxes(
        objectness[None], sigmoid[None], np.zeros((1, *label.shape, 1), np.float32), anchors
    )
    where = objectness.reshape(-1) > 0.5
    return boxes[0][where], label.reshape(-1)[where]


# -------------------------------------------------------------------------- loss


def objectness_loss(noobj_weight: float):
    """Binary cross-entropy per anchor, weighted ``noobj_weight`` where no object is."""
    from mobilecv._tf import tf

    def loss(y_true, y_pred):
        T = tf()
        p = T.clip_by_value(y_pred, 1e-7, 1.0 - 1e-7)
        bce = -(y_true * T.math.log(p) + (1.0 - y_true) * T.math.log(1.0 - p))
        return bce * (y_true + noobj_weight * (1.0 - y_true))

    return loss


def box_loss(y_true, y_pred):
    """Squared error of (sx, sy, sw, sh) summed over the four, where an object is (the
    target is NaN elsewhere)."""
    from mobilecv._tf import tf

    T = tf()
    present = T.logical_not(T.math.is_nan(y_true))
    diff = T.where(present, y_pred - T.where(present, y_true, 0.0), 0.0)
    return T.reduce_sum(T.square(diff), axis=-1)


def class_loss(y_true, y_pred):
    """Cross-entropy of the class where an object is (the target is -1 elsewhere)."""
    from mobilecv._tf import tf

    T = tf()
    if y_pred.shape.rank == y_true.shape.rank:  # one class: tf_keras squeezed its axis away
        y_pred = T.expand_dims(y_pred, -1)
    label = T.cast(y_true, T.int32)
    present = T.cast(label >= 0, T.float32)
    p = T.clip_by_value(y_pred, 1e-7, 1.0)
    picked = T.reduce_sum(p * T.one_hot(T.maximum(label, 0), T.shape(y_pred)[-1]), axis=-1)
    return -T.math.log(picked) * present


# -------------------------------------------------------------------------- head


def yolo_head(K, x, *, anchors: int, classes: int, hidden: int, prefix: str = "yolo") -> dict:
    """Three named outputs on one feature map: a 3x3 conv, then a 1x1 conv per output."""
    rows, cols = int(x.shape[1]), int(x.shape[2])
    x = K.layers.Conv2D(hidden, 3, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = K.layers.BatchNormalization(name=f"{prefix}_bn")(x)
    x = K.layers.ReLU(6.0, name=f"{prefix}_relu")(x)

    def part(name: str, per_anchor: int, activation: str):
        y = K.layers.Conv2D(anchors * per_anchor, 1, activation=activation, name=f"{prefix}_{name}")(x)  # fmt: skip
        # objectness has no trailing axis; box and scores keep theirs (one class: (..., 1))
        shape = (rows, cols, anchors) + ((per_anchor,) if name != "objectness" else ())
        return K.layers.Reshape(shape, name=name if name != "scores" else f"{prefix}_grid")(y)

    logits = part("scores", classes, "linear")
    return {
        "objectness": part("objectness", 1, "sigmoid"),
        "box": part("box", 4, "sigmoid"),
        "scores": K.layers.Softmax(axis=-1, name="scores")(logits),
    }


def merged_features(K, features: Mapping, stride: int, combine: bool):
    """The feature map at ``stride``; with ``combine``, deeper maps are upsampled onto it
    and concatenated (a one-step FPN: context from the coarse map, place from the fine)."""
    name = f"stride{stride}"
    if name not in features:
        raise InputError(f"no feature map at stride {stride}; the backbone has {sorted(features)}")
    x = features[name]
    if not combine:
        return x
    deeper = [f for f in features if int(f.removeprefix("stride")) > stride]
    for other in deeper:
        factor = int(other.removeprefix("stride")) // stride
        up = K.layers.UpSampling2D(factor, name=f"yolo_up_{other}")(features[other])
        x = K.layers.Concatenate(name=f"yolo_merge_{other}")([x, up])
    return x


# -------------------------------------------------------------------------- task


@register_task
class Detection(Task):
    name = "detection"
    outputs = postprocess.TASK_OUTPUTS["detection"]
    primary_metric = "map"  # COCO mAP@[.5:.95]
    agreement_metric = "detection_f1"
    # The course's (YOLOv1) weights: lambda_coord 5, lambda_noobj 0.5.
    loss_weights = {"objectness": 1.0, "box": 5.0, "scores": 1.0}
    noobj_weight = 0.5

    def __init__(self, anchors: np.ndarray | None = None, grid: tuple[int, int] | None = None):
        self.anchors = anchors
        self.grid = grid  # (rows, cols) of the model's outputs: what targets are made on

    def options_of(self, knobs):
        return {"anchors": anchors_array(knobs.get("anchors", 3)).round(6).tolist()}

    def bind(self, options, model=None):
        if "anchors" not in options:
            return self
        grid = None if model is None else tuple(int(d) for d in model.outputs[0].shape[1:3])
        return Detection(anchors_array(options["anchors"]), grid)

    def _anchors(self) -> np.ndarray:
        if self.anchors is None:
            raise InputError("this detection model carries no anchors (ModelInfo.task_options)")
        return self.anchors

    def head(self, K, features, *, classes: int, anchors=3, stride: int = 16,
             combine: bool = False, hidden: int = 64):  # fmt: skip
        x = merged_features(K, features, int(stride), bool(combine))
        return yolo_head(K, x, anchors=len(anchors_array(anchors)), classes=classes, hidden=hidden)

    def compile(self, model, optimizer, loss_weights: Mapping[str, float] | None = None,
                noobj_weight: float | None = None):  # fmt: skip
        noobj = self.noobj_weight if noobj_weight is None else float(noobj_weight)
        model.compile(
            optimizer=optimizer,
            loss={"objectness": objectness_loss(noobj), "box": box_loss, "scores": class_loss},
            loss_weights=dict(loss_weights or self.loss_weights),
        )

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        from mobilecv.data.datasets import ArrayData, Split
        from mobilecv.data.scenes import generate

        if source != "scenes":
            raise InputError(
                f"detection trains on generated scenes (--data scenes), not {source!r}"
            )
        config = scene_config(default_scenes(), scenes)
        count = SCENE_COUNTS[Split(split).value] if limit is None else int(limit)
        if count < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        generated = generate(split, count, config)
        return ArrayData(
            x=generated.images,
            y=padded_labels(generated, max(MAX_OBJECTS, config.objects[1])),
            classes=len(config.class_names),
            name="scenes",
            provenance=generated.provenance,
        )

    def keras_targets(self, y):
        """Grid targets of one image, by :func:`encode` (numpy, inside tf.data)."""
        from mobilecv._tf import tf

        T, anchors, grid = tf(), self._anchors(), self.grid
        if grid is None:
            raise InputError("detection targets need the task bound to a Keras model")

        def targets(box, label):
            return encode(box, label, anchors, grid)

        objectness, box, label = T.numpy_function(
            targets, [y["box"], y["class"]], [T.float32, T.float32, T.int64], stateful=False
        )
        b = len(anchors)
        objectness.set_shape((*grid, b))
        box.set_shape((*grid, b, 4))
        label.set_shape((*grid, b))
        return {"objectness": objectness, "box": box, "scores": label}, None

    def decode(self, outputs, **options):
        return postprocess.detection(
            outputs["objectness"], outputs["box"], outputs["scores"], anchors=self._anchors(),
            **options,
        )  # fmt: skip

    def score(self, outputs, y) -> dict[str, float]:
        # Multi-label candidates, as ultralytics' validator scores mAP: a box whose right
        # class came second still counts, ranked by its lower score.
        found = self.decode(outputs, score_threshold=MAP_SCORE_THRESHOLD,
                            max_detections=MAP_MAX_DETECTIONS, multi_label=True)  # fmt: skip
        classes = int(np.asarray(outputs["scores"]).shape[-1])
        return coco_map(found, y, classes)

    def agreement(self, reference, converted) -> dict[str, float]:
        a, b = self.decode(reference), self.decode(converted)
        return match_detections(a, b)

    def paint(self, ax, decoded, y, i: int, size: float) -> None:
        for corners, label in zip(y["box"][i], y["class"][i], strict=True):
            if label != NO_CLASS:
                draw_box(ax, corners, size, "lime", "-", 1.2)
        for k in range(int(decoded["count"][i])):
            draw_box(ax, decoded["boxes"][i, k], size, "red", "--", 1.2)
            x0, y0 = decoded["boxes"][i, k, :2] * size
            ax.text(x0, y0, f"{decoded['classes'][i, k]}:{decoded['scores'][i, k]:.2f}",
                    color="red", fontsize=5, va="bottom")  # fmt: skip


def padded_labels(scene_set, rows: int) -> dict[str, np.ndarray]:
    """(N, rows, 4) box fractions and (N, rows) classes, padded with zeros and -1."""
    n = len(scene_set)
    boxes = np.zeros((n, rows, 4), np.float32)
    classes = np.full((n, rows), NO_CLASS, np.int64)
    slot = np.arange(len(scene_set.classes)) - np.repeat(scene_set.offsets[:-1], scene_set.counts)
    scene = scene_set.scene_of
    boxes[scene, slot] = scene_set.boxes / scene_set.config.size
    classes[scene, slot] = scene_set.classes
    return {"box": boxes, "class": classes}


# ----------------------------------------------------------------------- metrics


def _coco_ground_truth(y) -> dict:
    """COCO ground truth of padded labels, on a nominal 1000-pixel canvas (mAP does not
    depend on the unit; the area ranges are not reported)."""
    annotations = []
    boxes, classes = np.asarray(y["box"]) * 1000.0, np.asarray(y["class"])
    for i, j in zip(*np.nonzero(classes != NO_CLASS), strict=True):
        x0, y0, x1, y1 = boxes[i, j].tolist()
        annotations.append({
            "id": len(annotations) + 1, "image_id": int(i), "category_id": int(classes[i, j]),
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
        })  # fmt: skip
    return {"images": [{"id": i} for i in range(len(classes))], "annotations": annotations}


def coco_map(found: Mapping[str, np.ndarray], y, classes: int) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@0.5 and per-class AP@[.5:.95], by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = _coco_ground_truth(y)
    truth["categories"] = [{"id": c} for c in range(classes)]
    results = []
    for i in range(len(found["count"])):
        for k in range(int(found["count"][i])):
            x0, y0, x1, y1 = (found["boxes"][i, k] * 1000.0).tolist()
            results.append({"image_id": i, "category_id": int(found["classes"][i, k]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(found["scores"][i, k])})  # fmt: skip
    if not truth["annotations"]:
        raise InputError("no labelled objects to score detections against")
    if not results:
        return {"map": 0.0, "map50": 0.0, "objects": len(truth["annotations"])}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class); all areas
    per_class = {
        f"ap_class{c}": float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
        for c, p in enumerate(np.moveaxis(precision, 2, 0))
    }
    return {"map": float(evaluation.stats[0]), "map50": float(evaluation.stats[1]),
            "objects": len(truth["annotations"]), **per_class}  # fmt: skip


def match_detections(a: Mapping, b: Mapping, threshold: float = 0.5) -> dict[str, float]:
    """How well detections ``b`` reproduce ``a``: F1 of same-class pairs at IoU >=
    ``threshold`` (greedy by IoU), and the mean IoU of the matched pairs."""
    matched, ious, total_a, total_b = 0, [], 0, 0
    for i in range(len(a["count"])):
        na, nb = int(a["count"][i]), int(b["count"][i])
        total_a, total_b = total_a + na, total_b + nb
        if not na or not nb:
            continue
        iou = postprocess.pairwise_iou(a["boxes"][i, :na], b["boxes"][i, :nb])
        iou[a["classes"][i, :na, None] != b["classes"][i, None, :nb]] = 0.0
        while iou.size and iou.max() >= threshold:
            r, c = np.unravel_index(np.argmax(iou), iou.shape)
            ious.append(float(iou[r, c]))
            matched += 1
            iou[r, :], iou[:, c] = 0.0, 0.0
    f1 = 2 * matched / (total_a + total_b) if total_a + total_b else 1.0
    return {"detection_f1": f1, "matched_iou": float(np.mean(ious)) if ious else float("nan")}


@register_model(
    "yolo", family="yolo", default_resolution=128, task="detection", unsupported=("include_top",)
)
def yolo(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
    anchors: int | Sequence = 3,
    stride: int = 16,
    combine: bool = False,
    hidden: int = 64,
):
    """YOLO (Redmon et al. 2016, anchors of YOLOv2) on any registered backbone: an S x S
    grid from the feature map at ``stride`` (``combine`` merges the deeper maps into it),
    ``anchors`` boxes a cell (a count from the default table, or (w, h) pairs)."""
    return build_on_backbone("detection", "yolo", **locals())

"""The numpy half of the two-stage detector: anchors, box deltas, target assignment and
sampling, proposals, ROI align and the final decode. No TensorFlow here: the same code runs
between the two Keras models and between the two .tflite models.

Boxes are (x0, y0, x1, y1) corners as fractions of the image (mobilecv.postprocess).
"""

from __future__ import annotations

import numpy as np

from mobilecv import postprocess
from mobilecv.tasks.detection import NO_CLASS

# Faster R-CNN's delta weights (Detectron's RPN (1, 1, 1, 1) and box head (10, 10, 5, 5)):
# they bring the head's targets to about unit variance.
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Detectron's BBOX_XFORM_CLIP, log(1000 / 16): exp() of a wild dw or dh stays finite.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))
BACKGROUND = 0  # the head's class 0; object class c is head class c + 1


# ----------------------------------------------------------------------- anchors


def anchor_grid(rows: int, cols: int, shapes: np.ndarray) -> np.ndarray:
    """(rows * cols * B, 4) corner anchors: each (w, h) shape centred on every cell, in
    row, column, anchor order (the order of the RPN's (rows, cols, B) outputs)."""
    shapes = np.asarray(shapes, np.float32).reshape(-1, 2)
    cy, cx = np.meshgrid(
        (np.arange(rows, dtype=np.float32) + 0.5) / rows,
        (np.arange(cols, dtype=np.float32) + 0.5) / cols,
        indexing="ij",
    )
    centre = np.stack([cx, cy], -1)[:, :, None, :]  # (rows, cols, 1, 2)
    half = shapes[None, None] / 2
    return np.concatenate([centre - half, centre + half], -1).reshape(-1, 4)


# ------------------------------------------------------------------------ deltas


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    boxes = np.asarray(boxes, np.float32)
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, w, h


def encode_deltas(boxes: np.ndarray, reference: np.ndarray, weights=RPN_WEIGHTS) -> np.ndarray:
    """Faster R-CNN's (dx, dy, dw, dh) of ``boxes`` relative to ``reference`` boxes:
    (gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah), times ``weights``."""
    gx, gy, gw, gh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(reference)
    aw, ah = np.maximum(aw, 1e-6), np.maximum(ah, 1e-6)
    wx, wy, ww, wh = weights
    deltas = [
        wx * (gx - ax) / aw,
        wy * (gy - ay) / ah,
        ww * np.log(np.maximum(gw, 1e-6) / aw),
        wh * np.log(np.maximum(gh, 1e-6) / ah),
    ]
    return np.stack(deltas, -1).astype(np.float32)


def decode_deltas(deltas: np.ndarray, reference: np.ndarray, weights=RPN_WEIGHTS) -> np.ndarray:
    """The inverse of :func:`encode_deltas`: corner boxes (not clipped)."""
    deltas = np.asarray(deltas, np.float32)
    ax, ay, aw, ah = _centre_size(reference)
    wx, wy, ww, wh = weights
    x = ax + deltas[..., 0] / wx * aw
    y = ay + deltas[..., 1] / wy * ah
    w = aw * np.exp(np.minimum(deltas[..., 2] / ww, MAX_LOG_SCALE))
    h = ah * np.exp(np.minimum(deltas[..., 3] / wh, MAX_LOG_SCALE))
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1).astype(np.float32)


# ------------------------------------------------------------------------ labels


def objects(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's padded labels without the padding rows: (boxes (G, 4), classes (G,))."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    keep = (classes != NO_CLASS) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], classes[keep].astype(np.int64)


def match_anchors(
    anchors: np.ndarray, truth: np.ndarray, positive: float = 0.7, negative: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """The RPN's anchor labels, as in the paper: 1 where an anchor's best IoU with a
    ground-truth box is >= ``positive``, and for each box the anchor(s) of its highest IoU
    (so every object has one); 0 where the best IoU is < ``negative``; -1 (ignored)
    between. Returns (labels (A,), index of each anchor's best box (A,), 0 without boxes)."""
    labels = np.zeros(len(anchors), np.int64)
    if not len(truth):
        return labels, np.zeros(len(anchors), np.int64)
    overlap = postprocess.pairwise_iou(anchors, truth)  # (A, G)
    best = overlap.argmax(1)
    best_iou = overlap.max(1)
    labels[best_iou >= negative] = -1
    labels[best_iou >= positive] = 1
    column_best = overlap.max(0)
    for g in np.flatnonzero(column_best > 0):
        winners = np.flatnonzero(overlap[:, g] == column_best[g])
        labels[winners], best[winners] = 1, g
    return labels, best


def subsample(labels: np.ndarray, total: int, fraction: float, rng: np.random.Generator):
    """At most ``total`` labelled entries, at most ``fraction`` of them positive (> 0); the
    rest of the positives and negatives (0) become -1 (ignored). A copy."""
    labels = labels.copy()
    positives = np.flatnonzero(labels > 0)
    keep_pos = min(len(positives), int(total * fraction))
    labels[rng.permutation(positives)[keep_pos:]] = -1
    negatives = np.flatnonzero(labels == 0)
    labels[rng.permutation(negatives)[total - keep_pos :]] = -1
    return labels


def rpn_targets(
    anchors: np.ndarray, truth: np.ndarray, rng: np.random.Generator, sample: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """One image's RPN targets: labels (A,) 1/0/-1 after sampling (half positives at
    most) and delta targets (A, 4) against each anchor's best box (zeros without boxes)."""
    labels, best = match_anchors(anchors, truth)
    labels = subsample(labels, sample, 0.5, rng)
    deltas = np.zeros((len(anchors), 4), np.float32)
    if len(truth):
        deltas = encode_deltas(truth[best], anchors, RPN_WEIGHTS)
    return labels, deltas


def jitter(boxes: np.ndarray, rng: np.random.Generator, amount: float = 0.15) -> np.ndarray:
    """Ground-truth boxes moved and resized by up to ``amount`` of their size: extra
    foreground ROIs for the head while the RPN's proposals are still poor."""
    x, y, w, h = _centre_size(boxes)
    shift = rng.uniform(-amount, amount, (len(boxes), 4)).astype(np.float32)
    x, y = x + shift[:, 0] * w, y + shift[:, 1] * h
    w, h = w * np.exp(shift[:, 2]), h * np.exp(shift[:, 3])
    return np.clip(np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1), 0.0, 1.0)


def roi_targets(
    rois: np.ndarray,
    truth: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    sample: int,
    foreground: float = 0.5,
    fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's targets for one image, as in Fast R-CNN: an ROI whose best IoU with a
    box is >= ``foreground`` takes that box's class (head class c + 1), others are
    background; ``sample`` ROIs with at most ``fraction`` foreground (drawn with
    replacement when there are fewer ROIs). Returns (rois (S, 4), head classes (S,),
    delta targets (S, 4), zero for background)."""
    if len(truth):
        overlap = postprocess.pairwise_iou(rois, truth)
        best, best_iou = overlap.argmax(1), overlap.max(1)
        label = np.where(best_iou >= foreground, classes[best] + 1, BACKGROUND)
    else:
        best, label = np.zeros(len(rois), np.int64), np.zeros(len(rois), np.int64)
    fg, bg = np.flatnonzero(label > 0), np.flatnonzero(label == 0)
    n_fg = min(len(fg), int(round(sample * fraction)))
    chosen = list(rng.permutation(fg)[:n_fg])
    if len(bg):
        chosen += list(rng.choice(bg, sample - n_fg, replace=len(bg) < sample - n_fg))
    else:
        chosen += list(rng.choice(fg, sample - n_fg))
    chosen = np.asarray(chosen, np.int64)
    deltas = np.zeros((sample, 4), np.float32)
    if len(truth):
        deltas = encode_deltas(truth[best[chosen]], rois[chosen], HEAD_WEIGHTS)
    deltas[label[chosen] == BACKGROUND] = 0.0
    return rois[chosen], label[chosen], deltas


# --------------------------------------------------------------------- proposals


def proposals(
    objectness: np.ndarray,
    deltas: np.ndarray,
    anchors: np.ndarray,
    count: int,
    *,
    pre_nms: int = 200,
    iou_threshold: float = 0.7,
    min_size: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """The RPN's outputs for a batch -> ``count`` proposals per image, best first.

    Per image: decode every anchor's deltas, clip to the image, drop boxes thinner than
    ``min_size``, keep the ``pre_nms`` best by objectness, NMS at ``iou_threshold`` (the
    paper's 0.7), keep ``count``. An image with fewer survivors repeats its last proposal
    (score 0) so the batch stays rectangular: (boxes (N, count, 4), scores (N, count)).
    """
    n = len(objectness)
    scores = np.asarray(objectness, np.float32).reshape(n, -1)
    boxes = np.clip(decode_deltas(np.reshape(deltas, (n, -1, 4)), anchors[None]), 0.0, 1.0)
    out_boxes = np.zeros((n, count, 4), np.float32)
    out_scores = np.zeros((n, count), np.float32)
    for i in range(n):
        wide = (boxes[i, :, 2] - boxes[i, :, 0] > min_size) & (
            boxes[i, :, 3] - boxes[i, :, 1] > min_size
        )
        candidates = np.flatnonzero(wide)
        candidates = candidates[np.argsort(-scores[i, candidates], kind="stable")[:pre_nms]]
        if not len(candidates):  # nothing sensible: the whole image
            out_boxes[i] = (0.0, 0.0, 1.0, 1.0)
            continue
        kept = candidates[
            postprocess.nms(boxes[i, candidates], scores[i, candidates], iou_threshold, count)
        ]
        k = len(kept)
        out_boxes[i, :k], out_scores[i, :k] = boxes[i, kept], scores[i, kept]
        out_boxes[i, k:] = boxes[i, kept[-1]]
    return out_boxes, out_scores


# --------------------------------------------------------------------- ROI align


def crop_boxes(rois: np.ndarray, feature_size: tuple[int, int], pool: int) -> np.ndarray:
    """ROI corners (..., 4) -> the (y0, x0, y1, x1) boxes for which crop-and-resize samples
    a ``pool`` x ``pool`` grid at the centres of the ROI's bins (ROI align, one sample a
    bin). crop_and_resize puts normalised 0 and 1 on the first and last feature cell's
    centres and samples from edge to edge; an image fraction u sits at feature coordinate
    u * size - 0.5, and the bin centres are half a bin inside the ROI's edges."""
    rois = np.asarray(rois, np.float32)
    rows, cols = feature_size
    x0, y0, x1, y1 = (rois[..., k] for k in range(4))
    bx, by = (x1 - x0) / (2 * pool), (y1 - y0) / (2 * pool)

    def norm(u, size):
        return (u * size - 0.5) / max(size - 1, 1)

    return np.stack(
        [norm(y0 + by, rows), norm(x0 + bx, cols), norm(y1 - by, rows), norm(x1 - bx, cols)], -1
    ).astype(np.float32)


def crop_and_resize(
    image: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray, crop_size: tuple[int, int]
) -> np.ndarray:
    """tf.image.crop_and_resize (bilinear, extrapolation value 0) in numpy: image (N, H,
    W, C), boxes (K, 4) normalised (y0, x0, y1, x1), box_indices (K,) -> (K, ch, cw, C)."""
    image = np.asarray(image, np.float32)
    boxes = np.asarray(boxes, np.float32)
    _, height, width, _ = image.shape
    ch, cw = crop_size

    def points(lo, hi, size, count):  # (K, count) sample coordinates in cells
        if count > 1:
            step = (hi - lo) * (size - 1) / (count - 1)
            return lo[:, None] * (size - 1) + np.arange(count)[None] * step[:, None]
        return (0.5 * (lo + hi) * (size - 1))[:, None]

    ys = points(boxes[:, 0], boxes[:, 2], height, ch)
    xs = points(boxes[:, 1], boxes[:, 3], width, cw)
    inside = ((ys >= 0) & (ys <= height - 1))[:, :, None] & ((xs >= 0) & (xs <= width - 1))[:, None]
    y0 = np.clip(np.floor(ys), 0, height - 1).astype(np.int64)
    x0 = np.clip(np.floor(xs), 0, width - 1).astype(np.int64)
    y1, x1 = np.clip(np.ceil(ys), 0, height - 1).astype(np.int64), np.clip(np.ceil(xs), 0, width - 1).astype(np.int64)  # fmt: skip
    dy, dx = (ys - np.floor(ys))[:, :, None, None], (xs - np.floor(xs))[:, None, :, None]
    n = np.asarray(box_indices, np.int64)[:, None, None]

    def at(yy, xx):  # (K, ch, cw, C)
        return image[n, yy[:, :, None], xx[:, None, :]]

    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * dx
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * dx
    return np.where(inside[..., None], top + (bottom - top) * dy, 0.0).astype(np.float32)


def roi_align(features: np.ndarray, rois: np.ndarray, pool: int) -> np.ndarray:
    """Features (N, h, w, C) and ROIs (N, R, 4) corners -> (N * R, pool, pool, C)."""
    n, r = rois.shape[:2]
    boxes = crop_boxes(rois.reshape(-1, 4), features.shape[1:3], pool)
    return crop_and_resize(features, boxes, np.repeat(np.arange(n), r), (pool, pool))


# ------------------------------------------------------------------------ decode


def detections(
    rois: np.ndarray,
    scores: np.ndarray,
    deltas: np.ndarray,
    *,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    max_detections: int = 50,
) -> dict[str, np.ndarray]:
    """The head's outputs -> postprocess.DETECTIONS, as Faster R-CNN tests: every ROI and
    object class scoring above ``score_threshold`` is a candidate, its box the ROI refined
    by the (class-agnostic) deltas; per-class NMS; the best ``max_detections``.

    rois (N, R, 4), scores (N, R, 1 + C) softmax with background first, deltas (N, R, 4).
    """
    n, r, c = scores.shape
    boxes = np.clip(decode_deltas(deltas, rois, HEAD_WEIGHTS), 0.0, 1.0)
    slots = r * (c - 1)
    found = {
        "boxes": np.zeros((n, slots, 4), np.float32),
        "scores": np.zeros((n, slots), np.float32),
        "classes": np.full((n, slots), NO_CLASS, np.int64),
        "count": np.zeros(n, np.int64),
    }
    for i in range(n):
        roi, cls = np.nonzero(scores[i, :, 1:] > score_threshold)
        score = scores[i, roi, cls + 1]
        kept = postprocess.per_class_nms(boxes[i, roi], score, cls, iou_threshold)
        k = len(kept)
        found["boxes"][i, :k], found["scores"][i, :k] = boxes[i, roi[kept]], score[kept]
        found["classes"][i, :k], found["count"][i] = cls[kept], k
    return postprocess.keep_detections(found, score_threshold, max_detections)

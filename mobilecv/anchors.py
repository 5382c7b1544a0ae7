"""Anchor boxes by k-means on box shapes, with the distance d = 1 - IoU.

YOLOv2 (Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017, section
"Dimension Clusters") chooses its anchors ("priors") by k-means on the training boxes'
widths and heights, the boxes sharing one centre, with d(box, centroid) = 1 - IoU(box,
centroid): Euclidean distance would let large boxes weigh more than small ones, while
IoU does not depend on a box's scale. A set of anchors is judged by the mean, over the
boxes, of each box's best IoU with any anchor (the paper's "Avg IOU", Table 1).

Widths and heights are in any one unit (mobilecv uses fractions of the image). numpy only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError, MissingFile


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, K) IoU of N boxes (N, 2) with K anchors (K, 2), all (width, height) and
    centred on one point, as YOLOv2 compares them: only the shapes matter."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clean_shapes(wh) -> np.ndarray:
    """`wh` as float64 (N, 2) without its zero-area boxes (width or height <= 0)."""
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise InputError(
            f"box shapes must be an (N, 2) array of widths and heights; got {wh.shape}"
        )
    if not np.isfinite(wh).all():
        raise InputError("box shapes hold NaN or infinite values")
    return wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]


def mean_best_iou(wh, anchors) -> float:
    """The mean over the (non-empty) boxes of their best IoU with any anchor."""
    wh = clean_shapes(wh)
    if len(wh) == 0:
        raise InputError("no box with a positive width and height")
    return float(shape_iou(wh, anchors).max(axis=1).mean())


def kmeans_anchors(wh, k: int, *, seed: int = 0, iterations: int = 300) -> tuple[np.ndarray, float]:
    """(anchors (k, 2) sorted by area ascending, their mean best IoU with the boxes):
    k-means on the boxes' shapes with the distance 1 - IoU.

    Zero-area boxes are dropped first. Initialised k-means++-style with that distance;
    deterministic for a seed. Stops when no box changes cluster (or after `iterations`)."""
    wh = clean_shapes(wh)
    if k < 1:
        raise InputError(f"the number of anchors must be >= 1, got {k}")
    distinct = len(np.unique(wh, axis=0))
    if distinct < k:
        raise InputError(f"{k} anchors need at least {k} distinct box shapes; got {distinct}")
    rng = np.random.default_rng(seed)
    anchors = _init_plusplus(wh, k, rng)
    assign = None
    for _ in range(max(1, iterations)):
        new = shape_iou(wh, anchors).argmax(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        anchors = _update(wh, assign, anchors)
    anchors = anchors[np.argsort(anchors[:, 0] * anchors[:, 1], kind="stable")]
    return anchors, mean_best_iou(wh, anchors)


def _init_plusplus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with d = 1 - IoU: the first anchor
    is a random box, each next one a box drawn with probability proportional to d^2 to
    its nearest anchor so far."""
    chosen = [int(rng.integers(len(wh)))]
    for _ in range(1, k):
        d = 1.0 - shape_iou(wh, wh[chosen]).max(axis=1)
        d2 = np.clip(d, 0.0, None) ** 2
        if d2.sum() > 0:
            chosen.append(int(rng.choice(len(wh), p=d2 / d2.sum())))
        else:  # rounding made every remaining shape look identical: take any new one
            fresh = np.flatnonzero(~(wh[:, None, :] == wh[chosen][None]).all(-1).any(-1))
            chosen.append(int(rng.choice(fresh)))
    return wh[chosen].copy()


def _update(wh: np.ndarray, assign: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """New anchors: each cluster's median shape; an emptied cluster is re-seeded with the
    box farthest (1 - IoU) from its own anchor."""
    new = anchors.copy()
    k = len(anchors)
    # Medians, not means: with d = 1 - IoU neither is the exact minimiser, and the median
    # is not dragged off a cluster's typical shape by its few very large or thin boxes.
    for j in range(k):
        members = wh[assign == j]
        if len(members):
            new[j] = np.median(members, axis=0)
    for j in range(k):
        if not np.any(assign == j):
            own = shape_iou(wh, new)[np.arange(len(wh)), assign]
            far = int(np.argmin(own))
            new[j] = wh[far]
            assign[far] = j
    return new


def square_grid(wh, k: int) -> np.ndarray:
    """A baseline without k-means: k square anchors whose sides are spaced geometrically
    between the 10th and 90th percentile of the boxes' sqrt(w * h) (the median for k = 1),
    sorted by area. Mean best IoU against it shows what k-means' shapes and placement buy."""
    wh = clean_shapes(wh)
    if k < 1 or len(wh) == 0:
        raise InputError("a square grid needs k >= 1 and at least one box")
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    if k == 1:
        sides = np.array([np.median(side)])
    else:
        low, high = np.percentile(side, [10, 90])
        sides = np.geomspace(low, high, k)
    return np.stack([sides, sides], axis=1)


def corners_to_shapes(boxes) -> np.ndarray:
    """(..., 4) corners (x0, y0, x1, y1) -> (N, 2) widths and heights of the rows that are
    not padding (all zero)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[np.any(boxes != 0, axis=1)]
    return np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def coco_shapes(path: str | os.PathLike) -> np.ndarray:
    """(N, 2) widths and heights of a COCO instances file's boxes as fractions of their
    image's width and height. Crowd annotations (iscrowd = 1) are left out."""
    coco = _read_coco(Path(path))
    sizes = {}
    for image in coco.get("images") or []:
        try:
            sizes[image["id"]] = (float(image["width"]), float(image["height"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: an image lacks a numeric id, width or height") from None
    rows = []
    for ann in coco.get("annotations") or []:
        if not isinstance(ann, dict) or "bbox" not in ann or ann.get("iscrowd", 0):
            continue
        size = sizes.get(ann.get("image_id"))
        if size is None or min(size) <= 0:
            raise InputError(f"{path}: annotation {ann.get('id')} names an unknown or empty image")
        try:
            _, _, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError):
            raise InputError(f"{path}: annotation {ann.get('id')} has a malformed bbox") from None
        rows.append((w / size[0], h / size[1]))
    if not rows:
        raise InputError(f"{path} holds no annotation with a bbox")
    return np.asarray(rows, dtype=np.float64)


def _read_coco(path: Path) -> dict:
    if not path.exists():
        raise MissingFile(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a COCO .json file")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a COCO JSON file ({exc})") from None
    if not isinstance(coco, dict):
        raise InputError(f"{path} is not a COCO JSON file (no top-level object)")
    return coco

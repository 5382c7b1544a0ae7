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


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
) -> np.ndarray:
    """Greedy non-max suppression (the course's): indices of the kept boxes, best first.

    Take the highest-scoring box, drop every remaining box whose IoU with it is
    >= ``iou_threshold``, repeat. ``boxes`` (K, 4) corners, ``scores`` (K,).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    limit = len(scores) if max_detections is None else int(max_detections)
    # Stable sort: equal scores keep input order, so results are reproducible.
    remaining = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while remaining.size and len(keep) < limit:
        best, rest = remaining[0], remaining[1:]
        keep.append(int(best))
        # One row of IoUs per kept box, not a K x K matrix: memory stays O(K) on a device.
        overlap = pairwise_iou(boxes[best][None], boxes[rest])[0]
        remaining = rest[overlap < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def per_class_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
) -> np.ndarray:
    """:func:`nms` within each class (a car never suppresses an overlapping person):
    kept indices sorted by score, best first, at most ``max_detections``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    kept = [np.zeros(0, dtype=np.int64)]
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold, max_detections)])
    kept = np.concatenate(kept)
    # By score, ties by index, so the order does not depend on class ids.
    kept = kept[np.lexsort((kept, -scores[kept]))]
    return kept if max_detections is None else kept[: int(max_detections)]


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


def _yolo_arrays(objectness, box, scores, anchors) -> tuple[np.ndarray, ...]:
    """The detector's outputs and anchors as float32 arrays, with their shapes checked."""
    if anchors is None:
        raise ValueError("detection needs anchors: a (B, 2) array of (width, height) fractions")
    obj = np.asarray(objectness, dtype=np.float32)
    if obj.ndim == 5 and obj.shape[-1] == 1:  # a Dense(B, 1) head's trailing axis
        obj = obj[..., 0]
    box = np.asarray(box, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    if obj.ndim != 4:
        raise ValueError(f"objectness must be (N, S, S, B); got shape {obj.shape}")
    if box.shape != (*obj.shape, 4):
        raise ValueError(f"box must be {(*obj.shape, 4)} to match objectness; got {box.shape}")
    if scores.ndim != 5 or scores.shape[:4] != obj.shape or scores.shape[4] < 1:
        raise ValueError(
            f"scores must be {(*obj.shape, 'C')} to match objectness; got {scores.shape}"
        )
    if anchors.ndim != 2 or anchors.shape[1] != 2:
        raise ValueError(f"anchors must be (B, 2) (width, height) pairs; got shape {anchors.shape}")
    if len(anchors) != obj.shape[3]:
        raise ValueError(f"{len(anchors)} anchors but the outputs have {obj.shape[3]} per cell")
    if not np.all(anchors > 0):
        raise ValueError("anchors must be positive (width, height) fractions of the image")
    return obj, box, scores, anchors


def yolo_boxes(
    objectness: np.ndarray, box: np.ndarray, scores: np.ndarray, anchors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A YOLO grid's outputs -> every cell and anchor's corner box, confidence and class.

    ``objectness`` (N, S_h, S_w, B) and ``box`` (N, S_h, S_w, B, 4) = (sx, sy, sw, sh) are
    sigmoids, ``scores`` (N, S_h, S_w, B, C) softmax probabilities, ``anchors`` (B, 2)
    (width, height) fractions. Returns boxes (N, K, 4) clipped to [0, 1], confidence
    (N, K) = objectness * best class probability and classes (N, K) int64, K = S_h*S_w*B in
    row, column, anchor order.
    """
    obj, box, scores, anchors = _yolo_arrays(objectness, box, scores, anchors)
    n, s_h, s_w, _ = obj.shape
    rows = np.arange(s_h, dtype=np.float32)[:, None, None]
    cols = np.arange(s_w, dtype=np.float32)[None, :, None]
    cx = (cols + box[..., 0]) / s_w
    cy = (rows + box[..., 1]) / s_h
    # YOLOv5's bounded size, anchor * (2 s)^2 in 0..4 anchors, rather than anchor * exp(t):
    # the box tensor stays in [0, 1], so int8 quantises it with one scale.
    w = anchors[:, 0] * (2 * box[..., 2]) ** 2
    h = anchors[:, 1] * (2 * box[..., 3]) ** 2
    corners = np.clip(centre_to_corners(np.stack([cx, cy, h, w], axis=-1)), 0.0, 1.0)
    confidence = obj * scores.max(axis=-1)
    classes = scores.argmax(axis=-1).astype(np.int64)
    return corners.reshape(n, -1, 4), confidence.reshape(n, -1), classes.reshape(n, -1)


def detection(
    objectness: np.ndarray,
    box: np.ndarray,
    scores: np.ndarray,
    *,
    anchors: np.ndarray | None = None,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    max_detections: int = 50,
    multi_label: bool = False,
) -> dict[str, np.ndarray]:
    """A YOLO detector's outputs -> up to ``max_detections`` boxes per image, best first.

    :func:`yolo_boxes`, keep confidence > ``score_threshold``, :func:`per_class_nms`.
    Arrays have a fixed size D = ``max_detections`` so a batch stays rectangular (and
    JSON-able): "boxes" (N, D, 4), "scores" (N, D), "classes" (N, D) (-1 where unused,
    boxes and scores 0 there) and "count" (N,) detections per image. ``anchors`` is
    required (a keyword only so that a missing one is a ValueError, not a TypeError).

    ``multi_label``: a box is a candidate in every class whose objectness x probability
    passes the threshold, not only in its best class. Scoring mAP this way (as ultralytics'
    validator does) counts a box whose class came second as a lower-ranked detection of
    the right class instead of a miss; deployment keeps one label a box.
    """
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be at least 1; got {max_detections}")
    boxes, confidence, classes = yolo_boxes(objectness, box, scores, anchors)
    if multi_label:  # (N, K, C) confidence of every class
        obj, _, probs, _ = _yolo_arrays(objectness, box, scores, anchors)
        confidence = (obj[..., None] * probs).reshape(len(boxes), -1, probs.shape[-1])
    n, d = len(boxes), int(max_detections)
    out = {
        "boxes": np.zeros((n, d, 4), dtype=np.float32),
        "scores": np.zeros((n, d), dtype=np.float32),
        "classes": np.full((n, d), -1, dtype=np.int64),
        "count": np.zeros(n, dtype=np.int64),
    }
    for i in range(n):
        # Threshold first: NMS then sees tens of candidates, not S*S*B.
        cells, picked_scores, labels = _candidates(confidence[i], classes[i], score_threshold)
        picked = boxes[i, cells], picked_scores, labels
        kept = per_class_nms(*picked, iou_threshold, d)
        k = len(kept)
        out["boxes"][i, :k] = picked[0][kept]
        out["scores"][i, :k] = picked[1][kept]
        out["classes"][i, :k] = picked[2][kept]
        out["count"][i] = k
    return out


def _candidates(confidence, classes, threshold: float) -> tuple[np.ndarray, ...]:
    """(box index, score, class) of every candidate above ``threshold``: one a box when
    ``confidence`` is (K,), every passing class when it is (K, C)."""
    if confidence.ndim == 2:
        cells, labels = np.nonzero(confidence > threshold)
        return cells, confidence[cells, labels], labels.astype(np.int64)
    cells = np.flatnonzero(confidence > threshold)
    return cells, confidence[cells], classes[cells]


# What `detection` returns, and the outputs of a detector with its NMS in the graph
# (mobilecv.tasks.detection_graph), which mean the same.
DETECTIONS = ("boxes", "scores", "classes", "count")


def keep_detections(found: dict, score_threshold: float, max_detections: int) -> dict:
    """Decoded detections (sorted by score, as NMS leaves them) cut to those scoring above
    ``score_threshold``, at most ``max_detections`` an image; the same fixed-size layout."""
    boxes, scores, classes, count = (np.asarray(found[k]) for k in DETECTIONS)
    n, slots = len(scores), min(int(max_detections), scores.shape[1])
    out = {
        "boxes": np.zeros((n, slots, 4), np.float32),
        "scores": np.zeros((n, slots), np.float32),
        "classes": np.full((n, slots), -1, np.int64),
        "count": np.zeros(n, np.int64),
    }
    for i in range(n):
        kept = np.flatnonzero(scores[i, : int(count[i])] > score_threshold)[:slots]
        k = len(kept)
        out["boxes"][i, :k], out["scores"][i, :k] = boxes[i, kept], scores[i, kept]
        out["classes"][i, :k], out["count"][i] = classes[i, kept], k
    return out


# ------------------------------------------------------------------ centroids


def _components(probs: np.ndarray, threshold: float) -> list[tuple[float, float, float, int]]:
    """One (rows, cols, 1 + C) heatmap -> (score, x, y, class) of each 4-connected group of
    cells of one class whose probability is >= ``threshold``, in scan order. The point is
    the score-weighted mean of the group's cell centres, the score its best cell's."""
    rows, cols, _ = probs.shape
    on = probs[..., 1:] >= threshold
    seen = np.zeros_like(on)
    found = []
    for r, c, k in np.argwhere(on):
        if seen[r, c, k]:
            continue
        seen[r, c, k] = True
        stack, cells = [(r, c)], []
        while stack:
            i, j = stack.pop()
            cells.append((i, j))
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= a < rows and 0 <= b < cols and on[a, b, k] and not seen[a, b, k]:
                    seen[a, b, k] = True
                    stack.append((a, b))
        at = np.asarray(cells)
        weight = probs[at[:, 0], at[:, 1], k + 1]
        x = float(np.average((at[:, 1] + 0.5) / cols, weights=weight))
        y = float(np.average((at[:, 0] + 0.5) / rows, weights=weight))
        found.append((float(weight.max()), x, y, int(k)))
    return found


def centroids(
    heatmap: np.ndarray, threshold: float = 0.5, max_points: int = 20
) -> dict[str, np.ndarray]:
    """A centroid grid's (FOMO's) heatmap -> up to ``max_points`` object centres per image.

    ``heatmap`` (N, S_h, S_w, 1 + C) is a softmax per cell over background (channel 0) and
    C classes. Cells whose class probability is >= ``threshold`` are object centres; the
    4-connected cells of one class merge into one centroid (an object often lights its
    neighbours too), at the score-weighted mean of their cell centres, scored by its best
    cell. Fixed-size arrays, best score first: "points" (N, K, 2) (x, y) fractions of the
    image, "scores" (N, K), "classes" (N, K) (-1 where unused, points and scores 0 there)
    and "count" (N,).
    """
    probs = np.asarray(heatmap, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[-1] < 2:
        raise ValueError(f"heatmap must be (N, S, S, 1 + classes); got shape {probs.shape}")
    if int(max_points) < 1:
        raise ValueError(f"max_points must be at least 1; got {max_points}")
    n, k = len(probs), int(max_points)
    out = {
        "points": np.zeros((n, k, 2), dtype=np.float32),
        "scores": np.zeros((n, k), dtype=np.float32),
        "classes": np.full((n, k), -1, dtype=np.int64),
        "count": np.zeros(n, dtype=np.int64),
    }
    for i in range(n):
        found = sorted(_components(probs[i], float(threshold)), key=lambda f: -f[0])[:k]
        for j, (score, x, y, label) in enumerate(found):
            out["points"][i, j] = (x, y)
            out["scores"][i, j] = score
            out["classes"][i, j] = label
        out["count"][i] = len(found)
    return out


# ------------------------------------------------------------------ segmentation

# Class colours of overlays (RGB): class 0 (background) is left uncoloured; the rest cycle
# through matplotlib's tab10 so a plot's legend and an overlay agree.
PALETTE = np.array(
    [
        (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
        (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34),
        (23, 190, 207),
    ],
    np.uint8,
)  # fmt: skip


def segmentation(mask: np.ndarray, input_size: int | None = None) -> dict[str, np.ndarray]:
    """Per-pixel class probabilities (N, H, W, C) -> ``classes`` (N, H, W) uint8, the argmax,
    and ``confidence`` (N, H, W), its probability. ``margin``: the share of the input's
    side left out on each side of the mask, 0 unless the model's convolutions are unpadded
    (a "valid" U-Net's output is the centre of its ``input_size`` input)."""
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3:
        mask = mask[None]
    margin = 0.0 if input_size is None else (int(input_size) - mask.shape[1]) / 2 / input_size
    return {
        "classes": np.argmax(mask, axis=-1).astype(np.uint8),
        "confidence": np.max(mask, axis=-1),
        "margin": np.asarray(margin, np.float32),
    }


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each of ``size_out`` pixels when resizing ``size_in`` pixels by the
    nearest pixel centre (half-pixel centres, as tf.image.resize's "nearest")."""
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out)
    return np.minimum(np.floor(centres).astype(np.int64), size_in - 1)


def class_map_to(classes: np.ndarray, height: int, width: int, margin: float = 0.0):
    """A class map (h, w) placed on a height x width image by the nearest pixel: over the
    whole image, or, for an unpadded U-Net's map, inside a border of ``margin`` of each
    side, which stays background (0: the model says nothing there)."""
    top, left = round(float(margin) * height), round(float(margin) * width)
    inner_h, inner_w = height - 2 * top, width - 2 * left
    rows = nearest_indices(classes.shape[0], inner_h)
    cols = nearest_indices(classes.shape[1], inner_w)
    placed = np.zeros((height, width), np.uint8)
    placed[top : top + inner_h, left : left + inner_w] = np.asarray(classes)[np.ix_(rows, cols)]
    return placed


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5, margin: float = 0.0):
    """One image (H, W[, C]; uint8, or floats in [0, 1]) with its class map blended over it
    in ``PALETTE`` colours (:func:`class_map_to` places the map), as uint8 RGB; background
    pixels keep the image."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    rgb = rgb.astype(np.float32) * (255.0 if image.dtype.kind == "f" else 1.0)
    placed = class_map_to(classes, rgb.shape[0], rgb.shape[1], margin)
    coloured = (1 - alpha) * rgb + alpha * PALETTE[placed % len(PALETTE)]
    blended = np.where((placed > 0)[..., None], coloured, rgb)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ embeddings


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(N, D) float32 rows (a single (D,) vector is one row) scaled to unit length; a zero
    row stays zero."""
    e = np.asarray(vectors, dtype=np.float32)
    e = e.reshape(len(e), -1) if e.ndim > 1 else e.reshape(1, -1)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norms > 0, norms, 1.0)


def embedding(embedding: np.ndarray) -> dict[str, np.ndarray]:
    """An encoder's (N, D) embeddings re-normalised to unit length: int8 rounding leaves
    them slightly off the unit sphere, and distances assume unit vectors."""
    return {"embedding": _unit_rows(embedding)}


def nearest_identity(
    embedding: np.ndarray, database: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """The course's recognition rule: each (D,) or (N, D) embedding against the (M, D)
    identity encodings of a database. "identity" (N,) is the index of the nearest
    encoding when its Euclidean distance is under ``threshold``, else -1 (unknown);
    "nearest" (N,) that index whatever the distance; "distance" (N,) its distance."""
    e = _unit_rows(embedding)
    db = np.asarray(database, dtype=np.float32)
    if db.ndim != 2 or db.shape[1] != e.shape[1] or len(db) == 0:
        raise ValueError(f"the database must be (M >= 1, {e.shape[1]}); got {db.shape}")
    distances = np.sqrt(np.maximum(
        (e**2).sum(1)[:, None] - 2.0 * e @ db.T + (db**2).sum(1)[None, :], 0.0
    ))  # fmt: skip
    nearest = np.argmin(distances, axis=1)
    distance = distances[np.arange(len(e)), nearest]
    return {
        "identity": np.where(distance < float(threshold), nearest, -1).astype(np.int64),
        "nearest": nearest.astype(np.int64),
        "distance": distance.astype(np.float32),
    }


DECODERS = {
    "classification": classification,
    "localisation": localisation,
    "landmarks": landmarks,
    "detection": detection,
    "centroids": centroids,
    "segmentation": segmentation,
    "embedding": embedding,
}
# Each task's model outputs, by name (the Keras output names, kept in the .tflite's
# signature); mobilecv.tasks uses these names too.
TASK_OUTPUTS = {
    "classification": ("scores",),
    "localisation": ("presence", "box", "scores"),
    "landmarks": ("points",),
    "detection": ("objectness", "box", "scores"),
    "centroids": ("heatmap",),
    "segmentation": ("mask",),
    "embedding": ("embedding",),
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

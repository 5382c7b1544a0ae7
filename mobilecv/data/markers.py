"""Real square markers as landmark test data: ViSP's AprilTag photo, one crop a marker.

A landmark model sees one object a scene, so the photo is cut into one square crop per
marker: the bounding box of its four ground-truth corners, grown by ``margin`` of its
longer side on every side, resampled to the model's input size. The model's points (as
fractions of the crop) map back to photo pixels through the same box (`from_crop`).

Corner order: the model's points are top-left, top-right, bottom-right, bottom-left of the
object as seen, a clockwise ring on screen (y points down). The ground truth is put in the
same order by angle around the centre (`order_corners`). Which corner of a square is
"first" is not defined by its outline: a marker turned 45 degrees has no top-left corner
(its code, not its shape, says which corner is which), so errors are also reported for the
best cyclic start of the ring (`align_ring`), the corner-localisation error.

Coordinates are continuous: the photo spans [0, W] x [0, H], pixel (r, c) covering
[c, c + 1] x [r, r + 1] (mobilecv.data.assets' convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobilecv.errors import InputError

DEFAULT_MARGIN = 0.3  # of the marker's longer bounding-box side, on every side
RING = 4  # a quadrilateral's corners


def order_corners(corners: np.ndarray) -> np.ndarray:
    """(..., 4, 2) corners as a clockwise ring on screen, starting with the corner whose
    direction from the centre is nearest the top-left diagonal (-135 degrees, y down)."""
    corners = np.asarray(corners, dtype=np.float64)
    offset = corners - corners.mean(axis=-2, keepdims=True)
    # Angle from the top-left diagonal, clockwise on screen, in (-pi, pi].
    angle = np.angle(np.exp(1j * (np.arctan2(offset[..., 1], offset[..., 0]) + 0.75 * np.pi)))
    ring = np.argsort(angle, axis=-1)  # clockwise, from just after -pi
    start = np.argmin(np.take_along_axis(np.abs(angle), ring, axis=-1), axis=-1)
    order = np.take_along_axis(ring, (start[..., None] + np.arange(RING)) % RING, axis=-1)
    return np.take_along_axis(corners, order[..., None], axis=-2)


def align_ring(predicted: np.ndarray, truth: np.ndarray, rows=None) -> np.ndarray:
    """``predicted`` (N, K, 2) with its first four points (a clockwise ring, as ``truth``'s)
    rotated to the start that best fits ``truth`` (mean distance over the ring); points
    after the ring (a centre) stay. ``rows`` (N,) bool limits it to some samples."""
    predicted = np.asarray(predicted, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.float32)
    shifts = np.stack(
        [np.concatenate([np.roll(predicted[:, :RING], -s, axis=1), predicted[:, RING:]], 1)
         for s in range(RING)], axis=1,
    )  # fmt: skip
    errors = np.linalg.norm(shifts[:, :, :RING] - truth[:, None, :RING], axis=-1).mean(axis=-1)
    best = shifts[np.arange(len(predicted)), errors.argmin(axis=1)]
    if rows is None:
        return best
    return np.where(np.asarray(rows, bool)[:, None, None], best, predicted)


def diagonal_crossing(corners: np.ndarray) -> np.ndarray:
    """(..., 4, 2) ring -> (..., 2) where its diagonals cross: the image of a square's
    centre under any perspective view (the scenes' fifth point)."""
    p0, p1, p2, p3 = (np.asarray(corners, dtype=np.float64)[..., i, :] for i in range(4))
    d0, d1 = p2 - p0, p3 - p1
    cross = d0[..., 0] * d1[..., 1] - d0[..., 1] * d1[..., 0]
    t = ((p1 - p0)[..., 0] * d1[..., 1] - (p1 - p0)[..., 1] * d1[..., 0]) / cross
    return p0 + t[..., None] * d0


def crop_boxes(corners: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """(N, 4, 2) corners -> (N, 3) square crops (x0, y0, side): each marker's bounding box
    centred, its longer side grown by ``margin`` of itself on both sides."""
    if not 0.0 <= margin <= 2.0:
        raise InputError(f"margin must be in [0, 2], got {margin}")
    corners = np.asarray(corners, dtype=np.float64)
    low, high = corners.min(axis=1), corners.max(axis=1)
    side = (high - low).max(axis=1) * (1.0 + 2.0 * margin)
    centre = (low + high) / 2
    return np.c_[centre - side[:, None] / 2, side]


def to_crop(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Photo pixels (N, K, 2) -> fractions of each crop (N, K, 2)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return (np.asarray(points) - boxes[:, None, :2]) / boxes[:, None, 2:]


def from_crop(fractions: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fractions of each crop (N, K, 2) -> photo pixels (N, K, 2): `to_crop`'s inverse."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes[:, None, :2] + np.asarray(fractions, dtype=np.float64) * boxes[:, None, 2:]


def crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """One (size, size) bilinear crop of a 2-D image; outside the photo its edge repeats.

    Output pixel (i, j) samples the photo at the centre of its cell, (x0 + (j + 0.5) s,
    y0 + (i + 0.5) s) with s = side / size. When the crop shrinks the photo, a Gaussian of
    sigma (s - 1) / 2 first removes what the coarser grid cannot hold (scikit-image's
    rescale uses the same rule).
    """
    from scipy import ndimage

    x0, y0, side = (float(v) for v in box)
    step = side / size
    source = np.asarray(image, dtype=np.float32)
    if step > 1.0:
        source = ndimage.gaussian_filter(source, (step - 1.0) / 2, mode="nearest")
    centres = (np.arange(size) + 0.5) * step
    # Continuous coordinate u lies at array index u - 0.5 (pixel centres at +0.5).
    rows, cols = np.meshgrid(y0 + centres - 0.5, x0 + centres - 0.5, indexing="ij")
    out = ndimage.map_coordinates(source, [rows, cols], order=1, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class MarkerCrops:
    """Crops of every marker of a photo, with landmark labels in the task's format."""

    data: object  # ArrayData: x (N, size, size, 1) uint8; y points/visible/box fractions
    boxes: np.ndarray  # (N, 3) each crop's (x0, y0, side) in photo pixels
    corners: np.ndarray  # (N, 4, 2) ordered ground-truth corners, photo pixels
    ids: np.ndarray  # (N,) marker ids
    image: np.ndarray  # the photo


def marker_crops(
    image: np.ndarray, corners: np.ndarray, ids: np.ndarray, size: int, margin: float
) -> MarkerCrops:
    """One crop per marker; labels are its ordered corners and their diagonal crossing."""
    from mobilecv.data.datasets import ArrayData

    ordered = order_corners(corners)
    boxes = crop_boxes(ordered, margin)
    points = np.concatenate([ordered, diagonal_crossing(ordered)[:, None]], axis=1)
    fractions = to_crop(points, boxes)
    x = np.stack([crop(image, box, size) for box in boxes])[..., None]
    y = {
        "points": fractions.astype(np.float32),
        "visible": np.ones(fractions.shape[:2], dtype=np.float32),
        "box": np.c_[fractions[:, :4].min(axis=1), fractions[:, :4].max(axis=1)].astype(np.float32),
    }
    data = ArrayData(x=x, y=y, classes=0, name="apriltag", provenance=APRILTAG_PROVENANCE)
    return MarkerCrops(data=data, boxes=boxes, corners=ordered, ids=np.asarray(ids), image=image)


APRILTAG_PROVENANCE = (
    "real photo: ViSP's AprilTag.pgm (12 printed 36h11 markers, ground-truth corners); "
    "never used in training"
)


def apriltag_crops(size: int = 96, margin: float = DEFAULT_MARGIN) -> MarkerCrops:
    """The 12 markers of ViSP's AprilTag photo (mobilecv.data.assets.apriltag_photo)."""
    from mobilecv.data.assets import apriltag_photo

    photo = apriltag_photo()
    return marker_crops(photo.image, photo.corners, photo.ids, size, margin)


def corner_errors(predicted: np.ndarray, crops: MarkerCrops) -> dict[str, np.ndarray]:
    """Per marker: the mean distance, in photo pixels, of the first four ``predicted``
    points (N, K, 2 crop fractions) from the ordered true corners ("px"), and that distance
    over the square root of the marker's bounding-box area ("nme")."""
    photo = from_crop(np.asarray(predicted)[:, :RING], crops.boxes)
    px = np.linalg.norm(photo - crops.corners, axis=-1).mean(axis=-1)
    return {"px": px, "nme": px / marker_sizes(crops.corners)}


def marker_sizes(corners: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners -> (N,) the square root of each bounding box's area."""
    span = np.asarray(corners).max(axis=1) - np.asarray(corners).min(axis=1)
    return np.sqrt(span[:, 0] * span[:, 1])


def recentred(data, margin: tuple[float, float] = (0.2, 0.4), seed: int = 0):
    """Scenes cut the way `marker_crops` cuts the photo: each scene's object, at the middle
    of a 3 x 3 mosaic of scenes (its eight neighbours drawn from the others), is cropped
    around its four corners with a margin drawn from ``margin`` and resampled to the
    scene's size. The photo's crops hold parts of neighbouring markers; these hold parts of
    neighbouring tiles, so a model learns to find the centred one."""
    from mobilecv.data.datasets import ArrayData

    rng = np.random.default_rng(seed)
    count, size = len(data.x), data.x.shape[1]
    images = np.empty_like(data.x)
    points = np.asarray(data.y["points"], np.float64) * size + size  # mosaic pixels
    fractions = np.empty_like(points)
    for i in range(count):
        others = rng.choice(count - 1, 8) if count > 1 else np.zeros(8, int)
        cells = [data.x[j] for j in others + (others >= i)]
        cells.insert(4, data.x[i])
        mosaic = np.concatenate([np.concatenate(cells[r : r + 3], 1) for r in (0, 3, 6)], 0)
        box = crop_boxes(points[i : i + 1, :RING], rng.uniform(*margin))
        fractions[i] = to_crop(points[i : i + 1], box)[0]
        channels = [crop(mosaic[..., c], box[0], size) for c in range(mosaic.shape[-1])]
        images[i] = np.stack(channels, axis=-1)
    corners = fractions[:, :RING]
    y = {
        **data.y,
        "points": fractions.astype(np.float32),
        "box": np.c_[corners.min(axis=1), corners.max(axis=1)].astype(np.float32),
    }
    return ArrayData(
        x=images,
        y=y,
        classes=data.classes,
        name=data.name,
        provenance=f"{data.provenance}; recentred: each object cropped with a margin of "
        f"{margin[0]:g}-{margin[1]:g} from a 3x3 mosaic of scenes",
    )

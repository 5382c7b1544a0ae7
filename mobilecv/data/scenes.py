"""Scenes: real objects pasted on real backgrounds, with exact labels.

No real multi-object set with boxes ships offline, so localisation, landmarks, detection
and segmentation train and test on *synthetic compositions* of real pixels: Fashion-MNIST
items, OpenCV's handwritten digits and scikit-image's LFW faces, scaled, flipped, rotated and optionally warped in
perspective onto crops of real textures and photos (mobilecv.data.assets.Background).
Every label comes from the pasted object's own pixels after every transform:

- instance masks: the object's visible pixels (a later object hides what it covers);
- boxes (x0, y0, x1, y1): the bounding box of that mask, in pixels;
- keypoints: the four corners of the object's own box in its source image (top-left,
  top-right, bottom-right, bottom-left), carried through the same transform, and the
  image of that box's centre: a square marker seen in perspective;
- class ids, and for every object the source image it came from.

Coordinates are continuous: the image spans [0, W] x [0, H] and pixel (r, c) covers
[c, c + 1] x [r, r + 1] (as COCO's boxes). Train, validation and test scenes draw their
objects from disjoint source splits, and the same seed gives identical arrays. Every
report built on these scenes must say "synthetic composition" (SceneSet.provenance, and
the COCO file's info.description).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from mobilecv.data.assets import (
    DIGITS_TEST_FRACTION,
    DIGITS_VAL_FRACTION,
    Background,
    background,
    digits_split_indices,
    opencv_digits,
)
from mobilecv.data.datasets import SPLIT_SEED, Split, _carve, load_arrays
from mobilecv.errors import InputError, parse_choice
from mobilecv.fileio import atomic_path, write_json

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(f"digit {d}" for d in range(10))
KEYPOINT_NAMES = ("top_left", "top_right", "bottom_right", "bottom_left", "centre")
VISIBLE, OCCLUDED = 2, 1  # COCO keypoint flags: labelled and visible / labelled, hidden
PROVENANCE = "synthetic composition"
MIN_COMPONENT = 3  # smaller specks of a source mask are scanner noise, not object
MAX_TRIES = 60  # placements tried per object before the config is declared infeasible
_SPLIT_STREAM = {Split.TRAIN: 0, Split.VALIDATION: 1, Split.TEST: 2}
_FASHION_TRAIN_FILE = 60_000  # images in train-images-idx3-ubyte (train + validation)


class Paste(enum.StrEnum):
    OBJECT = "object"
    TILE = "tile"


class ObjectSource(enum.StrEnum):
    """Where objects come from; each has its own disjoint train/validation/test split."""

    FASHION_MNIST = "fashion_mnist"
    DIGITS = "digits"  # OpenCV's digits.png (real handwriting, 20x20)
    FACES = "faces"  # scikit-image's lfw_subset: 100 real faces, 25x25 grey


FACE_CLASSES = ("face",)
LFW_FACES = 100  # lfw_subset(): the first 100 of its 200 images are faces, the rest not
LFW_SIDE = 25


_CLASS_NAMES = {
    ObjectSource.FASHION_MNIST: FASHION_MNIST_CLASSES,
    ObjectSource.DIGITS: DIGIT_CLASSES,
    ObjectSource.FACES: FACE_CLASSES,
}
# A mirrored digit is another glyph; a mirrored shoe, or face, is still a shoe or a face.
_FLIPPABLE = {ObjectSource.FASHION_MNIST, ObjectSource.FACES}
# Source pixels above the threshold (of 255) are the object. 16 leaves Fashion-MNIST the
# fewest stray specks, and a garment's dark inner parts are filled in; a digit is its
# strokes (64 drops the faint anti-aliased rim), and the hole of a 0 stays background.
_MASK_THRESHOLD = {ObjectSource.FASHION_MNIST: 16, ObjectSource.DIGITS: 64}
_FILL_HOLES = {ObjectSource.FASHION_MNIST}
# An LFW crop is all face (brow to chin, cheek to cheek) on no background of its own, so no
# threshold finds it: its mask is the ellipse inscribed in the square. Pasting the whole
# square would teach a detector to find square edges, which no face in a photo has; the
# ellipse keeps the face, drops the corners (hair, collar, the original photo's backdrop)
# and still touches all four sides, so the box is the whole crop, as in the source set.
_ELLIPSE_MASK = {ObjectSource.FACES}


def _pair(value, what: str, kind=float) -> tuple:
    pair = tuple(kind(v) for v in (value if isinstance(value, Sequence) else (value, value)))
    if len(pair) != 2 or pair[0] > pair[1]:
        raise InputError(f"{what} must be (min, max) with min <= max; got {value!r}")
    return pair


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are made. `scale` is the object's longer side as a share of the scene's."""

    size: int = 96
    channels: int = 3
    # Objects per non-empty scene, inclusive (0 allowed). A scene too crowded for the number
    # drawn keeps those that fit, never fewer than the minimum.
    objects: tuple[int, int] = (1, 3)
    empty_share: float = 0.0  # share of scenes forced to hold no object
    sources: tuple[ObjectSource, ...] = (ObjectSource.FASHION_MNIST,)
    backgrounds: tuple[Background, ...] = tuple(Background)
    scale: tuple[float, float] = (0.25, 0.5)
    flip: bool = True  # horizontal, for sources where a mirror image keeps the class
    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    warp: float = 0.0  # perspective: each corner moves up to this share of the box side
    # A plane seen at a slant: after its rotation the object is squashed along a random
    # direction to between (1 - tilt) and 1 of its size there (a marker on a table).
    tilt: float = 0.0
    max_iou: float = 0.3  # between the final boxes of any two objects of a scene
    min_visible: float = 0.6  # share of an object's pixels that later objects leave visible
    # Unlabelled hard negatives a scene, inclusive: lfw_subset's non-face crops (real
    # background from the same photos as its faces), pasted like objects under them. They
    # are part of the background: no label, no mask, and objects may cover them.
    distractors: tuple[int, int] = (0, 0)
    # "object": the item's own pixels; "tile": its whole source square, background included,
    # a dark card with the item on it, whose four corners are visible like a marker's.
    paste: str = "object"
    seed: int = 0

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        put("objects", _pair(self.objects, "objects", int))
        put("distractors", _pair(self.distractors, "distractors", int))
        put("scale", _pair(self.scale, "scale"))
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        put("sources", tuple(parse_choice(ObjectSource, s, "object source") for s in sources))
        names = (self.backgrounds,) if isinstance(self.backgrounds, str) else self.backgrounds
        put("backgrounds", tuple(parse_choice(Background, b, "background") for b in names))
        put("paste", parse_choice(Paste, self.paste, "paste").value)
        self._check()

    def _check(self) -> None:
        problems = []
        if self.size < 16:
            problems.append(f"size must be >= 16, got {self.size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if self.objects[0] < 0 or self.objects[1] > 32:
            problems.append(f"objects must lie in [0, 32], got {self.objects}")
        if self.distractors[0] < 0 or self.distractors[1] > 32:
            problems.append(f"distractors must lie in [0, 32], got {self.distractors}")
        if not 0.0 <= self.empty_share <= 1.0:
            problems.append(f"empty_share must be in [0, 1], got {self.empty_share}")
        if not self.sources or len(set(self.sources)) != len(self.sources):
            problems.append(f"sources must be distinct and non-empty, got {self.sources}")
        if not self.backgrounds:
            problems.append("backgrounds must name at least one background")
        if not (self.scale[0] > 0.0 and self.scale[1] <= 1.0):
            problems.append(f"scale must lie in (0, 1], got {self.scale}")
        if not 0.0 <= self.rotation <= 45.0:
            problems.append(f"rotation must be in [0, 45] degrees, got {self.rotation}")
        if not 0.0 <= self.warp <= 0.25:
            problems.append(f"warp must be in [0, 0.25], got {self.warp}")
        if not 0.0 <= self.tilt <= 0.75:
            problems.append(f"tilt must be in [0, 0.75], got {self.tilt}")
        if not 0.0 <= self.max_iou <= 1.0 or not 0.0 <= self.min_visible <= 1.0:
            problems.append("max_iou and min_visible must be in [0, 1]")
        if problems:
            raise InputError("scene config: " + "; ".join(problems))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class ids are contiguous over the sources, in their order."""
        return tuple(name for source in self.sources for name in _CLASS_NAMES[source])

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True)
class Scene:
    """One scene's view of a SceneSet."""

    image: np.ndarray  # (H, W, C) uint8
    boxes: np.ndarray  # (k, 4) float32 x0, y0, x1, y1
    classes: np.ndarray  # (k,) int64
    keypoints: np.ndarray  # (k, 5, 3) float32 x, y, visibility
    masks: np.ndarray  # (k, H, W) bool
    source_ids: np.ndarray  # (k,) str


@dataclass(frozen=True)
class SceneSet:
    """Scenes of one split. Per-object arrays are flat; `offsets` slices them per scene.

    `instance_maps[i]` holds 0 for background and j + 1 where object j of scene i is
    visible (visible masks never overlap, so one map holds them all).
    """

    images: np.ndarray  # (N, H, W, C) uint8
    instance_maps: np.ndarray  # (N, H, W) uint8
    offsets: np.ndarray  # (N + 1,) int64
    boxes: np.ndarray  # (M, 4) float32
    classes: np.ndarray  # (M,) int64
    keypoints: np.ndarray  # (M, 5, 3) float32
    source_ids: np.ndarray  # (M,) str, e.g. "fashion_mnist/t10k-images/123"
    source_index: np.ndarray  # (M,) int64 index into the source's split arrays
    background_ids: np.ndarray  # (N,) int64 index into config.backgrounds
    split: Split
    config: SceneConfig

    def __len__(self) -> int:
        return len(self.images)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def provenance(self) -> str:
        objects = " and ".join(s.value for s in self.config.sources)
        return (
            f"{PROVENANCE}: real {objects} objects pasted on real photos and textures "
            f"({self.split.value} split, seed {self.config.seed}); not a photo set"
        )

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def scene_of(self) -> np.ndarray:
        """(M,) the scene index of every object."""
        return np.repeat(np.arange(len(self)), self.counts)

    def masks(self, index: int) -> np.ndarray:
        """(k, H, W) bool visible masks of scene `index`."""
        ids = np.arange(1, self.counts[index] + 1, dtype=np.uint8)
        return self.instance_maps[index][None] == ids[:, None, None]

    def semantic_masks(self) -> np.ndarray:
        """(N, H, W) uint8: 0 background, class id + 1 where an object is visible."""
        lookup = np.zeros((len(self), 256), dtype=np.uint8)  # per scene: object -> class
        for i in range(len(self)):
            lookup[i, 1 : self.counts[i] + 1] = (
                self.classes[self.offsets[i] : self.offsets[i + 1]] + 1
            )
        return lookup[np.arange(len(self))[:, None, None], self.instance_maps]

    def scene(self, index: int) -> Scene:
        part = slice(self.offsets[index], self.offsets[index + 1])
        return Scene(
            image=self.images[index],
            boxes=self.boxes[part],
            classes=self.classes[part],
            keypoints=self.keypoints[part],
            masks=self.masks(index),
            source_ids=self.source_ids[part],
        )


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Pool:
    """One source's objects for one split, and where each image sits in its source file."""

    images: np.ndarray  # (n, h, w) uint8
    labels: np.ndarray  # (n,) int64
    file_ids: np.ndarray  # (n,) index in the source file
    file: str  # e.g. "fashion_mnist/train-images"


@cache
def _lfw_subset() -> np.ndarray:
    """scikit-image's 200 LFW crops as uint8 (N, 25, 25); the first 100 are faces."""
    import skimage.data

    images = np.asarray(skimage.data.lfw_subset())
    if images.shape != (2 * LFW_FACES, LFW_SIDE, LFW_SIDE):
        raise InputError(
            f"skimage.data.lfw_subset() has shape {images.shape}, expected (200, 25, 25)"
        )
    if images.dtype != np.uint8:  # scikit-image gives floats in [0, 1], whatever its doc says
        images = np.clip(np.rint(np.asarray(images, np.float64) * 255.0), 0, 255).astype(np.uint8)
    images.flags.writeable = False
    return images


def lfw_split_indices(split: str | Split, faces: bool = True) -> np.ndarray:
    """Indices into lfw_subset() of one split of its faces (or of its non-faces): 20 test,
    8 validation and 72 train of each 100, carved as load_arrays carves (test first)."""
    split = parse_choice(Split, split, "split")
    rest, test = _carve(LFW_FACES, DIGITS_TEST_FRACTION, SPLIT_SEED + 1)
    train, val = _carve(len(rest), DIGITS_VAL_FRACTION, SPLIT_SEED)
    chosen = {Split.TEST: test, Split.TRAIN: rest[train], Split.VALIDATION: rest[val]}[split]
    return chosen if faces else chosen + LFW_FACES


@cache
def _pool(source: ObjectSource, split: Split) -> _Pool:
    if source is ObjectSource.FACES:
        ids = lfw_split_indices(split)
        return _Pool(_lfw_subset()[ids], np.zeros(len(ids), np.int64), ids, "lfw_subset")
    if source is ObjectSource.DIGITS:
        x, y = opencv_digits(split)
        return _Pool(x[..., 0], y, digits_split_indices(split), "digits/digits.png")
    data = load_arrays(ObjectSource.FASHION_MNIST.value, split)
    if split is Split.TEST:
        return _Pool(data.x[..., 0], data.y, np.arange(len(data)), "fashion_mnist/t10k-images")
    # load_arrays carves validation from the train file with this call (its defaults).
    keep, held = _carve(_FASHION_TRAIN_FILE, 0.1, SPLIT_SEED)
    ids = keep if split is Split.TRAIN else held
    if len(ids) != len(data):
        raise InputError(f"Fashion-MNIST {split} has {len(data)} images, expected {len(ids)}")
    return _Pool(data.x[..., 0], data.y, ids, "fashion_mnist/train-images")


def _object_mask(patch: np.ndarray, source: ObjectSource) -> np.ndarray:
    """The object's own pixels in its source image: bright pixels, without specks (or, for
    a face, the ellipse inscribed in its crop)."""
    from scipy import ndimage

    if source in _ELLIPSE_MASK:
        return _ellipse(patch.shape)
    mask = patch > _MASK_THRESHOLD[source]
    if source in _FILL_HOLES:
        mask = ndimage.binary_fill_holes(mask)
    labels, parts = ndimage.label(mask)
    if parts > 1:
        keep = np.bincount(labels.ravel()) >= MIN_COMPONENT
        keep[0] = False
        mask = keep[labels]
    return mask


def _ellipse(shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie in the ellipse inscribed in a (rows, cols) rectangle."""
    rows, cols = shape
    y = (np.arange(rows) + 0.5) / rows * 2 - 1
    x = (np.arange(cols) + 0.5) / cols * 2 - 1
    return y[:, None] ** 2 + x[None, :] ** 2 <= 1.0


class _Canvas:
    """A background converted to the scene's channels once, and shrunk so crops resize fast."""

    def __init__(self, name: Background, size: int, channels: int):
        from PIL import Image

        image = Image.fromarray(background(name)).convert("L" if channels == 1 else "RGB")
        shrink = 2 * size / min(image.size)
        if shrink < 1.0:
            image = image.resize(
                (round(image.width * shrink), round(image.height * shrink)), Image.BILINEAR
            )
        self.image = image

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random square crop resized to (size, size, C) float32."""
        from PIL import Image

        width, height = self.image.size
        short = min(width, height)
        side = rng.uniform(min(size, short), short)
        x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        box = (x0, y0, x0 + side, y0 + side)
        pixels = np.asarray(self.image.resize((size, size), Image.BILINEAR, box=box), np.float32)
        return pixels[..., None] if pixels.ndim == 2 else pixels


@cache
def _canvas(name: Background, size: int, channels: int) -> _Canvas:
    return _Canvas(name, size, channels)


# --------------------------------------------------------------------------- geometry


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the 4 points `src` exactly onto `dst`."""
    x, y = src[:, 0], src[:, 1]
    u, v = dst[:, 0], dst[:, 1]
    one, zero = np.ones(4), np.zeros(4)
    rows_u = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 1)
    rows_v = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 1)
    h = np.linalg.solve(np.concatenate([rows_u, rows_v]), np.concatenate([u, v]))
    return np.append(h, 1.0).reshape(3, 3)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    mapped = np.c_[points, np.ones(len(points))] @ matrix.T
    return mapped[:, :2] / mapped[:, 2:]


def _convex(quad: np.ndarray) -> bool:
    edges = np.roll(quad, -1, axis=0) - quad
    turns = (
        edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1]
        - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    )
    return bool((turns > 0).all() or (turns < 0).all())


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of a non-empty mask: pixel edges, so x1 - x0 is its width in pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _max_pairwise_iou(boxes: np.ndarray) -> float:
    if len(boxes) < 2:
        return 0.0
    low = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    return float(iou[np.triu_indices(len(boxes), 1)].max())


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class _Placed:
    """One pasted object: its pixels and mask inside a window of the scene, and its labels."""

    window: tuple[slice, slice]
    mask: np.ndarray  # bool, window-sized
    pixels: np.ndarray  # float32, window-sized
    points: np.ndarray  # (5, 2) corners of its source box and centre, scene coordinates
    source: int  # index in config.sources
    index: int  # index in that source's pool
    pixel_count: int


def _warp_into_window(patch, mask, matrix, window) -> tuple[np.ndarray, np.ndarray]:
    """Warp source pixels and mask into the scene window (bilinear; mask cut at 0.5)."""
    from skimage.transform import warp

    rows, cols = window
    # skimage maps output pixel centres (col, row) to input pixel centres: shift by 0.5
    # on both sides of our edge-coordinate homography.
    to_scene = np.array([[1, 0, cols.start + 0.5], [0, 1, rows.start + 0.5], [0, 0, 1]])
    to_centres = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    inverse = to_centres @ np.linalg.inv(matrix) @ to_scene
    stack = np.stack([patch, mask], -1).astype(np.float32)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    out = warp(stack, inverse, output_shape=shape, order=1, mode="constant", preserve_range=True)
    return out[..., 0], out[..., 1] > 0.5


def _source_patch(rng, config: SceneConfig, pools: list[_Pool]):
    source = int(rng.integers(len(config.sources)))
    index = int(rng.integers(len(pools[source].images)))
    patch = pools[source].images[index]
    if config.flip and config.sources[source] in _FLIPPABLE and rng.random() < 0.5:
        patch = patch[:, ::-1]
    return source, index, patch


def _candidate(rng, config: SceneConfig, pools: list[_Pool]) -> _Placed | None:
    """One random placement of one random object, or None when the draw is unusable."""
    source, index, patch = _source_patch(rng, config, pools)
    if config.paste == Paste.TILE:
        mask = np.ones(patch.shape, dtype=bool)
    else:
        mask = _object_mask(patch, config.sources[source])
    if not mask.any():
        return None
    placed = _place(rng, config, patch, mask)
    if placed is None:
        return None
    window, pixels, warped, points = placed
    return _Placed(window, warped, pixels, points, source, index, int(warped.sum()))


def _place(rng, config: SceneConfig, patch: np.ndarray, mask: np.ndarray):
    """(window, pixels, mask, points) of `patch` scaled, rotated, squashed, warped and put
    at a random place in the scene, or None when that draw does not fit."""
    x0, y0, x1, y1 = _mask_box(mask)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    centre = corners.mean(axis=0)
    extent = np.array([x1 - x0, y1 - y0])
    zoom = rng.uniform(*config.scale) * config.size / extent.max()
    angle = np.deg2rad(rng.uniform(-config.rotation, config.rotation))
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    quad = ((corners - centre) * zoom) @ rotate.T
    if config.tilt > 0:  # drawn only then, so configs without tilt keep their scenes
        quad = quad @ _squash(rng, config.tilt).T
    quad += rng.uniform(-1.0, 1.0, (4, 2)) * config.warp * extent * zoom
    room = config.size - (quad.max(axis=0) - quad.min(axis=0))
    if (room < 0).any() or not _convex(quad):
        return None
    quad += rng.uniform(0.0, 1.0, 2) * room - quad.min(axis=0)
    matrix = _homography(corners, quad)
    low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    high = np.minimum(high, config.size)
    window = (slice(low[1], high[1]), slice(low[0], high[0]))
    pixels, warped = _warp_into_window(patch, mask, matrix, window)
    if not warped.any():
        return None
    return window, pixels, warped, np.vstack([quad, _apply(matrix, centre[None])])


def _negatives(split: Split) -> np.ndarray:
    """lfw_subset's non-face crops of one split: the distractors' source."""
    return _lfw_subset()[lfw_split_indices(split, faces=False)]


def _paste_distractors(rng, config: SceneConfig, image: np.ndarray, negatives) -> None:
    """Paint unlabelled non-face crops onto the background, placed as objects are. Drawn
    only when asked for, so configs without distractors keep their scenes."""
    if config.distractors[1] == 0:
        return
    mask = _ellipse(negatives.shape[1:])
    for _ in range(int(rng.integers(config.distractors[0], config.distractors[1] + 1))):
        patch = negatives[int(rng.integers(len(negatives)))]
        if config.flip and rng.random() < 0.5:
            patch = patch[:, ::-1]
        for _ in range(MAX_TRIES):
            placed = _place(rng, config, patch, mask)
            if placed is not None:
                window, pixels, warped, _ = placed
                image[window][warped] = pixels[warped][:, None]
                break


def _squash(rng, tilt: float) -> np.ndarray:
    """A 2x2 map shrinking one random direction to a share in [1 - tilt, 1] of itself."""
    direction = rng.uniform(0.0, np.pi)
    axis = np.array([np.cos(direction), np.sin(direction)])
    keep = rng.uniform(1.0 - tilt, 1.0)
    return np.eye(2) - (1.0 - keep) * np.outer(axis, axis)


def _accept(candidate: _Placed, placed: list[_Placed], owner: np.ndarray, config: SceneConfig):
    """The owner map with `candidate` pasted on top, or None if a limit would break."""
    trial = owner.copy()
    trial[candidate.window][candidate.mask] = len(placed)
    boxes = []
    for j, item in enumerate([*placed, candidate]):
        visible = trial == j
        count = int(visible.sum())
        if count == 0 or count < config.min_visible * item.pixel_count:
            return None
        box = _mask_box(visible)
        if not _inside(item.points[4], box):
            return None
        boxes.append(box)
    if _max_pairwise_iou(np.array(boxes)) > config.max_iou:
        return None
    return trial


def _object_count(rng, config: SceneConfig) -> int:
    if rng.random() < config.empty_share:
        return 0
    return int(rng.integers(config.objects[0], config.objects[1] + 1))


def _compose(rng, config: SceneConfig, pools, canvases, negatives=None):
    """One scene: background crop (and distractors on it), objects placed one by one, then
    painted in order."""
    count = _object_count(rng, config)
    background_id = int(rng.integers(len(canvases)))
    image = canvases[background_id].crop(rng, config.size)
    _paste_distractors(rng, config, image, negatives)
    owner = np.full((config.size, config.size), -1, dtype=np.int16)
    placed: list[_Placed] = []
    for _ in range(count):
        for _ in range(MAX_TRIES):
            candidate = _candidate(rng, config, pools)
            trial = None if candidate is None else _accept(candidate, placed, owner, config)
            if trial is not None:
                break
        else:
            # A crowded scene keeps the objects that fit, as long as it has the minimum.
            if len(placed) >= config.objects[0]:
                break
            raise InputError(
                f"could not place object {len(placed) + 1} of {count} in {MAX_TRIES} tries; "
                "use smaller objects (scale), fewer (objects) or allow more overlap "
                "(max_iou, min_visible)"
            )
        owner, placed = trial, [*placed, candidate]
    for item in placed:
        image[item.window][item.mask] = item.pixels[item.mask][:, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), owner, placed, background_id


def _keypoints(points: np.ndarray, j: int, owner: np.ndarray) -> np.ndarray:
    """(5, 3) x, y, visibility: hidden where a later object's pixel covers the point."""
    size = owner.shape[0]
    cells = np.clip(np.floor(points).astype(int), 0, size - 1)
    covered = owner[cells[:, 1], cells[:, 0]] > j
    flags = np.where(covered, OCCLUDED, VISIBLE)
    return np.c_[points, flags].astype(np.float32)


# --------------------------------------------------------------------------- generate


def generate(split: str | Split, count: int, config: SceneConfig | None = None) -> SceneSet:
    """`count` scenes of `split`, drawing objects only from that split of each source."""
    config = config or SceneConfig()
    split = parse_choice(Split, split, "split")
    if count < 0:
        raise InputError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng([config.seed, _SPLIT_STREAM[split]])
    pools = [_pool(source, split) for source in config.sources]
    canvases = [_canvas(name, config.size, config.channels) for name in config.backgrounds]
    negatives = _negatives(split) if config.distractors[1] else None
    size = config.size
    images = np.empty((count, size, size, config.channels), dtype=np.uint8)
    maps = np.zeros((count, size, size), dtype=np.uint8)
    rows: list[tuple] = []
    offsets, background_ids = [0], []
    for i in range(count):
        images[i], owner, placed, background_id = _compose(rng, config, pools, canvases, negatives)
        maps[i] = owner + 1
        background_ids.append(background_id)
        rows += _label_rows(placed, owner, pools, config)
        offsets.append(len(rows))
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 5
    return SceneSet(
        images=images,
        instance_maps=maps,
        offsets=np.asarray(offsets, dtype=np.int64),
        boxes=np.asarray(columns[0], dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(columns[1], dtype=np.int64),
        keypoints=np.asarray(columns[2], dtype=np.float32).reshape(-1, len(KEYPOINT_NAMES), 3),
        source_ids=np.asarray(columns[3], dtype=str),
        source_index=np.asarray(columns[4], dtype=np.int64),
        background_ids=np.asarray(background_ids, dtype=np.int64),
        split=split,
        config=config,
    )


def _label_rows(placed: list[_Placed], owner: np.ndarray, pools, config: SceneConfig) -> list:
    """(box, class id, keypoints, source id, source index) of each placed object."""
    class_offsets = np.cumsum([0] + [len(_CLASS_NAMES[s]) for s in config.sources])
    rows = []
    for j, item in enumerate(placed):
        pool = pools[item.source]
        rows.append(
            (
                _mask_box(owner == j),
                class_offsets[item.source] + pool.labels[item.index],
                _keypoints(item.points, j, owner),
                f"{pool.file}/{pool.file_ids[item.index]}",
                item.index,
            )
        )
    return rows


# --------------------------------------------------------------------------- COCO


def _source_name(scene_set: SceneSet, class_id: int) -> str:
    sizes = np.cumsum([len(_CLASS_NAMES[s]) for s in scene_set.config.sources])
    return scene_set.config.sources[int(np.searchsorted(sizes, class_id, side="right"))].value


def to_coco(scene_set: SceneSet, image_dir: str = "images") -> dict:
    """COCO-style dict: boxes [x, y, w, h], RLE masks, 5 keypoints; category id = class + 1."""
    from pycocotools import mask as rle

    size = scene_set.config.size
    info = {
        "description": scene_set.provenance,
        "version": "1.0",
        "split": scene_set.split.value,
        "seed": scene_set.config.seed,
        "config": scene_set.config.to_dict(),
    }
    categories = [
        {
            "id": c + 1,
            "name": name,
            "supercategory": _source_name(scene_set, c),
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]],
        }
        for c, name in enumerate(scene_set.class_names)
    ]
    images, annotations = [], []
    for i in range(len(scene_set)):
        background_name = scene_set.config.backgrounds[scene_set.background_ids[i]].value
        images.append(
            {
                "id": i + 1,
                "file_name": f"{image_dir}/{i:06d}.png",
                "width": size,
                "height": size,
                "background": background_name,
            }
        )
        masks = scene_set.masks(i)
        encoded = rle.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for j, m in enumerate(range(scene_set.offsets[i], scene_set.offsets[i + 1])):
            annotations.append(_annotation(scene_set, m, i, encoded[j], masks[j]))
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


def _annotation(scene_set: SceneSet, m: int, image_index: int, encoded: dict, mask) -> dict:
    x0, y0, x1, y1 = (float(v) for v in scene_set.boxes[m])
    keypoints = scene_set.keypoints[m]
    return {
        "id": m + 1,
        "image_id": image_index + 1,
        "category_id": int(scene_set.classes[m]) + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")},
        "keypoints": [round(float(v), 3) for v in keypoints.reshape(-1)],
        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
        "source_id": str(scene_set.source_ids[m]),
    }


def write_coco(scene_set: SceneSet, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write `out_dir/images/NNNNNN.png` and `out_dir/annotations.json`; returns the JSON path."""
    from PIL import Image

    out = Path(out_dir)
    annotations = out / "annotations.json"
    if annotations.exists() and not force:
        raise InputError(f"{annotations} exists; pass --force to overwrite")
    coco = to_coco(scene_set)
    for entry, image in zip(coco["images"], scene_set.images, strict=True):
        with atomic_path(out / entry["file_name"], force=True) as tmp:
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, "PNG")
    return write_json(annotations, coco, force=force)


# --------------------------------------------------------------------------- picture


def draw_scenes(
    scene_set: SceneSet,
    path: str | os.PathLike,
    *,
    count: int = 16,
    columns: int = 4,
    force: bool = False,
) -> Path:
    """A PNG grid of the first `count` scenes with boxes, class names and keypoints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(scene_set))
    if count < 1:
        raise InputError("draw_scenes needs at least one scene")
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows + 0.4))
    for i, ax in enumerate(np.atleast_1d(axes).reshape(-1)):
        ax.axis("off")
        if i < count:
            _draw_one(ax, scene_set, i)
    fig.suptitle(scene_set.provenance, fontsize=7)
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def _draw_one(ax, scene_set: SceneSet, index: int) -> None:
    import matplotlib.pyplot as plt

    scene = scene_set.scene(index)
    size = scene_set.config.size
    image = scene.image[..., 0] if scene.image.shape[-1] == 1 else scene.image
    # extent puts pixel edges at integers, the labels' coordinate convention
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, size, size, 0))
    for box, label, points in zip(scene.boxes, scene.classes, scene.keypoints, strict=True):
        colour = plt.cm.tab10(int(label) % 10)
        x0, y0, x1, y1 = box
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.2))
        ax.text(x0, y0 - 1, scene_set.class_names[label], color=colour, fontsize=6, va="bottom")
        quad = np.vstack([points[:4, :2], points[:1, :2]])
        ax.plot(quad[:, 0], quad[:, 1], "--", color="white", lw=0.6)
        hidden = points[:, 2] < VISIBLE
        ax.scatter(points[:4, 0], points[:4, 1], s=8, c=["red", "yellow", "cyan", "magenta"])
        ax.scatter(points[4, 0], points[4, 1], s=14, c="white", marker="x")
        ax.scatter(points[hidden, 0], points[hidden, 1], s=22, facecolors="none", edgecolors="k")
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)

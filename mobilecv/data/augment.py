"""Training-time augmentations from the course, as composable tf functions.

Each augmentation is a callable on one float image (H, W, C) in [0, 1], so it can be
mapped over a tf.data pipeline before batching. `compose()` chains them;
`from_names("mirror,crop")` builds a chain from CLI text.

`apply(image, labels)` moves the labels with the image, for tasks beyond classification:
``box`` (..., 4) corners and ``points`` (..., K, 2) as fractions of the image, and ``mask``
(H, W[, 1]) per-pixel ids follow a flip, crop or warp; photometric steps leave them alone.
An all-zero box means "no object" and stays all-zero.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mobilecv._tf import tf
from mobilecv.errors import InputError


class Augmentation(enum.StrEnum):
    MIRROR = "mirror"
    CROP = "crop"
    ROTATE = "rotate"  # rotation and shear together, as one affine warp
    COLOR = "color"
    PCA = "pca"


@dataclass(frozen=True)
class Mirror:
    """Horizontal flip with probability p."""

    p: float = 0.5
    # After a mirror, point i of a labelled set is the mirror image of point permutation[i]
    # (left and right corners swap); None keeps the order.
    point_permutation: tuple[int, ...] | None = None

    def __call__(self, image):
        return self.apply(image, {})[0]

    def apply(self, image, labels: dict):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        flip = T.random.uniform([]) < self.p

        def mirrored(x):
            return T.cond(flip, lambda: T.reverse(x, [1]), lambda: x)

        labels = dict(labels)
        if "box" in labels:
            box = T.cast(labels["box"], T.float32)
            flipped = T.stack([1.0 - box[..., 2], box[..., 1], 1.0 - box[..., 0], box[..., 3]], -1)
            labels["box"] = T.where(flip & _has_box(box)[..., None], flipped, box)
        if "points" in labels:
            points = T.cast(labels["points"], T.float32)
            flipped = T.stack([1.0 - points[..., 0], points[..., 1]], -1)
            if self.point_permutation is not None:
                flipped = T.gather(flipped, list(self.point_permutation), axis=-2)
                if "visible" in labels:
                    visible = labels["visible"]
                    labels["visible"] = T.where(
                        flip, T.gather(visible, list(self.point_permutation), axis=-1), visible
                    )
            labels["points"] = T.where(flip, flipped, points)
        if "mask" in labels:
            labels["mask"] = mirrored(labels["mask"])
        return mirrored(image), labels


@dataclass(frozen=True)
class RandomCrop:
    """Pad by `padding` pixels (reflect) and crop back to the original size at a random offset."""

    padding: int = 4

    def __call__(self, image):
        return self.apply(image, {})[0]

    def apply(self, image, labels: dict):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        p = self.padding
        shape = T.shape(image)
        padded = T.pad(image, [[p, p], [p, p], [0, 0]], mode="REFLECT")
        oy = T.random.uniform([], 0, 2 * p + 1, dtype=T.int32)
        ox = T.random.uniform([], 0, 2 * p + 1, dtype=T.int32)
        out = T.slice(padded, T.stack([oy, ox, 0]), shape)
        h, w = T.cast(shape[0], T.float32), T.cast(shape[1], T.float32)
        # A label at fraction f moves to f + (p - offset) / size.
        dx = T.cast(p - ox, T.float32) / w
        dy = T.cast(p - oy, T.float32) / h
        labels = dict(labels)
        if "box" in labels:
            box = T.cast(labels["box"], T.float32)
            moved = T.clip_by_value(box + T.stack([dx, dy, dx, dy]), 0.0, 1.0)
            labels["box"] = T.where(_has_box(box)[..., None], moved, box)
        if "points" in labels:
            labels["points"] = T.cast(labels["points"], T.float32) + T.stack([dx, dy])
        if "mask" in labels:
            mask = labels["mask"]
            pads = [[p, p], [p, p]] + [[0, 0]] * (len(mask.shape) - 2)
            begin = T.concat([T.stack([oy, ox]), T.zeros([len(mask.shape) - 2], T.int32)], 0)
            # Reflected as the image is, so the border's reflected pixels keep their labels.
            padded_mask = T.pad(mask, pads, mode="REFLECT")
            labels["mask"] = T.slice(padded_mask, begin, T.shape(mask))
        return out, labels


def _centred(image, matrix):
    """The output->input pixel matrix of ``matrix`` applied about the image centre."""
    T = tf()
    h = T.cast(T.shape(image)[0], T.float32)
    w = T.cast(T.shape(image)[1], T.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    to_centre = T.stack(
        [T.stack([1.0, 0.0, cx]), T.stack([0.0, 1.0, cy]), T.constant([0.0, 0.0, 1.0])]
    )
    from_centre = T.stack(
        [T.stack([1.0, 0.0, -cx]), T.stack([0.0, 1.0, -cy]), T.constant([0.0, 0.0, 1.0])]
    )
    return to_centre @ matrix @ from_centre


def _transform(image, full, interpolation: str = "BILINEAR", fill_mode: str = "NEAREST"):
    T = tf()
    out = T.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=T.reshape(full, [-1])[:8][None, :],
        output_shape=T.shape(image)[:2],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode=fill_mode,
    )
    return out[0]


def _affine(image, matrix):
    """Warp with a 3x3 output->input matrix (about the image centre), nearest-edge fill."""
    return _transform(image, _centred(image, matrix))


def _move_points(points, full, image):
    """Fractions (..., 2) through the inverse of an output->input pixel matrix.

    Pixel centres sit at (i + 0.5) in fractional units but at i in the warp's pixel grid."""
    T = tf()
    size = T.cast(T.stack([T.shape(image)[1], T.shape(image)[0]]), T.float32)
    pixels = points * size - 0.5
    ones = T.ones_like(pixels[..., :1])
    moved = T.linalg.matvec(T.linalg.inv(full), T.concat([pixels, ones], -1))
    return (moved[..., :2] / moved[..., 2:] + 0.5) / size


def _has_box(box):
    T = tf()
    return T.reduce_any(T.not_equal(box, 0.0), axis=-1)


def warp_labels(image, labels: dict, matrix):
    """Warp an image and its labels with a 3x3 output->input matrix about the centre.

    A box becomes the bounding box of its warped corners, clipped to the image."""
    T = tf()
    full = _centred(image, matrix)
    labels = dict(labels)
    if "points" in labels:
        labels["points"] = _move_points(T.cast(labels["points"], T.float32), full, image)
    if "box" in labels:
        box = T.cast(labels["box"], T.float32)
        corners = T.stack(
            [box[..., 0:2], T.stack([box[..., 2], box[..., 1]], -1), box[..., 2:4],
             T.stack([box[..., 0], box[..., 3]], -1)], -2,
        )  # fmt: skip
        moved = _move_points(corners, full, image)
        warped = T.clip_by_value(
            T.concat([T.reduce_min(moved, -2), T.reduce_max(moved, -2)], -1), 0.0, 1.0
        )
        labels["box"] = T.where(_has_box(box)[..., None], warped, box)
    if "mask" in labels:
        mask = labels["mask"]
        grid = mask if len(mask.shape) == 3 else mask[..., None]
        grid = _transform(T.cast(grid, T.float32), full, "NEAREST", "CONSTANT")
        labels["mask"] = T.cast(grid if len(mask.shape) == 3 else grid[..., 0], mask.dtype)
    return _transform(image, full), labels


@dataclass(frozen=True)
class RotateShear:
    """Random rotation in +-max_degrees and horizontal shear in +-max_shear (affine)."""

    max_degrees: float = 15.0
    max_shear: float = 0.15

    def __call__(self, image):
        return self.apply(image, {})[0]

    def apply(self, image, labels: dict):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        angle = T.random.uniform([], -self.max_degrees, self.max_degrees) * (math.pi / 180.0)
        shear = T.random.uniform([], -self.max_shear, self.max_shear)
        return warp_labels(image, labels, rotation_shear(angle, shear))


def warp(image, angle_radians, shear):
    """Rotate by `angle_radians` and shear by `shear` (deterministic; used by RotateShear)."""
    return _affine(image, rotation_shear(angle_radians, shear))


def rotation_shear(angle_radians, shear):
    """The 3x3 output->input matrix of a rotation followed by a horizontal shear."""
    T = tf()
    angle = T.cast(angle_radians, T.float32)
    shear = T.cast(shear, T.float32)
    c, s = T.cos(angle), T.sin(angle)
    zero, one = T.constant(0.0), T.constant(1.0)
    # The transform maps output coordinates to input coordinates.
    rotation = T.stack([T.stack([c, -s, zero]), T.stack([s, c, zero]), T.stack([zero, zero, one])])
    shearing = T.stack(
        [T.stack([one, shear, zero]), T.stack([zero, one, zero]), T.stack([zero, zero, one])]
    )
    return rotation @ shearing


@dataclass(frozen=True)
class ColorShift:
    """Add an independent random offset in +-max_delta to each channel."""

    max_delta: float = 0.1

    def __call__(self, image):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        delta = T.random.uniform([T.shape(image)[-1]], -self.max_delta, self.max_delta)
        return T.clip_by_value(image + delta, 0.0, 1.0)


@dataclass(frozen=True)
class PCAColor:
    """AlexNet's PCA colour augmentation (Krizhevsky et al., 2012).

    Adds sum_i alpha_i * lambda_i * p_i to every pixel, where p_i, lambda_i are the
    eigenvectors/eigenvalues of the RGB pixel covariance over the training set and
    alpha_i ~ N(0, std). Fit the statistics with `PCAColor.fit(images)`.
    """

    eigenvalues: tuple[float, ...]
    eigenvectors: tuple[tuple[float, ...], ...]  # rows are eigenvectors
    std: float = 0.1

    @classmethod
    def fit(cls, images: np.ndarray, std: float = 0.1, scale: float = 1.0 / 255.0) -> PCAColor:
        pixels = np.asarray(images, dtype=np.float64).reshape(-1, np.shape(images)[-1]) * scale
        if pixels.shape[1] == 1:
            variance = float(pixels.var())
            return cls((variance,), ((1.0,),), std)
        values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
        return cls(
            tuple(float(v) for v in values),
            tuple(tuple(float(x) for x in row) for row in vectors.T),
            std,
        )

    def shift(self, alpha):
        """The colour offset for given alphas (one per eigenvector)."""
        T = tf()
        values = T.constant(self.eigenvalues, T.float32)
        vectors = T.constant(self.eigenvectors, T.float32)
        return T.linalg.matvec(vectors, alpha * values, transpose_a=True)

    def __call__(self, image):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        alpha = T.random.normal([len(self.eigenvalues)], stddev=self.std)
        return T.clip_by_value(image + self.shift(alpha), 0.0, 1.0)


@dataclass(frozen=True)
class Compose:
    steps: tuple[Callable, ...]

    def __call__(self, image):
        for step in self.steps:
            image = step(image)
        return image

    def apply(self, image, labels: dict):
        """Every step on the image and the labels; photometric steps move no label."""
        for step in self.steps:
            if hasattr(step, "apply"):
                image, labels = step.apply(image, labels)
            else:
                image = step(image)
        return image, labels


def compose(*steps: Callable) -> Compose:
    return Compose(tuple(steps))


def _names(names: str | Sequence[str]) -> list[Augmentation]:
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    kinds = []
    for item in items:
        try:
            kinds.append(Augmentation(item))
        except ValueError:
            choices = ", ".join(a.value for a in Augmentation)
            raise InputError(f"unknown augmentation {item!r}; choose from {choices}") from None
    return kinds


def check_names(names: str | Sequence[str] | None) -> None:
    """Validate augmentation names without building anything (cheap, before TensorFlow)."""
    if names:
        _names(names)


def from_names(
    names: str | Sequence[str] | None,
    train_images: np.ndarray | None = None,
    point_permutation: Sequence[int] | None = None,
) -> Compose | None:
    """Build a chain from names such as "mirror,crop,rotate,color,pca".

    "pca" needs the training images to fit its colour statistics; ``point_permutation`` is
    how a mirror reorders labelled points (see Mirror).
    """
    if not names:
        return None
    steps: list[Callable] = []
    for kind in _names(names):
        if kind is Augmentation.MIRROR:
            steps.append(
                Mirror(point_permutation=tuple(point_permutation) if point_permutation else None)
            )
        elif kind is Augmentation.CROP:
            steps.append(RandomCrop())
        elif kind is Augmentation.ROTATE:
            steps.append(RotateShear())
        elif kind is Augmentation.COLOR:
            steps.append(ColorShift())
        else:
            if train_images is None:
                raise InputError(
                    "the pca augmentation needs training images to fit its colour statistics"
                )
            steps.append(PCAColor.fit(train_images))
    return compose(*steps)

"""Training-time augmentations from the course, as composable tf functions.

Each augmentation is a callable on one float image (H, W, C) in [0, 1], so it can be
mapped over a tf.data pipeline before batching. `compose()` chains them;
`from_names("mirror,crop")` builds a chain from CLI text.
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

    def __call__(self, image):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        flip = T.random.uniform([]) < self.p
        return T.cond(flip, lambda: T.image.flip_left_right(image), lambda: image)


@dataclass(frozen=True)
class RandomCrop:
    """Pad by `padding` pixels (reflect) and crop back to the original size at a random offset."""

    padding: int = 4

    def __call__(self, image):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        p = self.padding
        padded = T.pad(image, [[p, p], [p, p], [0, 0]], mode="REFLECT")
        return T.image.random_crop(padded, T.shape(image))


def _affine(image, matrix):
    """Warp with a 3x3 output->input matrix (about the image centre), nearest-edge fill."""
    T = tf()
    h = T.cast(T.shape(image)[0], T.float32)
    w = T.cast(T.shape(image)[1], T.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    to_centre = T.convert_to_tensor([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    from_centre = T.convert_to_tensor([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    full = to_centre @ matrix @ from_centre
    params = T.reshape(full, [-1])[:8][None, :]
    out = T.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=params,
        output_shape=T.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return out[0]


@dataclass(frozen=True)
class RotateShear:
    """Random rotation in +-max_degrees and horizontal shear in +-max_shear (affine)."""

    max_degrees: float = 15.0
    max_shear: float = 0.15

    def __call__(self, image):
        T = tf()
        image = T.convert_to_tensor(image, T.float32)
        angle = T.random.uniform([], -self.max_degrees, self.max_degrees) * (math.pi / 180.0)
        shear = T.random.uniform([], -self.max_shear, self.max_shear)
        return warp(image, angle, shear)


def warp(image, angle_radians, shear):
    """Rotate by `angle_radians` and shear by `shear` (deterministic; used by RotateShear)."""
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
    return _affine(image, rotation @ shearing)


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


def compose(*steps: Callable) -> Compose:
    return Compose(tuple(steps))


def from_names(
    names: str | Sequence[str] | None, train_images: np.ndarray | None = None
) -> Compose | None:
    """Build a chain from names such as "mirror,crop,rotate,color,pca".

    "pca" needs the training images to fit its colour statistics.
    """
    if not names:
        return None
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    steps: list[Callable] = []
    for item in items:
        try:
            kind = Augmentation(item)
        except ValueError:
            choices = ", ".join(a.value for a in Augmentation)
            raise InputError(f"unknown augmentation {item!r}; choose from {choices}") from None
        if kind is Augmentation.MIRROR:
            steps.append(Mirror())
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

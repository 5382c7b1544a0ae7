"""Real microscopy for segmentation: the stardist wheel's 512 x 512 nuclei image.

``img2d.tif`` is a real fluorescence image of cell nuclei from the 2018 Data Science Bowl
and ``mask2d.tif`` its label image (one id per nucleus). The task is binary: nucleus (1)
against background (0).

The image is split by place, so no pixel is in two splits:
- train: random tiles from the left three quarters, rows 0-383 (x < 384, y < 384), each
  flipped and rotated by a multiple of 90 degrees at random (seeded);
- validation: the non-overlapping tiles of the strip below it (x < 384, y >= 384), for
  choosing epochs and thresholds;
- test: the non-overlapping tiles of the right quarter (x >= 384), never used for
  training or tuning (the issue's rule).

Intensities are scaled to uint8 by the 1st and 99.8th percentiles of the train region only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobilecv.data.datasets import ArrayData, Split
from mobilecv.errors import InputError

SIDE = 512
TRAIN_COLUMNS = 384  # the left three quarters
TRAIN_ROWS = 384  # the validation strip is below
PERCENTILES = (1.0, 99.8)
CLASS_NAMES = ("background", "nucleus")
SEED = 14


@dataclass(frozen=True)
class NucleiConfig:
    """Tile side in pixels (it must divide the 128-pixel validation strip and test
    quarter) and how many random training tiles to cut."""

    size: int = 64
    train_tiles: int = 2048

    def __post_init__(self) -> None:
        if self.size < 8 or (SIDE - TRAIN_COLUMNS) % self.size:
            raise InputError(f"nuclei tile size must be >= 8 and divide 128; got {self.size}")
        if self.train_tiles < 1:
            raise InputError(f"train_tiles must be >= 1; got {self.train_tiles}")


def _regions() -> dict[Split, tuple[slice, slice]]:
    return {
        Split.TRAIN: (slice(0, TRAIN_ROWS), slice(0, TRAIN_COLUMNS)),
        Split.VALIDATION: (slice(TRAIN_ROWS, SIDE), slice(0, TRAIN_COLUMNS)),
        Split.TEST: (slice(0, SIDE), slice(TRAIN_COLUMNS, SIDE)),
    }


def _scaled(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image[_regions()[Split.TRAIN]], PERCENTILES)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def _grid_tiles(image, mask, size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = image.shape[0] // size, image.shape[1] // size
    cut = [(r * size, c * size) for r in range(rows) for c in range(cols)]
    return (np.stack([image[y : y + size, x : x + size] for y, x in cut]),
            np.stack([mask[y : y + size, x : x + size] for y, x in cut]))  # fmt: skip


def _random_tiles(image, mask, config: NucleiConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    size, n = config.size, config.train_tiles
    ys = rng.integers(0, image.shape[0] - size + 1, n)
    xs = rng.integers(0, image.shape[1] - size + 1, n)
    turns, flips = rng.integers(0, 4, n), rng.random(n) < 0.5
    images, masks = [], []
    for y, x, k, flip in zip(ys, xs, turns, flips, strict=True):
        tile, labels = image[y : y + size, x : x + size], mask[y : y + size, x : x + size]
        if flip:
            tile, labels = tile[:, ::-1], labels[:, ::-1]
        images.append(np.rot90(tile, k))
        masks.append(np.rot90(labels, k))
    return np.stack(images), np.stack(masks)


def load(split: str | Split, config: NucleiConfig | None = None, limit: int | None = None):
    """One split of nucleus tiles as ArrayData: x (N, size, size, 1) uint8, y {"mask":
    (N, size, size) uint8, 1 on nuclei}."""
    from mobilecv.data.assets import stardist_nuclei

    split, config = Split(split), config or NucleiConfig()
    image, labels = stardist_nuclei()
    image, foreground = _scaled(image), (labels > 0).astype(np.uint8)
    rows, cols = _regions()[split]
    if split is Split.TRAIN:
        x, y = _random_tiles(image[rows, cols], foreground[rows, cols], config)
    else:
        x, y = _grid_tiles(image[rows, cols], foreground[rows, cols], config.size)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return ArrayData(
        x=np.ascontiguousarray(x[..., None]),
        y={"mask": np.ascontiguousarray(y)},
        classes=len(CLASS_NAMES),
        name="nuclei",
        provenance=(
            f"real microscopy: stardist img2d.tif nuclei (2018 Data Science Bowl), {split.value} "
            f"region, {len(x)} tiles of {config.size} px"
        ),
    )

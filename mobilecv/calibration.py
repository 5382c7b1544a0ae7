"""Calibration and verification samples for post-training quantisation.

A source is an array, a `.npy`/`.npz` file, an image folder in `class/*.jpg`
layout, or a dataset name looked up in `CALIBRATION_SOURCES`; its images hold
pixels 0..255 (uint8, or float above 1.5) or floats in [0, 1]. Whatever the
source, samples come back as float32 NHWC in the input range the model declares
(`mobilecv.modelinfo`, [0, 1] by default), resized and channel-matched to the
model's input, in a fixed shuffled order so the first `samples` rows calibrate
and the next rows are held out for verification.
Named datasets only ever read their TRAIN split: the test split is kept for
evaluation and is never used to calibrate or tune.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError
from mobilecv.fileio import load_numpy, read_image_rgb
from mobilecv.modelinfo import UNIT_RANGE, map_range

# name -> loader(count) returning up to `count` train-split images (N, H, W[, C]),
# uint8 or float in [0, 1]. The data package registers its datasets here too.
CalibrationLoader = Callable[[int], np.ndarray]
CALIBRATION_SOURCES: dict[str, CalibrationLoader] = {}

FASHION_MNIST_DIR = Path(
    os.environ.get("MOBILECV_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
_SEED = 1234


def register_calibration_source(name: str) -> Callable[[CalibrationLoader], CalibrationLoader]:
    """Decorator: make `name` usable as `--calibration NAME`. Re-registering replaces."""

    def deco(fn: CalibrationLoader) -> CalibrationLoader:
        CALIBRATION_SOURCES[name] = fn
        return fn

    return deco


@register_calibration_source("digits")
def _digits(count: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # 8x8, values 0..16
    return _shuffled(images)[:count]


@register_calibration_source("fashion_mnist")
def _fashion_mnist(count: int) -> np.ndarray:
    return _fashion_mnist_train(FASHION_MNIST_DIR)[:count]


@functools.lru_cache(maxsize=1)
def _fashion_mnist_train(root: Path) -> np.ndarray:
    # Decompressing 60k images takes seconds; calibration and verification both ask.
    path = root / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        raise InputError(
            f"Fashion-MNIST not found at {path}; install it with "
            "`sudo apt-get install dataset-fashion-mnist`"
        )
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return _shuffled(images)


def _shuffled(arr: np.ndarray) -> np.ndarray:
    # A fixed permutation spreads classes over calibration and held-out rows.
    return arr[np.random.default_rng(_SEED).permutation(len(arr))]


def load_samples(
    source: str | os.PathLike | np.ndarray,
    count: int,
    input_shape: tuple[int, int, int],
    input_range: tuple[float, float] = UNIT_RANGE,
) -> np.ndarray:
    """Return up to `count` samples from `source` shaped to `input_shape` (H, W, C),
    with values in `input_range` (the model's declared input range)."""
    if count < 1:
        raise InputError(f"samples must be >= 1, got {count}")
    if isinstance(source, np.ndarray):
        images = source[:count]
    else:
        text = os.fspath(source)
        path = Path(text)
        if text in CALIBRATION_SOURCES:
            images = CALIBRATION_SOURCES[text](count)
        elif path.suffix == ".npy" and path.is_file():
            images = _shuffled(load_numpy(path))[:count]
        elif path.suffix == ".npz" and path.is_file():
            images = _shuffled(_npz_images(path))[:count]
        elif path.is_dir():
            images = _folder_images(path, count)
        elif path.suffix in (".npy", ".npz"):
            raise InputError(f"calibration file {path} does not exist")
        else:
            known = ", ".join(sorted(CALIBRATION_SOURCES))
            raise InputError(
                f"unknown calibration source {text!r}: give a .npy/.npz file, an image "
                f"folder (class/*.jpg) or one of: {known}"
            )
    if len(images) == 0:
        raise InputError(
            f"calibration source {source if not isinstance(source, np.ndarray) else 'array'} is empty"
        )
    return fit_to_input(np.asarray(images), input_shape, input_range)


def cover_range(rows: np.ndarray, input_range: tuple[float, float]) -> np.ndarray:
    """A copy of the calibration rows whose first and last values are the range's bounds.

    The converter quantises the model input over the min and max it sees while
    calibrating; resized images rarely reach the exact bounds (Fashion-MNIST at 32 px
    peaks at 254.x), and an input tensor that stops short clips valid inputs. Two values
    out of the whole set move the other layers' statistics by no more than any bright or
    dark pixel of a real image does.
    """
    out = np.array(rows, dtype=np.float32, copy=True)
    if out.size >= 2:
        out.flat[0], out.flat[-1] = input_range
    return out


def _npz_images(path: Path) -> np.ndarray:
    with load_numpy(path) as npz:
        for key in ("x_train", "x", "images", "train_images", "arr_0"):
            if key in npz.files:
                return npz[key]
        # Otherwise the first array that looks like images (rank >= 3).
        for key in npz.files:
            if npz[key].ndim >= 3:
                return npz[key]
    raise InputError(f"{path}: no image array found (looked for x_train, x, images, arr_0)")


def _folder_images(root: Path, count: int) -> np.ndarray:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted(c.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: no images found (expected class/*.jpg)")
    order = np.random.default_rng(_SEED).permutation(len(files))[:count]
    images = [read_image_rgb(files[i]) for i in order]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:  # mixed sizes: bring all to the first one before stacking
        h, w = images[0].shape[:2]
        images = [_resize(im[None].astype(np.float32), h, w)[0] for im in images]
    return np.stack(images)


def fit_to_input(
    images: np.ndarray,
    input_shape: tuple[int, int, int],
    input_range: tuple[float, float] = UNIT_RANGE,
) -> np.ndarray:
    """Scale to [0, 1], add/match channels, resize to (H, W, C), map onto `input_range`."""
    h, w, c = (int(d) for d in input_shape)
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InputError(f"calibration samples must be images (N, H, W[, C]); got shape {x.shape}")
    if x.size and x.dtype != np.uint8 and float(np.min(x)) < 0.0:
        raise InputError(
            "calibration images must hold pixels 0..255 or floats in [0, 1] (they are mapped "
            f"to the model's input range); got values down to {float(np.min(x)):.3g}"
        )
    if x.dtype == np.uint8 or (x.size and float(np.max(x)) > 1.5):
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if x.shape[-1] != c:
        if x.shape[-1] == 1:
            x = np.repeat(x, c, axis=-1)
        elif c == 1 and x.shape[-1] in (3, 4):
            x = (x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        else:
            raise InputError(f"cannot map {x.shape[-1]}-channel samples to a {c}-channel input")
    if x.shape[1:3] != (h, w):
        x = _resize(x, h, w)
    return np.ascontiguousarray(map_range(x, input_range, peak=1.0), dtype=np.float32)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    from mobilecv._tf import tf

    return tf().image.resize(x, (h, w), method="bilinear").numpy().astype(np.float32)

"""Loaders for packaged, download-free datasets, as arrays or tf.data pipelines.

Every source is split the same way: a validation split is carved from TRAIN with a
fixed seed, so tuning and calibration never see the test split. Sources without a
test split of their own (digits, .npz without x_test, a flat image folder) get a
fixed-seed test split carved first.

Arrays hold pixels 0..255. The pipelines hand a model its images in the input range it
declares (`mobilecv.modelinfo`: [0, 1] unless the model says otherwise); augmentations
run before that mapping, on [0, 1] images.
"""

from __future__ import annotations

import enum
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilecv._tf import tf
from mobilecv.errors import InputError
from mobilecv.fileio import load_numpy, read_image_rgb
from mobilecv.modelinfo import UNIT_RANGE, get_info, map_range

FASHION_MNIST_DIR = Path(
    os.environ.get("MOBILECV_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_SEED = 1234


class DatasetName(enum.StrEnum):
    """Built-in datasets; anything else passed to load() must be a path."""

    FASHION_MNIST = "fashion_mnist"
    DIGITS = "digits"


class Split(enum.StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


@dataclass(frozen=True)
class ArrayData:
    """One split as arrays: images uint8 (N, H, W, C) and labels: (N,) class ids for
    classification, a dict of (N, ...) arrays for other tasks (see mobilecv.tasks)."""

    x: np.ndarray
    y: np.ndarray | dict[str, np.ndarray]
    classes: int
    name: str
    provenance: str = ""  # e.g. "synthetic composition: ..." for generated scenes

    def __len__(self) -> int:
        return len(self.x)


# --------------------------------------------------------------------------- sources


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def _fashion_mnist() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    files = {
        "xtr": "train-images-idx3-ubyte.gz",
        "ytr": "train-labels-idx1-ubyte.gz",
        "xte": "t10k-images-idx3-ubyte.gz",
        "yte": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [name for name in files.values() if not (FASHION_MNIST_DIR / name).exists()]
    if missing:
        raise InputError(
            f"Fashion-MNIST not found under {FASHION_MNIST_DIR} (missing {', '.join(missing)}); "
            "install it with: sudo apt-get install dataset-fashion-mnist"
        )
    xtr = _read_idx(FASHION_MNIST_DIR / files["xtr"], 16).reshape(-1, 28, 28, 1)
    ytr = _read_idx(FASHION_MNIST_DIR / files["ytr"], 8).astype(np.int64)
    xte = _read_idx(FASHION_MNIST_DIR / files["xte"], 16).reshape(-1, 28, 28, 1)
    yte = _read_idx(FASHION_MNIST_DIR / files["yte"], 8).astype(np.int64)
    return (xtr, ytr), (xte, yte)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities -> 0..255 so every source shares the uint8 range.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return x, digits.target.astype(np.int64)


def _npz(path: Path):
    with load_numpy(path) as archive:
        keys = set(archive.files)
        if not {"x", "y"} <= keys:
            raise InputError(
                f"{path}: an .npz dataset needs arrays 'x' and 'y' (found {sorted(keys)})"
            )
        x, y = archive["x"], archive["y"].astype(np.int64).reshape(-1)
        test = (
            (archive["x_test"], archive["y_test"].astype(np.int64).reshape(-1))
            if {"x_test", "y_test"} <= keys
            else None
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != len(y):
        raise InputError(
            f"{path}: expected x of shape (N, H, W[, C]) matching y (N,), got {x.shape} and {y.shape}"
        )
    if test is not None and test[0].ndim == 3:
        test = (test[0][..., None], test[1])
    return (x, y), test


def _read_folder(root: Path, class_names: Sequence[str] | None = None):
    from PIL import Image

    classes = (
        sorted(p.name for p in root.iterdir() if p.is_dir())
        if class_names is None
        else list(class_names)
    )
    if not classes:
        raise InputError(f"{root}: expected one sub-folder per class (class/*.jpg)")
    images, labels, size = [], [], None
    for index, name in enumerate(classes):
        folder = root / name
        files = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        for file in files:
            image = read_image_rgb(file)
            # Images of mixed sizes are brought to the first one's size here; load()
            # resizes to the model's resolution afterwards.
            size = size or image.shape[1::-1]
            if image.shape[1::-1] != size:
                image = np.asarray(Image.fromarray(image).resize(size), dtype=np.uint8)
            images.append(image)
            labels.append(index)
    if not images:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found in class folders")
    return (np.stack(images), np.asarray(labels, dtype=np.int64)), classes


def _image_folder(root: Path):
    if (root / "train").is_dir():
        (x, y), classes = _read_folder(root / "train")
        test = _read_folder(root / "test", classes)[0] if (root / "test").is_dir() else None
        return (x, y), test
    return _read_folder(root)[0], None


def _carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed (keep, held_out) index split; held_out has round(n*fraction) items."""
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


def resolve_name(name_or_path: str | os.PathLike) -> DatasetName | Path:
    text = os.fspath(name_or_path)
    try:
        return DatasetName(text)
    except ValueError:
        pass
    path = Path(text)
    if path.suffix == ".npz" and path.is_file():
        return path
    if path.is_dir():
        return path
    choices = ", ".join(d.value for d in DatasetName)
    raise InputError(
        f"unknown dataset {text!r}: use one of {choices}, an .npz file or a class/*.jpg folder"
    )


def load_arrays(
    name_or_path: str | os.PathLike,
    split: str | Split = Split.TRAIN,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    limit: int | None = None,
    seed: int = SPLIT_SEED,
) -> ArrayData:
    """Return one split as arrays at the source's native size and channel count.

    `limit` keeps the first N items of the split (after the fixed-seed split), for
    quick runs and tests.
    """
    split = Split(split) if not isinstance(split, Split) else split
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    source = resolve_name(name_or_path)
    if source is DatasetName.FASHION_MNIST:
        train, test = _fashion_mnist()
    elif source is DatasetName.DIGITS:
        train, test = _digits(), None
    elif source.suffix == ".npz":
        train, test = _npz(source)
    else:
        train, test = _image_folder(source)
    x, y = train
    if test is None:
        keep, held = _carve(len(y), test_fraction, seed + 1)
        test = (x[held], y[held])
        x, y = x[keep], y[keep]
    if split is Split.TEST:
        x, y = test
    else:
        keep, held = _carve(len(y), val_fraction, seed)
        idx = keep if split is Split.TRAIN else held
        x, y = x[idx], y[idx]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    classes = int(max(train[1].max(), test[1].max())) + 1
    label = source.value if isinstance(source, DatasetName) else str(source)
    return ArrayData(x=x, y=y, classes=classes, name=label)


# --------------------------------------------------------------------------- tf.data


def prepare_images(
    x,
    resolution: int | tuple[int, int] | None,
    channels: int | None,
    input_range: tuple[float, float] = UNIT_RANGE,
):
    """Pixel images (0..255) as float32 at the model's resolution and channel count,
    mapped onto `input_range`, the range the model declares (tf ops)."""
    return map_range(_unit_images(x, resolution, channels), input_range, peak=1.0)


def model_inputs(images: np.ndarray, model) -> np.ndarray:
    """Pixel images as `model` takes them: its resolution, channels and input range."""
    shape = model.input_shape
    x = prepare_images(images, (shape[1], shape[2]), shape[3], get_info(model).input_range)
    return np.asarray(x, dtype=np.float32)


def _unit_images(x, resolution: int | tuple[int, int] | None, channels: int | None):
    """Pixels -> float32 in [0, 1], channels matched, resized (tf ops)."""
    T = tf()
    x = T.cast(x, T.float32) * (1.0 / 255.0)
    have = x.shape[-1]
    if channels is not None and channels != have:
        if have == 1:
            x = T.repeat(x, channels, axis=-1)
        elif have == 3 and channels == 1:
            x = T.image.rgb_to_grayscale(x)
        else:
            raise InputError(f"cannot convert {have}-channel images to {channels} channels")
    if resolution is not None:
        size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if tuple(x.shape[-3:-1]) != size:
            x = T.image.resize(x, size, method="bilinear")
    return x


def resize_nearest(mask, size: tuple[int, int]):
    """A per-pixel label map (H, W[, ...]) at ``size`` by the nearest pixel centre: the
    rule of mobilecv.postprocess.nearest_indices, so tf.data and numpy scoring agree."""
    from mobilecv.postprocess import nearest_indices

    T = tf()
    height, width = int(mask.shape[0]), int(mask.shape[1])
    if (height, width) == tuple(size):
        return mask
    mask = T.gather(mask, nearest_indices(height, size[0]), axis=0)
    return T.gather(mask, nearest_indices(width, size[1]), axis=1)


def _labels_at(y, resolution):
    """Labels with a per-pixel ``mask`` resized with the image, so that augmentation,
    which moves both by the image's pixels, keeps them aligned."""
    if resolution is None or not isinstance(y, dict) or "mask" not in y:
        return y
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    return {**y, "mask": resize_nearest(y["mask"], size)}


def to_dataset(
    data: ArrayData,
    *,
    resolution: int | tuple[int, int] | None = None,
    channels: int | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: Callable | None = None,
    input_range: tuple[float, float] = UNIT_RANGE,
    seed: int = 0,
    targets: Callable | None = None,
    order: np.ndarray | None = None,
):
    """Turn arrays into a batched tf.data pipeline of (image float32, labels).

    Images are augmented in [0, 1], then mapped onto `input_range` (the model's). Labels
    that are a dict (boxes, points, masks: tasks beyond classification) move with the
    image (`augment.apply`). `targets` (a task's `keras_targets`, tf ops) turns labels into
    what Keras fits: (targets) or (targets, sample weights) per element. `order` (sample
    indices, repeats allowed) replaces the data's own order; it is not shuffled.
    """
    T = tf()
    if order is not None and shuffle:
        raise InputError("an explicit sample order is not shuffled")
    if order is None:
        ds = T.data.Dataset.from_tensor_slices((data.x, data.y))
    else:
        ds = _in_order(data, np.asarray(order, dtype=np.int64))
    if shuffle:
        ds = ds.shuffle(min(len(data), 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda x, y: (_unit_images(x, resolution, channels), _labels_at(y, resolution)),
        num_parallel_calls=T.data.AUTOTUNE,
    )
    if augment is not None:
        # One call at a time: the augmentations draw from stateful random ops, and parallel
        # calls would take the draws in a racy order, so a seeded run would not repeat.
        if isinstance(data.y, dict):
            ds = ds.map(lambda x, y: augment.apply(x, y))
        else:
            ds = ds.map(lambda x, y: (augment(x), y))
    ds = ds.map(
        lambda x, y: (map_range(x, input_range, peak=1.0), y), num_parallel_calls=T.data.AUTOTUNE
    )
    if targets is not None:
        ds = ds.map(lambda x, y: (x, *_fit_pair(targets(y))), num_parallel_calls=T.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(T.data.AUTOTUNE)


def _in_order(data: ArrayData, order: np.ndarray):
    """(image, labels) elements of `data` at the indices `order`, gathered in the graph."""
    T = tf()
    if order.ndim != 1 or (order.size and not 0 <= order.min() <= order.max() < len(data)):
        raise InputError(f"a sample order must index the {len(data)} samples")
    x = T.constant(data.x)
    y = T.nest.map_structure(T.constant, data.y)
    return T.data.Dataset.from_tensor_slices(order).map(
        lambda i: (T.gather(x, i), T.nest.map_structure(lambda v: T.gather(v, i), y))
    )


def _fit_pair(pair) -> tuple:
    """(targets, weights) -> the tail of a Keras element: (targets,) or (targets, weights)."""
    targets, weights = pair
    return (targets,) if weights is None else (targets, weights)


def load(
    name_or_path: str | os.PathLike,
    split: str | Split = Split.TRAIN,
    resolution: int | tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    batch_size: int = 32,
    shuffle: bool | None = None,
    augment: Callable | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    input_range: tuple[float, float] = UNIT_RANGE,
    seed: int = 0,
):
    """A tf.data pipeline for one split with the model's resolution and channels applied.

    Images are float32 in `input_range`: [0, 1] by default, the model's declared range
    (`mobilecv.modelinfo.get_info(model).input_range`) when feeding a model. The
    training split is shuffled by default.
    """
    split = Split(split) if not isinstance(split, Split) else split
    data = load_arrays(name_or_path, split, val_fraction=val_fraction, limit=limit)
    return to_dataset(
        data,
        resolution=resolution,
        channels=channels,
        batch_size=batch_size,
        shuffle=(split is Split.TRAIN) if shuffle is None else shuffle,
        augment=augment,
        input_range=input_range,
        seed=seed,
    )

"""Dataset loaders and augmentations: splits are disjoint and each augmentation does what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobilecv.data import augment as aug
from mobilecv.data import datasets, load, load_arrays
from mobilecv.errors import InputError


def _fingerprints(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def test_digits_splits_are_disjoint_and_cover_the_set():
    parts = {s: load_arrays("digits", s) for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    assert all(p.classes == 10 for p in parts.values())
    # Validation is carved from train, test is separate: no sample index appears twice.
    tr, va, te = (np.arange(len(p)) for p in parts.values())
    assert len(tr) + len(va) + len(te) == 1797
    assert len(parts["validation"]) == round(0.1 * len(parts["train"]) / 0.9)
    again = load_arrays("digits", "validation")
    np.testing.assert_array_equal(again.x, parts["validation"].x)  # fixed seed


@pytest.mark.skipif(
    not datasets.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed"
)
def test_fashion_mnist_full_size_and_held_out_from_train():
    train = load_arrays("fashion_mnist", "train")
    val = load_arrays("fashion_mnist", "validation")
    test = load_arrays("fashion_mnist", "test")
    assert (len(train), len(val), len(test)) == (54000, 6000, 10000)
    assert train.x.shape[1:] == (28, 28, 1) and train.x.dtype == np.uint8
    assert np.bincount(test.y).tolist() == [1000] * 10
    # validation images come from the 60k training file, never from the test file
    assert not (_fingerprints(val.x[:500]) & _fingerprints(test.x))


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_arrays("fashion_mnist")


def test_unknown_dataset_is_input_error():
    with pytest.raises(InputError, match="unknown dataset"):
        load_arrays("imagenet")


def test_pipeline_applies_resolution_and_channels():
    ds = load("digits", "validation", resolution=32, channels=3, batch_size=8, limit=20)
    x, y = next(iter(ds))
    assert x.shape == (8, 32, 32, 3) and x.dtype.name == "float32"
    assert float(np.min(x)) >= 0.0 and float(np.max(x)) <= 1.0
    assert np.allclose(x[..., 0], x[..., 2])  # grey replicated to 3 channels
    assert sum(int(b[1].shape[0]) for b in ds) == 20


def test_npz_and_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 12, 12), dtype=np.uint8)
    y = np.arange(50) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    tr = load_arrays(tmp_path / "d.npz", "train")
    te = load_arrays(tmp_path / "d.npz", "test")
    assert (
        tr.x.shape[1:] == (12, 12, 1)
        and len(tr) + len(te) + len(load_arrays(tmp_path / "d.npz", "validation")) == 50
    )
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(InputError, match="'x' and 'y'"):
        load_arrays(tmp_path / "bad.npz")

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            colour = (200, 10, 10) if cls == "cat" else (10, 10, 200)
            Image.new("RGB", (10, 10), colour).save(tmp_path / "imgs" / cls / f"{i}.jpg")
    all_train = load_arrays(tmp_path / "imgs", "train")
    assert all_train.classes == 2 and all_train.x.shape[1:] == (10, 10, 3)
    # label 0 is "cat" (sorted folder names): its images are red
    cats = all_train.x[all_train.y == 0]
    assert cats[..., 0].mean() > 150 > cats[..., 2].mean()


# ----------------------------------------------------------------- augmentations


def _gradient(h=16, w=16, c=3):
    xs = np.linspace(0, 1, w, dtype=np.float32)
    return np.broadcast_to(xs[None, :, None], (h, w, c)).copy()


def test_mirror_flips_left_right():
    img = _gradient()
    out = aug.Mirror(p=1.0)(img).numpy()
    np.testing.assert_allclose(out, img[:, ::-1])
    np.testing.assert_allclose(aug.Mirror(p=0.0)(img).numpy(), img)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    rng = np.random.default_rng(1)
    img = rng.random((12, 12, 1)).astype(np.float32)
    padded = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="reflect")
    seen = set()
    for _ in range(10):
        out = aug.RandomCrop(padding=3)(img).numpy()
        assert out.shape == img.shape
        matches = [
            (i, j)
            for i in range(7)
            for j in range(7)
            if np.array_equal(padded[i : i + 12, j : j + 12], out)
        ]
        assert matches, "crop is not a window of the padded image"
        seen.add(matches[0])
    assert len(seen) > 1  # offsets actually vary


def test_rotation_by_90_degrees_and_shear():
    img = np.zeros((15, 15, 1), np.float32)
    img[7, 2:13] = 1.0  # horizontal bar through the centre
    rotated = aug.warp(img, math.pi / 2, 0.0).numpy()
    np.testing.assert_allclose(rotated[2:13, 7, 0], 1.0, atol=1e-4)  # now vertical
    assert rotated[7, 2:5].max() < 1e-4

    vertical = np.zeros((15, 15, 1), np.float32)
    vertical[:, 7] = 1.0
    sheared = aug.warp(vertical, 0.0, 0.5).numpy()[..., 0]
    cols = [int(np.argmax(row)) for row in sheared[2:13]]
    assert cols[0] != cols[-1]  # the bar leans: shear moved rows sideways by different amounts
    assert sheared[7, 7] > 0.9  # the centre stays put

    random_out = aug.RotateShear(max_degrees=30)(img).numpy()
    assert random_out.shape == img.shape and not np.array_equal(random_out, img)


def test_color_shift_is_a_constant_offset_per_channel():
    img = np.full((8, 8, 3), 0.5, np.float32) + _gradient(8, 8, 3) * 0.1
    out = aug.ColorShift(max_delta=0.2)(img).numpy()
    diff = (out - img).reshape(-1, 3)
    assert np.allclose(diff, diff[0], atol=1e-6)  # same shift everywhere in a channel
    assert np.all(np.abs(diff[0]) <= 0.2) and np.abs(diff[0]).max() > 0
    assert len(set(np.round(diff[0], 6))) == 3  # channels shift independently


def test_pca_colour_moves_pixels_along_the_principal_axis():
    rng = np.random.default_rng(0)
    # Colours vary mostly along (1, 1, 0)/sqrt(2)
    t = rng.normal(0, 40, (2000, 1))
    pixels = 128 + t * np.array([[1.0, 1.0, 0.0]]) / np.sqrt(2) + rng.normal(0, 2, (2000, 3))
    images = np.clip(pixels, 0, 255).reshape(20, 10, 10, 3)
    pca = aug.PCAColor.fit(images, std=0.5)
    principal = np.asarray(pca.eigenvectors[int(np.argmax(pca.eigenvalues))])
    assert abs(abs(principal @ np.array([1, 1, 0]) / np.sqrt(2)) - 1) < 1e-2
    img = np.full((4, 4, 3), 0.5, np.float32)
    out = pca(img).numpy()
    shift = (out - img)[0, 0]
    assert np.allclose(out - img, shift, atol=1e-6)  # one colour offset for the whole image
    cosine = abs(shift @ principal) / (np.linalg.norm(shift) + 1e-12)
    assert cosine > 0.95  # the offset lies along the dominant colour direction


def test_compose_and_names():
    chain = aug.from_names("mirror,color")
    assert [type(s) for s in chain.steps] == [aug.Mirror, aug.ColorShift]
    with pytest.raises(InputError, match="unknown augmentation"):
        aug.from_names("mirror,blur")
    with pytest.raises(InputError, match="pca"):
        aug.from_names("pca")
    img = _gradient()
    out = aug.compose(aug.Mirror(p=1.0), aug.Mirror(p=1.0))(img).numpy()
    np.testing.assert_allclose(out, img)  # two flips cancel
    ds = load(
        "digits",
        "train",
        16,
        1,
        batch_size=4,
        limit=8,
        augment=aug.from_names("mirror,crop,rotate,color"),
    )
    assert next(iter(ds))[0].shape == (4, 16, 16, 1)

"""Augmentations move boxes, points and masks with the image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobilecv._tf import tf
from mobilecv.data.augment import (
    Mirror,
    RandomCrop,
    RotateShear,
    compose,
    rotation_shear,
    warp_labels,
)

SIZE = 40


def _scene():
    """A bright rectangle (the object) with one brighter dot per labelled point."""
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    x0, y0, x1, y1 = 8, 12, 24, 30  # pixel columns 8..23, rows 12..29
    image[y0:y1, x0:x1] = 0.5
    dots = [(9, 13), (22, 13), (22, 28)]  # (col, row): near three corners
    for c, r in dots:
        image[r, c] = 1.0
    mask = (image[..., 0] > 0).astype(np.int32)
    labels = {
        "box": np.array([x0, y0, x1, y1], np.float32) / SIZE,
        "points": (np.array(dots, np.float32) + 0.5) / SIZE,  # pixel centres as fractions
        "mask": mask,
    }
    return image, labels


def _box_of(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32) / SIZE


def _check(image, labels, tol_px: float):
    image = np.asarray(image)
    box = np.asarray(labels["box"])
    assert np.abs(box - _box_of(image[..., 0] > 0.25)).max() * SIZE <= tol_px
    mask = np.asarray(labels["mask"])
    assert np.abs(_box_of(mask > 0) - _box_of(image[..., 0] > 0.25)).max() * SIZE <= tol_px
    for point in np.asarray(labels["points"]):
        c, r = (point * SIZE - 0.5).round().astype(int)
        window = image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2, 0]
        assert window.max() > 0.7, (point * SIZE, "no dot near the moved point")


@pytest.mark.parametrize(
    "step", [Mirror(p=1.0), RandomCrop(6), compose(Mirror(p=1.0), RandomCrop(3))], ids=str
)
def test_flips_and_crops_move_labels_exactly(step):
    tf().random.set_seed(3)
    image, labels = _scene()
    for _ in range(4):
        out, moved = step.apply(image, labels)
        _check(out, moved, tol_px=0.01)


def test_a_rotation_moves_points_and_boxes_with_the_pixels():
    image, labels = _scene()
    out, moved = warp_labels(image, labels, rotation_shear(math.radians(20), 0.0))
    # Points land on their dots; the box is the hull of the rotated box (a little larger
    # than the rotated pixels' box, never smaller).
    _check_points_only(out, moved)
    pixels = _box_of(np.asarray(out)[..., 0] > 0.25)
    box = np.asarray(moved["box"])
    assert np.all(box[:2] <= pixels[:2] + 1 / SIZE) and np.all(box[2:] >= pixels[2:] - 1 / SIZE)
    assert np.abs(_box_of(np.asarray(moved["mask"]) > 0) - pixels).max() * SIZE <= 1.0


def _check_points_only(image, labels):
    for point in np.asarray(labels["points"]):
        c, r = (point * SIZE - 0.5).round().astype(int)
        assert np.asarray(image)[r - 1 : r + 2, c - 1 : c + 2, 0].max() > 0.6


def test_mirror_reorders_points_and_keeps_absent_boxes_empty():
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    labels = {
        "box": np.zeros(4, np.float32),
        "points": np.array([[0.1, 0.2], [0.9, 0.2]], np.float32),
        "visible": np.array([1, 0]),
    }
    _, moved = Mirror(p=1.0, point_permutation=(1, 0)).apply(image, labels)
    assert np.all(np.asarray(moved["box"]) == 0)
    # Point 0 (left) is now the mirror of old point 1 (right) and keeps its visibility.
    np.testing.assert_allclose(np.asarray(moved["points"]), [[0.1, 0.2], [0.9, 0.2]], atol=1e-6)
    assert list(np.asarray(moved["visible"])) == [0, 1]


def test_random_rotation_runs_inside_tf_data():
    image, labels = _scene()
    T = tf()
    ds = T.data.Dataset.from_tensors((image, labels)).repeat(3)
    ds = ds.map(lambda x, y: RotateShear(10, 0.0).apply(x, y))
    for x, y in ds:
        assert x.shape == (SIZE, SIZE, 1) and y["box"].shape == (4,)

"""Anchors by k-means with the distance 1 - IoU (mobilecv.anchors) and `mobilecv anchors`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mobilecv.anchors import (
    coco_shapes,
    corners_to_shapes,
    kmeans_anchors,
    mean_best_iou,
    shape_iou,
    square_grid,
)
from mobilecv.errors import InputError

# Three well-separated shapes (fractions of the image): tall, small square, wide; in
# ascending order of area, as kmeans_anchors sorts them.
CENTRES = np.array([[0.06, 0.40], [0.15, 0.20], [0.50, 0.25]])


def clustered(per: int = 200, spread: float = 0.05, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c * rng.uniform(1 - spread, 1 + spread, (per, 2)) for c in CENTRES])


# ------------------------------------------------------------------------ shape_iou


def test_shape_iou_hand_cases():
    boxes = np.array([[1.0, 1.0], [1.0, 2.0], [3.0, 0.5]])
    assert shape_iou(boxes, boxes).diagonal() == pytest.approx([1.0, 1.0, 1.0])
    assert shape_iou([[1, 1]], [[2, 2]])[0, 0] == pytest.approx(0.25)
    assert shape_iou([[1, 2]], [[2, 1]])[0, 0] == pytest.approx(1 / 3)
    iou = shape_iou(boxes, [[1, 1], [2, 2]])
    assert iou.shape == (3, 2)
    assert np.allclose(iou, shape_iou([[1, 1], [2, 2]], boxes).T)  # symmetric
    assert shape_iou([[0, 1]], [[0, 1]])[0, 0] == 0.0  # no area: no overlap, no NaN


def test_mean_best_iou():
    assert mean_best_iou([[1, 1], [2, 2]], [[1, 1], [2, 2]]) == pytest.approx(1.0)
    assert mean_best_iou([[1, 1], [2, 2]], [[1, 1]]) == pytest.approx((1 + 0.25) / 2)


# ------------------------------------------------------------------------ k-means


def test_kmeans_recovers_three_separated_shape_clusters():
    wh = clustered()
    anchors, best = kmeans_anchors(wh, 3, seed=0)
    assert anchors.shape == (3, 2)
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.03)
    area = anchors[:, 0] * anchors[:, 1]
    assert np.all(np.diff(area) > 0)  # sorted by area
    assert best == pytest.approx(mean_best_iou(wh, anchors))
    assert best > 0.9


def test_kmeans_is_deterministic_for_a_seed_and_seeds_agree_on_easy_data():
    wh = clustered()
    a, best_a = kmeans_anchors(wh, 3, seed=7)
    b, best_b = kmeans_anchors(wh, 3, seed=7)
    assert np.array_equal(a, b) and best_a == best_b
    c, _ = kmeans_anchors(wh, 3, seed=8)
    np.testing.assert_allclose(c, a, rtol=0.03)


def test_kmeans_beats_the_square_grid_baseline():
    wh = clustered()
    grid = square_grid(wh, 3)
    assert grid.shape == (3, 2) and np.array_equal(grid[:, 0], grid[:, 1])  # squares
    _, best = kmeans_anchors(wh, 3)
    assert best > mean_best_iou(wh, grid) + 0.1


def test_one_anchor_and_zero_area_boxes_dropped():
    wh = np.concatenate([clustered(per=50), [[0.0, 0.3], [0.2, 0.0], [-0.1, 0.2]]])
    anchors, best = kmeans_anchors(wh, 1)
    assert anchors.shape == (1, 2)
    assert 0 < best < 1
    assert best == pytest.approx(mean_best_iou(wh[:-3], anchors))


def test_k_equal_to_the_distinct_shapes_puts_one_anchor_on_each():
    wh = np.array([[1.0, 1.0]] * 5 + [[1.0, 3.0]] * 4 + [[4.0, 1.0]] * 3)
    anchors, best = kmeans_anchors(wh, 3, seed=3)
    assert best == pytest.approx(1.0)
    np.testing.assert_allclose(anchors, [[1, 1], [1, 3], [4, 1]])


def test_an_emptied_cluster_is_reseeded_from_the_farthest_box():
    from mobilecv.anchors import _update

    wh = np.array([[1.0, 1.0]] * 3 + [[1.0, 1.1], [5.0, 5.0]])
    anchors = np.array([[1.0, 1.0], [1.0, 1.05], [3.0, 3.0]])
    assign = np.zeros(5, dtype=np.int64)  # clusters 1 and 2 emptied
    new = _update(wh, assign, anchors)
    # The farthest box (5, 5) seeds cluster 1; then the farthest left, (1, 1.1), cluster 2.
    np.testing.assert_allclose(new, [[1.0, 1.0], [5.0, 5.0], [1.0, 1.1]])
    assert assign.tolist() == [0, 0, 0, 2, 1]


def test_every_anchor_owns_boxes_whatever_the_seed():
    wh = np.concatenate([clustered(per=100, spread=0.01), [[0.9, 0.9]] * 2])
    for seed in range(10):
        anchors, _ = kmeans_anchors(wh, 4, seed=seed)
        owners = np.bincount(shape_iou(wh, anchors).argmax(1), minlength=4)
        assert (owners > 0).all(), (seed, anchors)


@pytest.mark.parametrize(
    ("wh", "k", "message"),
    [
        ([[1, 1], [2, 2]], 3, "at least 3 distinct"),
        ([[1, 1]] * 10, 2, "at least 2 distinct"),
        ([[1, 1], [2, 2]], 0, "must be >= 1"),
        (np.ones((4, 3)), 1, "(N, 2)"),
        (np.ones(4), 1, "(N, 2)"),
        ([[0, 1], [1, 0]], 1, "at least 1 distinct"),
        ([[np.nan, 1], [1, 1]], 1, "NaN"),
    ],
)
def test_kmeans_input_errors(wh, k, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        kmeans_anchors(wh, k)
    assert "\n" not in str(err.value)


def test_corners_to_shapes_skips_padding():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.4, 0.3]
    boxes[1, 1] = [0.5, 0.5, 0.6, 0.9]
    np.testing.assert_allclose(corners_to_shapes(boxes), [[0.3, 0.1], [0.1, 0.4]], atol=1e-6)


# ------------------------------------------------------------------------ COCO


def write_coco(path, per: int = 60, annotations: bool = True) -> None:
    """Boxes of the three CENTRES shapes on 640x480 images, in pixels; plus a crowd box."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(5)]
    anns = []
    for n, (w, h) in enumerate(clustered(per=per)):
        bbox = [3.0, 4.0, float(w * 640), float(h * 480)]
        anns.append({"id": n, "image_id": n % 5, "category_id": 1, "bbox": bbox, "iscrowd": 0})
    anns.append(
        {"id": 9999, "image_id": 0, "category_id": 1, "bbox": [0, 0, 600, 10], "iscrowd": 1}
    )
    coco = {"images": images, "categories": [{"id": 1, "name": "thing"}]}
    if annotations:
        coco["annotations"] = anns
    path.write_text(json.dumps(coco))


def test_coco_shapes_are_fractions_of_the_image(tmp_path):
    write_coco(tmp_path / "c.json", per=10)
    wh = coco_shapes(tmp_path / "c.json")
    np.testing.assert_allclose(wh, clustered(per=10), rtol=1e-9)  # the crowd box left out


def mobilecv(*args, cwd):
    env = dict(os.environ)
    env.pop("MOBILECV_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", "anchors", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_on_a_coco_file_prints_k_anchors_and_json(tmp_path):
    write_coco(tmp_path / "c.json")
    text = mobilecv("c.json", "-k", "3", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    rows = [line.split() for line in text.stdout.splitlines() if line.split()[0] in "123"]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert "mean best IoU" in text.stdout and "baseline" in text.stdout
    out = mobilecv("c.json", "--anchors", "3", "--json", "--plot", "p.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"anchors", "mean_best_iou", "boxes", "source", "baseline_mean_best_iou"} <= set(result)
    assert result["boxes"] == 180
    np.testing.assert_allclose(result["anchors"], CENTRES, rtol=0.03)
    assert result["mean_best_iou"] > result["baseline_mean_best_iou"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "p.png"]  # no temporaries


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "no such file: missing.json"),
        (["bare.json"], "holds no annotation with a bbox"),
        (["text.json"], "is not a COCO JSON file"),
        (["c.json", "-k", "500"], "at least 500 distinct"),
        (["c.json", "--limit", "10"], "--limit applies to DATA scenes"),
        (["c.json", "--plot", "p.jpg"], "--plot must end in .png"),
        (["c.json", "-k", "0"], "0 is not in the range"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    write_coco(tmp_path / "c.json", per=5)
    write_coco(tmp_path / "bare.json", annotations=False)
    (tmp_path / "text.json").write_text("hello\n")
    result = mobilecv(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.jpg").exists()


def test_cli_help(tmp_path):
    for flag in ("--help", "-h"):
        result = mobilecv(flag, cwd=tmp_path)
        assert result.returncode == 0
        assert "Usage:" in result.stdout and "1 - IoU" in result.stdout


def test_cli_on_the_detection_scenes(tmp_path):
    out = mobilecv("scenes", "--limit", "200", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["anchors"]) == 3
    assert result["mean_best_iou"] > 0.5
    assert result["boxes"] >= 200 and result["image_size"][0] > 0
    assert "scenes" in result["source"]

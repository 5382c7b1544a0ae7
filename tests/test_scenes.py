"""Scenes of real objects on real backgrounds, their labels, COCO files and the real assets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from mobilecv.data import Split, assets, datasets, scenes
from mobilecv.data.scenes import SceneConfig, generate
from mobilecv.errors import InputError

MIXED = SceneConfig(
    size=96,
    sources=("fashion_mnist", "digits"),
    objects=(0, 4),
    empty_share=0.2,
    warp=0.2,
    rotation=15,
    max_iou=0.25,
    seed=7,
)


@pytest.fixture(scope="module")
def mixed() -> dict[Split, scenes.SceneSet]:
    return {split: generate(split, 60, MIXED) for split in Split}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# --------------------------------------------------------------------------- scenes


def test_same_seed_gives_identical_arrays_and_another_seed_does_not():
    config = SceneConfig(objects=(1, 3), warp=0.1, seed=3)
    a, b = generate("train", 12, config), generate("train", 12, config)
    for field in ("images", "instance_maps", "boxes", "classes", "keypoints", "source_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    other = generate("train", 12, SceneConfig(objects=(1, 3), warp=0.1, seed=4))
    assert not np.array_equal(a.images, other.images)


def test_splits_draw_disjoint_source_objects(mixed):
    ids = {split: set(mixed[split].source_ids) for split in Split}
    assert all(ids.values())
    assert not ids[Split.TRAIN] & ids[Split.VALIDATION]
    assert not ids[Split.TRAIN] & ids[Split.TEST]
    assert not ids[Split.VALIDATION] & ids[Split.TEST]
    # Test scenes use only Fashion-MNIST's test file and the digits' test cells.
    test_digits = {f"digits/digits.png/{i}" for i in assets.digits_split_indices("test")}
    for source_id in ids[Split.TEST]:
        assert source_id.startswith("fashion_mnist/t10k-images/") or source_id in test_digits


def test_recorded_sources_are_the_pasted_images(mixed):
    """Each source id names the file image, and source_index the split image, pasted."""
    (train_x, _), (test_x, _) = datasets._fashion_mnist()
    digits_x, _ = assets.opencv_digits()
    for split, scene_set in mixed.items():
        split_x = {
            "fashion_mnist": datasets.load_arrays("fashion_mnist", split).x,
            "digits": assets.opencv_digits(split)[0],
        }
        for source_id, index in zip(scene_set.source_ids, scene_set.source_index, strict=True):
            file, number = source_id.rsplit("/", 1)
            raw = {
                "fashion_mnist/train-images": train_x,
                "fashion_mnist/t10k-images": test_x,
                "digits/digits.png": digits_x,
            }[file][int(number)]
            np.testing.assert_array_equal(raw, split_x[file.split("/")[0]][index])


def test_boxes_are_the_bounding_boxes_of_the_visible_masks(mixed):
    for scene_set in mixed.values():
        assert scene_set.instance_maps.max() <= scene_set.counts.max()
        for i in range(len(scene_set)):
            scene = scene_set.scene(i)
            for box, mask in zip(scene.boxes, scene.masks, strict=True):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                assert rows.size, "every object keeps visible pixels"
                np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def test_keypoints_inside_the_image_and_centre_inside_the_box(mixed):
    for scene_set in mixed.values():
        points = scene_set.keypoints
        assert points.shape[1:] == (5, 3)
        assert (points[..., :2] >= 0).all() and (points[..., :2] <= scene_set.config.size).all()
        assert set(np.unique(points[..., 2])) <= {scenes.VISIBLE, scenes.OCCLUDED}
        centre, box = points[:, 4, :2], scene_set.boxes
        assert ((centre >= box[:, :2]) & (centre <= box[:, 2:])).all()


def test_without_rotation_or_warp_the_corners_are_the_box_corners():
    """With a pure scale and shift, the carried source-box corners sit on the exact box."""
    config = SceneConfig(objects=(1, 1), rotation=0, warp=0, flip=False, scale=(0.3, 0.6))
    scene_set = generate("validation", 40, config)
    corners = scene_set.keypoints[:, :4, :2]
    x0, y0, x1, y1 = scene_set.boxes.T
    expected = np.stack([np.c_[x0, y0], np.c_[x1, y0], np.c_[x1, y1], np.c_[x0, y1]], 1)
    # Bilinear resampling moves a mask edge by under a pixel.
    assert np.abs(corners - expected).max() <= 1.0
    longer = np.maximum(x1 - x0, y1 - y0) / config.size
    assert (longer >= 0.3 - 1.5 / 96).all() and (longer <= 0.6 + 1.5 / 96).all()


def test_perspective_warp_moves_the_corners_off_the_box():
    flat = generate("train", 30, SceneConfig(objects=(1, 1), rotation=0, warp=0, seed=1))
    warped = generate("train", 30, SceneConfig(objects=(1, 1), rotation=0, warp=0.2, seed=1))
    assert not np.allclose(flat.keypoints, warped.keypoints)
    # A warped square is no longer axis-aligned: opposite sides are not parallel.
    top = warped.keypoints[:, 1, :2] - warped.keypoints[:, 0, :2]
    assert np.abs(top[:, 1]).max() > 2.0


def test_overlap_and_visibility_limits_are_respected():
    config = SceneConfig(objects=(3, 5), scale=(0.25, 0.4), max_iou=0.1, min_visible=0.7)
    scene_set = generate("train", 40, config)
    for i in range(len(scene_set)):
        boxes = scene_set.scene(i).boxes
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                assert _iou(boxes[a], boxes[b]) <= 0.1 + 1e-6
    assert scene_set.counts.min() >= 3


def test_empty_scenes_have_no_labels():
    scene_set = generate("test", 10, SceneConfig(objects=(1, 2), empty_share=1.0))
    assert len(scene_set) == 10 and len(scene_set.boxes) == 0
    assert scene_set.keypoints.shape == (0, 5, 3) and not scene_set.instance_maps.any()
    mixed_set = generate("test", 50, SceneConfig(objects=(0, 2), empty_share=0.3))
    empty = np.flatnonzero(mixed_set.counts == 0)
    assert 0 < len(empty) < 50
    assert not mixed_set.instance_maps[empty].any()


def test_channels_and_semantic_masks(mixed):
    grey = generate("train", 4, SceneConfig(channels=1, size=64))
    assert grey.images.shape == (4, 64, 64, 1) and grey.images.dtype == np.uint8
    scene_set = mixed[Split.TRAIN]
    semantic = scene_set.semantic_masks()
    for i in range(len(scene_set)):
        scene = scene_set.scene(i)
        for label, mask in zip(scene.classes, scene.masks, strict=True):
            assert (semantic[i][mask] == label + 1).all()
        assert (semantic[i] == 0).sum() == (scene_set.instance_maps[i] == 0).sum()
    assert scene_set.class_names[:2] == ("T-shirt/top", "Trouser")
    assert scene_set.class_names[10] == "digit 0"
    assert "synthetic composition" in scene_set.provenance


def test_bad_configs_are_input_errors():
    for bad in (
        {"channels": 2},
        {"objects": (3, 1)},
        {"scale": (0.2, 1.5)},
        {"warp": 0.9},
        {"backgrounds": ("nowhere",)},
        {"sources": ("imagenet",)},
    ):
        with pytest.raises(InputError):
            SceneConfig(**bad)
    with pytest.raises(InputError, match="could not place"):
        generate("train", 3, SceneConfig(objects=(6, 6), scale=(0.9, 1.0), max_iou=0.0))
    # Above the minimum, a crowded scene keeps the objects that fit.
    crowded = generate("train", 5, SceneConfig(objects=(1, 8), scale=(0.5, 0.6), max_iou=0.0))
    assert crowded.counts.min() >= 1 and crowded.counts.max() < 8


# --------------------------------------------------------------------------- COCO, picture


def test_coco_files_read_back_with_pycocotools(mixed, tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    scene_set = mixed[Split.VALIDATION]
    path = scenes.write_coco(scene_set, tmp_path / "coco")
    coco = COCO(str(path))
    assert "synthetic composition" in json.loads(path.read_text())["info"]["description"]
    assert len(coco.getImgIds()) == len(scene_set)
    assert len(coco.getAnnIds()) == len(scene_set.boxes)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(scene_set.class_names)
    for i in range(len(scene_set)):
        info = coco.loadImgs(i + 1)[0]
        png = np.asarray(Image.open(tmp_path / "coco" / info["file_name"]))
        np.testing.assert_array_equal(png, scene_set.images[i])
        scene = scene_set.scene(i)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[i + 1]))
        assert len(annotations) == len(scene.boxes)
        for ann, box, mask, label, points in zip(
            annotations, scene.boxes, scene.masks, scene.classes, scene.keypoints, strict=True
        ):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box)
            assert ann["category_id"] == label + 1 and ann["area"] == mask.sum()
            np.testing.assert_allclose(np.reshape(ann["keypoints"], (5, 3)), points, atol=1e-3)
    with pytest.raises(InputError, match="exists"):
        scenes.write_coco(scene_set, tmp_path / "coco")
    # COCO's own evaluator scores the ground truth, given back as detections, as perfect.
    from pycocotools.cocoeval import COCOeval

    detections = [{**a, "score": 1.0} for a in coco.loadAnns(coco.getAnnIds())]
    evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # mAP@[.5:.95]


def test_draw_scenes_writes_a_picture(mixed, tmp_path):
    from PIL import Image

    path = scenes.draw_scenes(mixed[Split.TEST], tmp_path / "scenes.png", count=8)
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 200
        assert np.asarray(image.convert("L")).std() > 20  # not a blank canvas
    assert path.stat().st_size > 20_000


# --------------------------------------------------------------------------- assets


def test_opencv_digits_500_a_class_and_disjoint_splits():
    x, y = assets.opencv_digits()
    assert x.shape == (5000, 20, 20, 1) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    # each band of 5 grid rows is one digit: the first cell is a 0, the last a 9
    assert y[0] == 0 and y[-1] == 9
    parts = {s: assets.digits_split_indices(s) for s in Split}
    assert sum(len(p) for p in parts.values()) == 5000
    assert len(np.unique(np.concatenate(list(parts.values())))) == 5000
    for split, count in ((Split.TRAIN, 360), (Split.VALIDATION, 40), (Split.TEST, 100)):
        assert np.bincount(assets.opencv_digits(split)[1]).tolist() == [count] * 10


def test_apriltag_photo_has_12_markers_of_4_corners_inside_the_image():
    photo = assets.apriltag_photo()
    assert photo.image.shape == (480, 640) and photo.image.dtype == np.uint8
    assert photo.corners.shape == (12, 4, 2)
    assert photo.ids.tolist() == list(range(8, 20))
    x, y = photo.corners[..., 0], photo.corners[..., 1]
    assert (x > 0).all() and (x < 640).all() and (y > 0).all() and (y < 480).all()
    # the markers are black squares on white paper: darker inside than around
    for quad in photo.corners:
        cx, cy = quad.mean(axis=0).astype(int)
        assert photo.image[cy - 2 : cy + 3, cx - 2 : cx + 3].mean() < 200


def test_solvay_faces_and_nuclei():
    photo = assets.solvay_faces()
    assert photo.image.shape == (926, 1280) and photo.boxes.shape == (30, 4)
    assert (photo.boxes[:, 2:] > photo.boxes[:, :2]).all() and photo.boxes.max() <= 1280
    image, labels = assets.stardist_nuclei()
    assert image.shape == labels.shape == (512, 512)
    assert len(np.unique(labels)) - 1 == 125


def test_backgrounds_load_from_the_installed_wheels():
    for name in assets.Background:
        pixels = assets.background(name)
        assert pixels.dtype == np.uint8 and min(pixels.shape[:2]) >= 256


def test_missing_asset_names_the_package_then_loads_from_the_cache(monkeypatch, tmp_path):
    real_digits = assets.locate(assets.DIGITS_PNG)
    monkeypatch.setattr(assets, "SYSTEM_ROOT", tmp_path / "root")
    monkeypatch.setenv("MOBILECV_ASSETS", str(tmp_path / "cache"))
    assets._all_digits.cache_clear()
    try:
        with pytest.raises(InputError, match="opencv-doc"):
            assets.opencv_digits()
        with pytest.raises(InputError, match="visp-images-data"):
            assets.apriltag_photo()
        # the cache mirrors the package's paths
        cached = tmp_path / "cache" / assets.DIGITS_PNG.path
        cached.parent.mkdir(parents=True)
        cached.write_bytes(real_digits.read_bytes())
        assert assets.locate(assets.DIGITS_PNG) == cached
        assert assets.opencv_digits()[0].shape == (5000, 20, 20, 1)
    finally:
        assets._all_digits.cache_clear()


def test_assets_status_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-m", "mobilecv.data.assets", "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "digits.png" in done.stdout and "MISSING" not in done.stdout


def test_importing_scenes_does_not_import_tensorflow():
    code = "import sys, mobilecv.data.scenes; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_tiles_are_whole_source_squares_whose_corners_are_the_keypoints():
    """paste="tile": the pasted shape is the warped source square, so its corners (the
    landmark targets) are visible corners, as a marker's are."""
    from mobilecv.data.scenes import SceneConfig, generate

    config = SceneConfig(size=64, objects=(1, 1), paste="tile", warp=0.2, rotation=15, seed=3)
    scenes = generate("validation", 6, config)
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        corners = scene.keypoints[0, :4, :2]
        hull = np.array([*corners.min(axis=0), *corners.max(axis=0)])
        # The visible mask fills the quad, so its box is the corners' box (pixel rounding).
        assert np.abs(scene.boxes[0] - hull).max() <= 1.0, (scene.boxes[0], hull)
        assert scene.masks[0].sum() > 0.5 * (hull[2] - hull[0]) * (hull[3] - hull[1])


# --------------------------------------------------------------------------- faces

FACES = SceneConfig(
    size=64, channels=1, sources=("faces",), objects=(1, 3), scale=(0.2, 0.45), seed=5
)


@pytest.fixture(scope="module")
def faces() -> dict[Split, scenes.SceneSet]:
    return {split: generate(split, 30, FACES) for split in Split}


def test_lfw_faces_are_the_first_100_and_split_disjointly():
    lfw = scenes._lfw_subset()
    assert lfw.shape == (200, 25, 25) and lfw.dtype == np.uint8 and lfw.max() > 200
    ids = {split: scenes.lfw_split_indices(split) for split in Split}
    assert [len(ids[s]) for s in Split] == [72, 8, 20]
    assert sorted(np.concatenate(list(ids.values())).tolist()) == list(range(100))
    negatives = np.concatenate([scenes.lfw_split_indices(s, faces=False) for s in Split])
    assert sorted(negatives.tolist()) == list(range(100, 200))


def test_face_scenes_draw_each_split_s_own_faces_and_label_them_face(faces):
    used = {}
    for split, scene_set in faces.items():
        assert scene_set.class_names == ("face",) and set(scene_set.classes) == {0}
        assert scene_set.images.shape[1:] == (64, 64, 1)
        numbers = {int(s.rsplit("/", 1)[1]) for s in scene_set.source_ids}
        assert all(s.startswith("lfw_subset/") for s in scene_set.source_ids)
        assert numbers <= set(scenes.lfw_split_indices(split).tolist())
        used[split] = numbers
    assert not used[Split.TRAIN] & used[Split.VALIDATION]
    assert not used[Split.TRAIN] & used[Split.TEST]
    again = generate(Split.TEST, 30, FACES)
    np.testing.assert_array_equal(again.images, faces[Split.TEST].images)
    np.testing.assert_array_equal(again.boxes, faces[Split.TEST].boxes)


def test_face_boxes_are_their_masks_boxes_and_the_mask_is_an_ellipse(faces):
    for scene_set in faces.values():
        for i in range(len(scene_set)):
            scene = scene_set.scene(i)
            for box, mask in zip(scene.boxes, scene.masks, strict=True):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    # Unrotated and alone, a face fills its box as an ellipse does (pi / 4), not a square.
    single = generate("train", 20, dataclasses.replace(FACES, objects=(1, 1), rotation=0))
    for i in range(len(single)):
        mask = single.scene(i).masks[0]
        x0, y0, x1, y1 = single.boxes[i].astype(int)
        fill = mask.sum() / ((x1 - x0) * (y1 - y0))
        assert 0.70 < fill < 0.86, fill
        assert not mask[y0, x0] and not mask[y1 - 1, x1 - 1]  # corners are background


def test_distractors_paint_the_background_and_add_no_label():
    plain = SceneConfig(size=64, channels=1, sources=("faces",), objects=(0, 0), seed=2)
    cluttered = dataclasses.replace(plain, distractors=(2, 2))
    a, b = generate("train", 10, plain), generate("train", 10, cluttered)
    assert len(b.boxes) == 0 and not b.instance_maps.any()
    assert not np.array_equal(a.images, b.images)
    with pytest.raises(InputError, match="distractors"):
        SceneConfig(distractors=(3, 1))

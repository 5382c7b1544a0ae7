"""The Solvay photo check: tiling geometry, merging, scoring, and (slow) a real face yolo
through Keras and .tflite."""

from __future__ import annotations

import numpy as np
import pytest

from mobilecv import face_check
from mobilecv.data.assets import solvay_faces
from mobilecv.errors import InputError
from mobilecv.face_check import (
    Tiles,
    cut_tiles,
    default_stride,
    draw_solvay,
    face_scenes,
    merge,
    offsets,
    pyramid,
    score_boxes,
    solvay_check,
)
from mobilecv.modelinfo import ModelInfo, set_info
from mobilecv.tasks.detection import encode

ANCHORS = np.array([[0.18, 0.18], [0.25, 0.25], [0.37, 0.37]], np.float32)
FACE_SCALE = face_check.FACE_SCENES["scale"]


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("length", [64, 65, 100, 128, 300, 1280])
def test_windows_cover_the_axis_and_the_last_is_flush(length):
    window, stride = 64, 29
    starts = offsets(length, window, stride)
    assert starts[0] == 0 and np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= stride)
    assert starts[-1] == max(0, length - window)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()


def test_every_face_of_the_trained_sizes_lies_whole_in_some_window():
    """...away from the window's inner sides, so that dropping cut boxes loses no face."""
    window, length, margin = 128, 926, face_check.EDGE_MARGIN
    largest = int(FACE_SCALE[1] * window)
    starts = offsets(length, window, default_stride(window, FACE_SCALE))
    for x0 in range(0, length - largest + 1):
        x1 = x0 + largest
        left = (x0 - starts > margin) | (starts == 0)
        right = (starts + window - x1 > margin) | (starts + window == length)
        assert ((starts <= x0) & (x1 <= starts + window) & left & right).any(), x0


def test_pyramid_from_the_trained_face_sizes_and_the_photo_size_only():
    scales = pyramid((926, 1280), 128, (0.15, 0.45))
    np.testing.assert_allclose(scales, [1.0, 3**-0.5, 1 / 3, 3**-1.5], rtol=1e-5)
    # Each level's shorter side fills a window; one level more would not.
    assert 926 * scales[-1] >= 128 > 926 * scales[-1] / 3**0.5
    assert pyramid((100, 200), 128, (0.15, 0.45)) == (1.0,)
    with pytest.raises(InputError):
        pyramid((926, 1280), 128, (0.45, 0.15))


def _photo_with_a_square(height=200, width=300, box=(181, 61, 221, 101)):
    photo = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    photo[y0:y1, x0:x1] = 255
    return photo, np.array(box, np.float32)


def test_a_box_in_a_window_maps_back_to_its_photo_pixels():
    photo, square = _photo_with_a_square()
    for scale in (1.0, 0.5):
        tiles = cut_tiles(photo, 64, 20, [scale])  # 20 = 64 - 40 - 2 * EDGE_MARGIN
        level = np.asarray(photo, np.float32)  # nearest check of the crops at scale 1
        if scale == 1.0:
            for image, (x, y) in zip(tiles.images, tiles.origin.astype(int), strict=True):
                np.testing.assert_array_equal(image, level[y : y + 64, x : x + 64])
        whole = 0
        for i, image in enumerate(tiles.images):
            rows, cols = np.nonzero(image > 127)
            if not len(rows) or tiles.cut(_found_box(rows, cols), np.array([i]))[0]:
                continue
            whole += 1
            mapped = tiles.to_photo(_found_box(rows, cols), np.array([i]))[0]
            np.testing.assert_allclose(mapped, square, atol=1.0 / scale)
        assert whole >= 1


def _found_box(rows, cols) -> np.ndarray:
    return np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32) / 64


def test_boxes_cut_by_an_inner_window_side_are_marked_and_photo_edges_are_not():
    photo, _ = _photo_with_a_square()
    tiles = cut_tiles(photo, 64, 30, [1.0])
    first = 0  # the top-left window: its left and top sides are the photo's
    assert tuple(tiles.inner[first]) == (False, False, True, True)
    boxes = np.array([[0.0, 0.0, 0.3, 0.3], [0.5, 0.5, 1.0, 0.8], [0.2, 0.2, 0.6, 0.6]])
    np.testing.assert_array_equal(tiles.cut(boxes, np.zeros(3, int)), [False, True, False])


def test_merge_drops_cut_boxes_and_joins_one_face_seen_by_two_windows():
    tiles = Tiles(
        images=np.zeros((2, 64, 64), np.float32),
        origin=np.array([[0, 0], [30, 0]], np.float32),
        factor=np.array([[0.5, 0.5], [0.5, 0.5]], np.float32),
        inner=np.array([[False, False, True, False], [True, False, False, False]]),
        level=np.zeros(2, np.int64),
        window=64,
    )
    found = {
        # window 0: the face at level pixels (40..56, 10..26), and one cut by its right side
        # window 1: the same face at (10..26, 10..26) in its own pixels
        "boxes": np.array(
            [[[40, 10, 56, 26], [50, 30, 64, 40]], [[10, 10, 26, 26], [0, 0, 0, 0]]], np.float32
        )
        / 64,
        "scores": np.array([[0.9, 0.8], [0.7, 0.0]], np.float32),
        "classes": np.array([[0, 0], [0, -1]]),
        "count": np.array([2, 1]),
    }
    boxes, scores = merge(found, tiles)
    np.testing.assert_allclose(boxes, [[80, 20, 112, 52]], atol=1e-4)  # photo = level / 0.5
    np.testing.assert_allclose(scores, [0.9])


def test_hand_made_detections_give_their_recall_and_precision():
    truth = np.array([[100.0 * i, 0, 100.0 * i + 40, 40] for i in range(10)], np.float32)
    exact = truth[:4]
    near = truth[4:7] + [8, 0, 8, 0]  # IoU 32/48 = 0.67: a match
    far = truth[7:9] + [25, 0, 25, 0]  # IoU 15/65 = 0.23: no match
    twice = truth[:1] + [1, 0, 1, 0]  # a second box on a matched face: a false positive
    boxes = np.concatenate([exact, near, far, twice, [[5000, 5000, 5040, 5040]]])
    result = score_boxes(boxes, np.linspace(1, 0.1, len(boxes)), truth, 0.5)
    assert (result["faces"], result["detections"], result["true_positives"]) == (10, 11, 7)
    assert result["recall"] == pytest.approx(0.7) and result["precision"] == pytest.approx(7 / 11)
    assert score_boxes(boxes, np.ones(len(boxes)), truth, 0.7)["true_positives"] == 4
    empty = score_boxes(np.zeros((0, 4)), np.zeros(0), truth, 0.5)
    assert (empty["true_positives"], empty["recall"], empty["precision"]) == (0, 0.0, 0.0)


# --------------------------------------------------------------------------- whole check


class _Oracle:
    """A stand-in detector with the Keras interface that "sees" the given photo boxes:
    for each window, in the order solvay_check cuts them, the YOLO outputs encoding those
    boxes (clipped to the window, as a detector sees a face it cuts)."""

    def __init__(self, boxes: np.ndarray, window: int = 128):
        self.boxes, self.window, self.name = boxes, window, "oracle"
        self.input_shape = (None, window, window, 1)
        photo = solvay_faces().image
        scales = pyramid(photo.shape, window, FACE_SCALE)
        self.tiles = cut_tiles(photo, window, default_stride(window, FACE_SCALE), scales)
        set_info(self, ModelInfo(task="detection", task_options={"anchors": ANCHORS.tolist()}))

    def predict(self, x, batch_size=None, verbose=0):
        assert len(x) == len(self.tiles.images)
        np.testing.assert_allclose(x[..., 0], self.tiles.images / 255.0, atol=1e-6)
        grid = (self.window // 16,) * 2
        outputs = {"objectness": [], "box": [], "scores": []}
        for i in range(len(x)):
            level = self.boxes * np.tile(self.tiles.factor[i], 2)
            local = np.clip(level - np.tile(self.tiles.origin[i], 2), 0, self.window)
            local = local[(local[:, 2] > local[:, 0]) & (local[:, 3] > local[:, 1])]
            objectness, box, label = encode(local / self.window, np.zeros(len(local)), ANCHORS, grid)  # fmt: skip
            outputs["objectness"].append(objectness)
            outputs["box"].append(np.nan_to_num(box))
            outputs["scores"].append(np.ones((*label.shape, 1), np.float32))
        return {k: np.stack(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return solvay_faces().boxes


def test_a_detector_that_sees_every_face_scores_recall_and_precision_one(truth, tmp_path):
    result = solvay_check(_Oracle(truth))
    assert (result["faces"], result["true_positives"], result["detections"]) == (30, 30, 30)
    assert result["recall"] == 1.0 and result["precision"] == 1.0
    settings = result["settings"]
    assert settings["scales"] == list(pyramid((926, 1280), 128, FACE_SCALE))
    assert settings["window"] == 128 and settings["stride"] == default_stride(128, FACE_SCALE)
    picture = draw_solvay(result, tmp_path / "solvay.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_and_precision_follow_the_faces_seen(truth):
    half = solvay_check(_Oracle(truth[::2]))
    assert (half["true_positives"], half["detections"]) == (15, 15)
    assert half["recall"] == 0.5 and half["precision"] == 1.0
    shift = (truth[:, 2:] - truth[:, :2]) * 0.6
    moved = solvay_check(_Oracle(truth + np.c_[shift[:, :1], 0 * shift[:, :1]].repeat(2, 1)))
    assert moved["detections"] == 30 and moved["true_positives"] == 0
    assert moved["recall"] == 0.0 and moved["precision"] == 0.0


def test_bad_settings_are_input_errors(truth):
    oracle = _Oracle(truth[:1])
    with pytest.raises(InputError, match="128-pixel windows"):
        solvay_check(oracle, window=96)
    with pytest.raises(InputError):
        solvay_check(oracle, score_threshold=1.5)
    classifier = _Oracle(truth[:1])
    set_info(classifier, ModelInfo(task="classification"))
    with pytest.raises(InputError, match="not a mobilecv detector"):
        solvay_check(classifier)


def test_face_scenes_are_grey_faces_with_overrides():
    config = face_scenes(size=64)
    assert config.size == 64 and config.channels == 1 and config.class_names == ("face",)
    assert config.distractors == face_check.FACE_SCENES["distractors"]


def test_the_detection_task_loads_a_whole_scene_config():
    from mobilecv.tasks.base import get_task

    data = get_task("detection").load("scenes", "train", limit=4, scenes=face_scenes(size=64))
    assert data.x.shape == (4, 64, 64, 1) and data.classes == 1
    assert "faces" in data.provenance
    assert set(np.unique(data.y["class"])) <= {-1, 0}


def test_a_one_class_yolo_keeps_its_class_axis_and_its_class_loss_reads_it():
    """With one class the head's scores were (N, S, S, B), and tf_keras squeezes a last
    axis of 1 before the loss: one-hot over B "classes" then failed to broadcast. (The
    slow test below trains through compile and fit.)"""
    import mobilecv
    from mobilecv._tf import tf
    from mobilecv.tasks.detection import class_loss

    model = mobilecv.build("yolo", width=0.25, resolution=32, classes=1, input_channels=1,
                           anchors=ANCHORS.tolist())  # fmt: skip
    assert tuple(model.get_layer("scores").output.shape[1:]) == (2, 2, 3, 1)
    label = tf().constant([[[[0, -1, -1], [-1, -1, 0]]]], tf().int64)  # (1, 1, 2, 3)
    full = tf().fill((1, 1, 2, 3, 1), 0.5)
    squeezed = class_loss(label, full[..., 0]).numpy()
    np.testing.assert_allclose(squeezed, class_loss(label, full).numpy())
    np.testing.assert_allclose(squeezed, [[[[np.log(2), 0, 0], [0, 0, np.log(2)]]]], rtol=1e-5)


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_tiny_face_yolo_trains_and_is_checked_in_keras_and_tflite(tmp_path):
    """Structure, not quality: a few steps through the public API, then the check on both
    runtimes, whose figures must be those of their own matches."""
    import mobilecv
    from mobilecv.converters.tflite import convert
    from mobilecv.data.scenes import generate
    from mobilecv.train import train

    scenes = face_scenes(size=64, objects=(1, 3))
    anchors = face_check.face_anchors(2, scenes, count=100)
    model = mobilecv.build(
        "yolo", width=0.25, resolution=64, classes=1, input_channels=1, anchors=anchors
    )
    assert model.get_layer("scores").output.shape[-1] == 1
    model, report = train(model, "scenes", 1, scenes=scenes, limit=32, batch_size=16,
                          progress=False)  # fmt: skip
    assert report.train_samples == 32 and "map50" in report.val_metrics
    assert "faces" in report.provenance  # the scenes given, not the default ones
    calibration = generate("train", 40, scenes).images
    path = tmp_path / "face.tflite"
    path.write_bytes(convert(model, "int8", calibration=calibration, progress=False).tflite)
    truth = solvay_faces().boxes
    for runner in (model, str(path)):
        result = solvay_check(runner, scale=0.25)  # one level of 70 windows: quick
        assert result["settings"]["window"] == 64 and result["faces"] == 30
        assert result["detections"] == len(result["boxes"]) == len(result["scores"])
        again = score_boxes(np.array(result["boxes"]).reshape(-1, 4), result["scores"], truth, 0.5)
        assert again["true_positives"] == result["true_positives"]
        assert result["recall"] == result["true_positives"] / 30
        expected = result["true_positives"] / max(result["detections"], 1)
        assert result["precision"] == pytest.approx(expected)
        assert draw_solvay(result, tmp_path / "solvay.png").stat().st_size > 0

"""YOLO detector post-processing in numpy (mobilecv.postprocess): IoU, NMS, grid decoding.

Fast and TensorFlow-free: hand-built output tensors with boxes worked out by hand.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilecv import postprocess
from mobilecv.postprocess import decode, detection, iou, nms, per_class_nms, yolo_boxes

# ------------------------------------------------------------------- IoU (course)


@pytest.mark.parametrize(
    ("box1", "box2", "expected"),
    [
        ((2, 1, 4, 3), (1, 2, 3, 4), 1 / 7),  # the assignment's intersecting boxes
        ((1, 2, 3, 4), (5, 6, 7, 8), 0.0),  # apart
        ((1, 1, 2, 2), (2, 2, 3, 3), 0.0),  # touching at a vertex
        ((1, 1, 3, 3), (2, 3, 3, 4), 0.0),  # touching at an edge
    ],
)
def test_iou_matches_the_courses_car_detection_examples(box1, box2, expected):
    assert float(iou(box1, box2)) == pytest.approx(expected, abs=1e-6)
    assert float(iou(box2, box1)) == pytest.approx(expected, abs=1e-6)
    # Units do not matter: the same boxes as fractions of a 10 x 10 image.
    assert float(iou(np.array(box1) / 10, np.array(box2) / 10)) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------- NMS

ONE_OBJECT = np.array(
    [
        [0.12, 0.10, 0.42, 0.40],  # 0.8: a shifted duplicate
        [0.70, 0.70, 0.90, 0.90],  # 0.6: somewhere else
        [0.10, 0.10, 0.40, 0.40],  # 0.9: the best box of the object
        [0.10, 0.13, 0.40, 0.43],  # 0.7: another duplicate
    ]
)
ONE_OBJECT_SCORES = np.array([0.8, 0.6, 0.9, 0.7])


def test_nms_keeps_the_best_box_of_an_object_and_a_distant_box_in_score_order():
    kept = nms(ONE_OBJECT, ONE_OBJECT_SCORES, iou_threshold=0.5)
    assert kept.tolist() == [2, 1]
    assert kept.dtype == np.int64


def test_nms_suppresses_a_box_whose_iou_equals_the_threshold():
    boxes = np.array([[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.25, 0.25]])  # IoU exactly 1/2
    assert float(iou(boxes[0], boxes[1])) == 0.5
    assert nms(boxes, [0.9, 0.8], iou_threshold=0.5).tolist() == [0]
    assert nms(boxes, [0.9, 0.8], iou_threshold=0.51).tolist() == [0, 1]


def test_nms_max_detections_cuts_the_list():
    boxes = np.array([[0.0, 0.0, 0.1, 0.1], [0.3, 0.3, 0.4, 0.4], [0.6, 0.6, 0.7, 0.7]])
    scores = np.array([0.5, 0.9, 0.7])
    assert nms(boxes, scores).tolist() == [1, 2, 0]
    assert nms(boxes, scores, max_detections=2).tolist() == [1, 2]
    assert per_class_nms(boxes, scores, [0, 1, 0], max_detections=2).tolist() == [1, 2]


def test_per_class_nms_never_suppresses_across_classes():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.11, 0.1, 0.51, 0.5]])  # IoU ~0.95
    scores = np.array([0.6, 0.9])
    assert per_class_nms(boxes, scores, [0, 1]).tolist() == [1, 0]
    assert per_class_nms(boxes, scores, [1, 1]).tolist() == [1]


def test_per_class_nms_sorts_every_class_by_score():
    classes = np.array([0, 1, 0, 0])  # the distant box is another class
    kept = per_class_nms(ONE_OBJECT, ONE_OBJECT_SCORES, classes)
    assert kept.tolist() == [2, 1]
    classes = np.array([1, 1, 0, 1])  # the best box alone in class 0: 0.8 survives in 1
    kept = per_class_nms(ONE_OBJECT, ONE_OBJECT_SCORES, classes)
    assert kept.tolist() == [2, 0, 1]


def test_nms_of_nothing_is_empty():
    empty, none = np.zeros((0, 4)), np.zeros(0)
    assert nms(empty, none).shape == (0,)
    assert nms(empty, none).dtype == np.int64
    assert per_class_nms(empty, none, np.zeros(0, dtype=int)).shape == (0,)
    assert nms(ONE_OBJECT, ONE_OBJECT_SCORES, max_detections=0).shape == (0,)


# ------------------------------------------------------------------- decoding


def empty_grid(n=1, s_h=4, s_w=4, b=2, c=3):
    """Outputs where nothing is present: objectness 0, centred unit boxes, flat scores."""
    return {
        "objectness": np.zeros((n, s_h, s_w, b), np.float32),
        "box": np.full((n, s_h, s_w, b, 4), 0.5, np.float32),
        "scores": np.full((n, s_h, s_w, b, c), 1 / c, np.float32),
    }


ANCHORS = np.array([[0.2, 0.3], [0.5, 0.4]], np.float32)


def one_object_grid():
    """Cell row 1, column 2, anchor 1 of a 4 x 4 grid predicts class 1 with 0.9 x 0.7."""
    out = empty_grid()
    out["objectness"][0, 1, 2, 1] = 0.9
    out["box"][0, 1, 2, 1] = (0.5, 0.25, 0.5, 0.75)
    out["scores"][0, 1, 2, 1] = (0.1, 0.7, 0.2)
    return out


# By hand: centre x (2 + 0.5) / 4 = 0.625, centre y (1 + 0.25) / 4 = 0.3125,
# width 0.5 * (2 * 0.5)^2 = 0.5, height 0.4 * (2 * 0.75)^2 = 0.9, so y0 = -0.1375 -> 0.
ONE_OBJECT_BOX = (0.375, 0.0, 0.875, 0.7625)


def test_yolo_boxes_decodes_a_cell_by_hand_in_row_column_anchor_order():
    boxes, confidence, classes = yolo_boxes(**one_object_grid(), anchors=ANCHORS)
    assert boxes.shape == (1, 32, 4) and confidence.shape == (1, 32) and classes.shape == (1, 32)
    index = (1 * 4 + 2) * 2 + 1
    np.testing.assert_allclose(boxes[0, index], ONE_OBJECT_BOX, atol=1e-6)
    assert confidence[0, index] == pytest.approx(0.63)
    assert classes[0, index] == 1 and classes.dtype == np.int64
    assert np.count_nonzero(confidence) == 1
    assert boxes.min() >= 0 and boxes.max() <= 1


def test_yolo_boxes_reads_a_rectangular_grid_from_the_shapes():
    out = empty_grid(s_h=2, s_w=3, b=1, c=2)
    out["objectness"][0, 1, 2, 0] = 1.0
    out["box"][0, 1, 2, 0] = (0.5, 0.5, 0.5, 0.5)  # one anchor, centred in its cell
    boxes, confidence, _ = yolo_boxes(**out, anchors=[[0.2, 0.2]])
    index = 1 * 3 + 2
    assert confidence[0].argmax() == index
    # centre ((2 + 0.5) / 3, (1 + 0.5) / 2), anchor-sized
    np.testing.assert_allclose(
        boxes[0, index], (2.5 / 3 - 0.1, 0.65, 2.5 / 3 + 0.1, 0.85), atol=1e-6
    )


def test_detection_keeps_the_one_object_and_pads_the_rest():
    got = detection(**one_object_grid(), anchors=ANCHORS, max_detections=5)
    assert got["count"].tolist() == [1]
    assert got["boxes"].shape == (1, 5, 4) and got["boxes"].dtype == np.float32
    assert got["scores"].shape == (1, 5) and got["scores"].dtype == np.float32
    assert got["classes"].dtype == np.int64 and got["count"].dtype == np.int64
    np.testing.assert_allclose(got["boxes"][0, 0], ONE_OBJECT_BOX, atol=1e-6)
    assert got["scores"][0, 0] == pytest.approx(0.63)
    assert got["classes"][0].tolist() == [1, -1, -1, -1, -1]
    assert not got["boxes"][0, 1:].any() and not got["scores"][0, 1:].any()


def test_detection_score_threshold_is_strict():
    got = detection(**one_object_grid(), anchors=ANCHORS, score_threshold=0.7)
    assert got["count"].tolist() == [0]  # 0.63 < 0.7
    got = detection(**one_object_grid(), anchors=ANCHORS, score_threshold=0.0)
    assert got["count"].tolist() == [1]  # objectness 0 is never > 0


def two_objects_and_a_duplicate():
    """Image 0 of a 4 x 4 grid, one 0.25-wide anchor: class 0 near the right edge of cell
    (0, 0), the same object again from cell (0, 1) less confidently, and class 1 in cell
    (3, 3). Image 1 is empty."""
    out = empty_grid(n=2, b=1, c=2)
    cells = [
        ((0, 0), 0.9, (0.9, 0.5, 0.5, 0.5), (0.95, 0.05)),  # box (0.1, 0, 0.35, 0.25)
        ((0, 1), 0.6, (0.0, 0.5, 0.5, 0.5), (0.8, 0.2)),  # (0.125, 0, 0.375, 0.25): IoU 0.82
        ((3, 3), 0.8, (0.5, 0.5, 0.5, 0.5), (0.1, 0.9)),  # (0.75, 0.75, 1, 1)
    ]
    for (r, c), objectness, box, scores in cells:
        out["objectness"][0, r, c, 0] = objectness
        out["box"][0, r, c, 0] = box
        out["scores"][0, r, c, 0] = scores
    return out


def test_detection_end_to_end_suppresses_a_duplicate_from_the_neighbouring_cell():
    got = detection(**two_objects_and_a_duplicate(), anchors=[[0.25, 0.25]], max_detections=4)
    assert got["count"].tolist() == [2, 0]
    assert got["classes"].tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1]]
    np.testing.assert_allclose(got["scores"][0, :2], (0.9 * 0.95, 0.8 * 0.9), atol=1e-6)
    np.testing.assert_allclose(
        got["boxes"][0, :2], [(0.1, 0.0, 0.35, 0.25), (0.75, 0.75, 1.0, 1.0)], atol=1e-6
    )
    assert not got["boxes"][1].any()
    # With a looser IoU threshold the duplicate (IoU 0.82) survives, third by score.
    loose = detection(**two_objects_and_a_duplicate(), anchors=[[0.25, 0.25]], iou_threshold=0.9)
    assert loose["count"].tolist() == [3, 0]
    assert loose["classes"][0, :3].tolist() == [0, 1, 0]


def test_detection_max_detections_keeps_the_best():
    got = detection(**two_objects_and_a_duplicate(), anchors=[[0.25, 0.25]], max_detections=1)
    assert got["count"].tolist() == [1, 0] and got["classes"].tolist() == [[0], [-1]]


def test_multi_label_detection_keeps_a_box_in_each_class_that_passes():
    out = one_object_grid()  # class probabilities (0.1, 0.7, 0.2), objectness 0.9
    got = detection(**out, anchors=ANCHORS, score_threshold=0.1, multi_label=True)
    assert got["count"].tolist() == [2]  # 0.63 and 0.18 pass; 0.09 does not
    assert got["classes"][0, :2].tolist() == [1, 2]
    np.testing.assert_allclose(got["scores"][0, :2], (0.63, 0.18), atol=1e-6)
    np.testing.assert_allclose(got["boxes"][0, 1], ONE_OBJECT_BOX, atol=1e-6)
    single = detection(**out, anchors=ANCHORS, score_threshold=0.1)
    assert single["count"].tolist() == [1] and single["classes"][0, 0] == 1


# -------------------------------------------------------- decode and bad inputs


def test_decode_detection_equals_detection_and_takes_json_anchors():
    outputs = two_objects_and_a_duplicate()
    want = detection(**outputs, anchors=np.array([[0.25, 0.25]]))
    got = decode("detection", outputs, anchors=[[0.25, 0.25]])  # as read from metadata JSON
    assert postprocess.TASK_OUTPUTS["detection"] == ("objectness", "box", "scores")
    assert set(got) == {"boxes", "scores", "classes", "count"}
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    json.dumps({k: v.tolist() for k, v in got.items()})


@pytest.mark.parametrize(
    ("anchors", "match"),
    [
        (None, "needs anchors"),
        ([[0.2, 0.3]], "1 anchors but the outputs have 2"),
        ([[0.2, 0.3], [0.5, 0.4], [0.1, 0.1]], "3 anchors but the outputs have 2"),
        ([0.2, 0.3, 0.5, 0.4], r"\(B, 2\)"),
        ([[0.2, 0.3, 1.0], [0.5, 0.4, 1.0]], r"\(B, 2\)"),
        ([[0.2, 0.3], [0.0, 0.4]], "positive"),
    ],
)
def test_bad_anchors_are_a_one_line_value_error(anchors, match):
    options = {} if anchors is None else {"anchors": anchors}
    with pytest.raises(ValueError, match=match) as info:
        decode("detection", one_object_grid(), **options)
    assert "\n" not in str(info.value)


def test_mismatched_outputs_are_a_value_error():
    out = one_object_grid()
    with pytest.raises(ValueError, match="box must be"):
        detection(out["objectness"], out["box"][..., :2], out["scores"], anchors=ANCHORS)
    with pytest.raises(ValueError, match="scores must be"):
        detection(out["objectness"], out["box"], out["scores"][:, :2], anchors=ANCHORS)
    with pytest.raises(ValueError, match="objectness must be"):
        detection(out["objectness"][0], out["box"], out["scores"], anchors=ANCHORS)
    with pytest.raises(ValueError, match="objectness, box, scores"):
        decode("detection", {"box": out["box"], "scores": out["scores"]}, anchors=ANCHORS)


# ------------------------------------------------------------------ on device


class FakeInterpreter:
    """The two calls ``ondevice.decode_outputs`` makes of a LiteRT interpreter, with
    int8 outputs that dequantise to ``outputs``."""

    def __init__(self, outputs: dict[str, np.ndarray], scale: float = 1 / 255, zero: int = -128):
        self.details = []
        self.tensors = {}
        for index, (name, value) in enumerate(outputs.items()):
            codes = np.clip(np.round(value / scale) + zero, -128, 127).astype(np.int8)
            self.details.append({"index": index, "name": name, "quantization": (scale, zero)})
            self.tensors[index] = codes

    def get_output_details(self):
        return self.details

    def get_tensor(self, index):
        return self.tensors[index]


def load_ondevice(monkeypatch):
    """ondevice.py loaded by path, as on a device, with postprocess.py importable beside it."""
    monkeypatch.setitem(sys.modules, "postprocess", postprocess)
    path = Path(postprocess.__file__).parent / "bench" / "ondevice.py"
    spec = importlib.util.spec_from_file_location("ondevice_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ondevice_passes_the_metadatas_task_options_and_writes_json(monkeypatch):
    ondevice = load_ondevice(monkeypatch)
    outputs = two_objects_and_a_duplicate()
    # The signature's order need not be the task's: outputs are matched by name.
    interp = FakeInterpreter({k: outputs[k] for k in ("scores", "box", "objectness")})
    info = {
        "task": "detection",
        "task_options": {"anchors": [[0.25, 0.25]]},
        "signature_outputs": ["scores", "box", "objectness"],
    }
    predictions, ms = ondevice.decode_outputs(interp, info, repeats=2)
    assert ms >= 0
    restored = json.loads(json.dumps(predictions))
    assert restored["task"] == "detection"
    assert restored["count"] == [2, 0]
    assert restored["classes"][0][:3] == [0, 1, -1]
    np.testing.assert_allclose(restored["boxes"][0][1], (0.75, 0.75, 1.0, 1.0), atol=0.02)
    with pytest.raises(ValueError, match="needs anchors"):
        ondevice.decode_outputs(interp, {**info, "task_options": {}}, repeats=1)


def test_keep_detections_cuts_by_score_and_count_and_keeps_the_layout():
    found = {
        "boxes": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 24,
        "scores": np.array([[0.9, 0.5, 0.2], [0.3, 0.0, 0.0]], np.float32),
        "classes": np.array([[4, 1, 2], [7, -1, -1]]),
        "count": np.array([3, 1]),
    }
    kept = postprocess.keep_detections(found, score_threshold=0.4, max_detections=2)
    assert kept["count"].tolist() == [2, 0]
    assert kept["classes"].tolist() == [[4, 1], [-1, -1]]
    np.testing.assert_array_equal(kept["boxes"][0], found["boxes"][0, :2])
    assert not kept["boxes"][1].any() and kept["scores"].shape == (2, 2)

"""YOLO detection: target encoding and decoding, the loss on hand-made cases, the head,
and the anchors travelling with the model (Keras files and .tflite metadata)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import mobilecv
from mobilecv.errors import InputError
from mobilecv.modelinfo import get_info
from mobilecv.modelio import save_model
from mobilecv.tasks.detection import (
    DEFAULT_ANCHOR_SCENES,
    DEFAULT_ANCHORS,
    NO_CLASS,
    anchors_array,
    box_loss,
    class_loss,
    decode_targets,
    encode,
    match_detections,
    objectness_loss,
)

ANCHORS = np.array([[0.1, 0.1], [0.3, 0.2]], np.float32)


def test_an_object_goes_to_the_cell_of_its_centre_and_its_best_anchor():
    boxes = np.array([[0.30, 0.55, 0.44, 0.69], [0.6, 0.1, 0.9, 0.3], [0, 0, 0, 0]])
    classes = np.array([4, 7, NO_CLASS])
    objectness, target, label = encode(boxes, classes, ANCHORS, (4, 4))
    # Centres (0.37, 0.62) -> row 2, col 1, the small anchor; (0.75, 0.2) -> row 0, col 3,
    # the wide anchor. The padding row is skipped.
    assert np.argwhere(objectness).tolist() == [[0, 3, 1], [2, 1, 0]]
    assert label[2, 1, 0] == 4 and label[0, 3, 1] == 7
    assert (label == NO_CLASS).sum() == 4 * 4 * 2 - 2
    np.testing.assert_allclose(target[2, 1, 0, :2], [0.37 * 4 - 1, 0.62 * 4 - 2], atol=1e-6)
    # 0.14 wide against a 0.1 anchor: 0.1 * (2 s)^2 = 0.14 -> s = sqrt(1.4) / 2.
    np.testing.assert_allclose(target[2, 1, 0, 2:], [np.sqrt(1.4) / 2] * 2, atol=1e-6)
    assert np.isnan(target[objectness == 0]).all()


def test_encoding_then_decoding_gives_the_boxes_back():
    rng = np.random.default_rng(0)
    centres = (np.array([[0, 0], [1, 2], [3, 1], [2, 3]]) + rng.uniform(0.1, 0.9, (4, 2))) / 4
    sizes = rng.uniform(0.05, 0.35, (4, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).clip(0, 1)
    classes = np.array([0, 1, 2, 3])
    got_boxes, got_classes = decode_targets(*encode(boxes, classes, ANCHORS, (4, 4)), ANCHORS)
    order = np.argsort(got_classes)
    np.testing.assert_allclose(got_boxes[order], boxes, atol=1e-5)
    assert got_classes[order].tolist() == [0, 1, 2, 3]


def test_two_objects_on_one_cell_and_anchor_the_larger_keeps_it():
    boxes = np.array([[0.05, 0.05, 0.15, 0.15], [0.02, 0.02, 0.2, 0.2]])
    objectness, target, label = encode(boxes, np.array([1, 2]), ANCHORS[:1], (2, 2))
    assert objectness.sum() == 1 and label[0, 0, 0] == 2


def test_a_box_wider_than_four_anchors_is_clipped_not_lost():
    objectness, target, _ = encode(np.array([[0, 0, 1, 1]]), np.array([0]), ANCHORS[:1], (1, 1))
    assert objectness.sum() == 1 and (target[0, 0, 0, 2:] == 1.0).all()


def test_objectness_loss_by_hand():
    from mobilecv._tf import tf

    y_true = np.array([[1.0, 0.0, 0.0]], np.float32)
    y_pred = np.array([[0.8, 0.2, 0.6]], np.float32)
    got = np.asarray(objectness_loss(0.5)(tf().constant(y_true), tf().constant(y_pred)))
    want = [-np.log(0.8), 0.5 * -np.log(0.8), 0.5 * -np.log(0.4)]
    np.testing.assert_allclose(got[0], want, rtol=1e-5)


def test_box_and_class_losses_count_only_where_an_object_is():
    from mobilecv._tf import tf

    T = tf()
    box_true = np.array([[0.5, 0.5, 0.25, 0.75], [np.nan] * 4], np.float32)
    box_pred = np.array([[0.6, 0.4, 0.25, 0.55], [0.9, 0.9, 0.9, 0.9]], np.float32)
    got = np.asarray(box_loss(T.constant(box_true), T.constant(box_pred)))
    np.testing.assert_allclose(got, [0.01 + 0.01 + 0.0 + 0.04, 0.0], rtol=1e-5)
    label = np.array([2, NO_CLASS], np.int64)
    probs = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], np.float32)
    got = np.asarray(class_loss(T.constant(label), T.constant(probs)))
    np.testing.assert_allclose(got, [-np.log(0.7), 0.0], rtol=1e-5)


@pytest.mark.parametrize("keras", ["tf_keras", "keras3"])
def test_yolo_builds_three_named_outputs_on_the_chosen_stride(keras):
    model = mobilecv.build("yolo", width=0.25, resolution=64, classes=5, anchors=2, keras=keras)
    shapes = {n: tuple(t.shape[1:]) for n, t in zip(model.output_names, model.outputs, strict=True)}
    assert shapes == {"objectness": (4, 4, 2), "box": (4, 4, 2, 4), "scores": (4, 4, 2, 5)}
    combined = mobilecv.build(
        "yolo", width=0.25, resolution=64, classes=5, stride=8, combine=True, keras=keras
    )
    assert tuple(combined.outputs[0].shape[1:3]) == (8, 8)
    assert combined.count_params() > model.count_params()
    np.testing.assert_allclose(get_info(model).task_options["anchors"], DEFAULT_ANCHORS[2])


def test_anchor_options_are_checked():
    assert anchors_array([[0.1, 0.2]]).shape == (1, 2)
    for bad in (7, [[0.1]], [[0.1, -0.2]], []):
        with pytest.raises(InputError):
            anchors_array(bad)
    with pytest.raises(InputError, match="stride 64"):
        mobilecv.build("yolo", width=0.25, resolution=64, classes=5, stride=64)


def test_anchors_travel_with_the_model_to_a_fresh_process_and_into_tflite(tmp_path):
    anchors = [[0.12, 0.2], [0.3, 0.25]]
    model = mobilecv.build("yolo", width=0.25, resolution=48, classes=3, anchors=anchors)
    save_model(model, tmp_path / "yolo.keras")
    code = f"""
import json
from mobilecv.converters.tflite import convert
from mobilecv.modelinfo import read_info
from mobilecv.modelio import load_model
from mobilecv.train import task_of
model = load_model({str(tmp_path / "yolo.keras")!r})
task = task_of(model)
convert(model, "none", verify=False, progress=False).save({str(tmp_path / "y.tflite")!r})
info = read_info({str(tmp_path / "y.tflite")!r})
print(json.dumps({{"anchors": task.anchors.tolist(), "grid": task.grid,
                  "tflite": info.task_options["anchors"], "task": info.task}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["anchors"], anchors, atol=1e-6)
    np.testing.assert_allclose(got["tflite"], anchors, atol=1e-6)
    assert got["grid"] == [3, 3] and got["task"] == "detection"


def test_detections_match_themselves_and_not_a_shifted_copy():
    a = {
        "boxes": np.array([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]]], np.float32),
        "classes": np.array([[1, 2]]),
        "scores": np.array([[0.9, 0.8]], np.float32),
        "count": np.array([2]),
    }
    assert match_detections(a, a) == {"detection_f1": 1.0, "matched_iou": 1.0}
    shifted = {**a, "boxes": a["boxes"] + np.array([0.2, 0, 0.2, 0], np.float32)}
    # The first box moves by its own width (IoU 0), the second keeps IoU 0.5 / 1.5 = 1/3.
    assert match_detections(a, shifted)["detection_f1"] == 0.0
    other_class = {**a, "classes": np.array([[1, 3]])}
    assert match_detections(a, other_class)["detection_f1"] == 0.5


def test_the_default_anchors_are_what_k_means_gives_on_the_default_scenes():
    from mobilecv.anchors import corners_to_shapes, kmeans_anchors
    from mobilecv.tasks import get_task

    data = get_task("detection").load("scenes", "train", limit=DEFAULT_ANCHOR_SCENES)
    shapes = corners_to_shapes(data.y["box"])
    for k in (1, 3):
        anchors, _ = kmeans_anchors(shapes, k)
        np.testing.assert_allclose(anchors, DEFAULT_ANCHORS[k], atol=1e-5)

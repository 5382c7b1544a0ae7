"""The two-stage (Faster R-CNN style) detector: numpy targets and ROI align on hand-made
cases, the tiny Keras pair, and (slow) train -> save -> load in a fresh process ->
convert both stages -> the LiteRT pair agrees with Keras."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobilecv.errors import InputError
from mobilecv.two_stage import boxes as B

# ------------------------------------------------------------------ numpy, by hand


def test_deltas_round_trip_for_both_weightings():
    rng = np.random.default_rng(1)

    def random_boxes():  # sides 0.05 to 0.5: within the decode's clamp of the scale
        corner, side = rng.uniform(0, 0.5, (50, 2)), rng.uniform(0.05, 0.5, (50, 2))
        return np.concatenate([corner, corner + side], 1)

    ref, boxes = random_boxes(), random_boxes()
    for weights in (B.RPN_WEIGHTS, B.HEAD_WEIGHTS):
        deltas = B.encode_deltas(boxes, ref, weights)
        np.testing.assert_allclose(B.decode_deltas(deltas, ref, weights), boxes, atol=1e-5)
    # A wild dw is clamped at log(1000 / 16), as in Detectron: the width stays finite.
    wide = B.decode_deltas([[0.0, 0.0, 50.0, 0.0]], [[0.4, 0.4, 0.6, 0.6]])
    assert wide[0, 2] - wide[0, 0] == pytest.approx(0.2 * 1000 / 16, rel=1e-5)
    # The paper's parameterisation, by hand: a box twice as wide, shifted half an anchor.
    d = B.encode_deltas([[0.3, 0.2, 0.7, 0.4]], [[0.2, 0.2, 0.4, 0.4]])
    np.testing.assert_allclose(d, [[1.0, 0.0, np.log(2.0), 0.0]], atol=1e-6)


def test_anchor_grid_is_row_col_anchor_ordered_cell_centres():
    anchors = B.anchor_grid(2, 3, [[0.2, 0.1], [0.4, 0.4]])
    assert anchors.shape == (2 * 3 * 2, 4)
    grid = anchors.reshape(2, 3, 2, 4)
    np.testing.assert_allclose(grid[1, 2, 0], [5 / 6 - 0.1, 0.75 - 0.05, 5 / 6 + 0.1, 0.75 + 0.05])
    np.testing.assert_allclose(grid[0, 1, 1], [0.5 - 0.2, 0.25 - 0.2, 0.5 + 0.2, 0.25 + 0.2])


def test_match_anchors_thresholds_and_best_anchor_rule():
    anchors = np.array([
        [0.0, 0.0, 0.2, 0.2],  # IoU 1 with box 0: positive
        [0.0, 0.0, 0.2, 0.25],  # IoU 0.8 with box 0: positive (>= 0.7)
        [0.1, 0.0, 0.3, 0.2],  # IoU 1/3 with box 0: ignored (between 0.3 and 0.7)
        [0.6, 0.6, 0.8, 0.8],  # IoU 0.25 with box 1, its best anchor: positive anyway
        [0.9, 0.0, 1.0, 0.1],  # overlaps nothing: negative
    ])  # fmt: skip
    truth = np.array([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1.0, 1.0]])
    labels, best = B.match_anchors(anchors, truth)
    assert labels.tolist() == [1, 1, -1, 1, 0]
    assert best[[0, 1, 3]].tolist() == [0, 0, 1]
    empty, _ = B.match_anchors(anchors, np.zeros((0, 4)))
    assert empty.tolist() == [0] * 5


def test_subsample_caps_the_total_and_the_positive_share():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 30 + [0] * 100 + [-1] * 5)
    kept = B.subsample(labels, 40, 0.5, rng)
    assert (kept == 1).sum() == 20 and (kept == 0).sum() == 20
    few = B.subsample(np.array([1, 1] + [0] * 100), 40, 0.5, rng)
    assert (few == 1).sum() == 2 and (few == 0).sum() == 38  # negatives fill the rest


def test_roi_targets_label_by_iou_and_encode_foreground_only():
    rng = np.random.default_rng(0)
    truth, classes = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([7])
    rois = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
    picked, labels, deltas = B.roi_targets(rois, truth, classes, rng, sample=4, fraction=0.5)
    assert len(picked) == 4 and (labels == 8).sum() == 2 and (labels == 0).sum() == 2
    for roi, label, delta in zip(picked, labels, deltas, strict=True):
        if label == 0:
            assert not delta.any()
        else:
            expected = B.encode_deltas(truth, roi[None], B.HEAD_WEIGHTS)[0]
            np.testing.assert_allclose(delta, expected, atol=1e-6)


def test_objects_drop_padding_rows():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0, 0, 0, 0]])
    kept, classes = B.objects(boxes, np.array([4, -1]))
    assert kept.shape == (1, 4) and classes.tolist() == [4]


def test_crop_and_resize_hand_computed_bilinear_value():
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)  # value = 3 * row + col
    # One sample at the box centre: normalised (0.25, 0.25) -> cell (0.5, 0.5).
    out = B.crop_and_resize(image, [[0.0, 0.0, 0.5, 0.5]], [0], (1, 1))
    assert out[0, 0, 0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)
    # 2 x 2 from (row 0.5, col 1) to (row 2, col 2): bilinear of 3 * row + col is exact.
    out = B.crop_and_resize(image, [[0.25, 0.5, 1.0, 1.0]], [0], (2, 2))
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 3.5], [7.0, 8.0]])
    # Outside the image: the extrapolation value 0.
    out = B.crop_and_resize(image, [[-1.0, 0.0, 1.0, 1.0]], [0], (3, 1))
    assert out[0, 0, 0, 0] == 0.0 and out[0, 1, 0, 0] == pytest.approx(1.0 * 3 * 0 + 1.0)


def test_crop_and_resize_matches_tensorflow():
    from mobilecv._tf import tf

    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    boxes = rng.uniform(-0.3, 1.3, (12, 4)).astype(np.float32)  # some flipped, some outside
    index = rng.integers(0, 2, 12).astype(np.int32)
    for size in ((7, 7), (1, 3), (4, 2)):
        want = tf().image.crop_and_resize(image, boxes, index, size).numpy()
        np.testing.assert_allclose(B.crop_and_resize(image, boxes, index, size), want, atol=1e-5)


def test_roi_align_samples_the_bin_centres():
    # A feature map whose value is the image x-fraction of each cell's centre (and y on
    # channel 1): ROI align must return the x and y of each bin's centre inside the ROI.
    rows, cols, pool = 8, 8, 4
    ys, xs = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")  # fmt: skip
    features = np.stack([xs, ys], -1)[None].astype(np.float32)
    roi = np.array([[[0.2, 0.3, 0.6, 0.9]]])
    out = B.roi_align(features, roi, pool)[0]
    centres_x = 0.2 + (np.arange(pool) + 0.5) * 0.4 / pool
    centres_y = 0.3 + (np.arange(pool) + 0.5) * 0.6 / pool
    np.testing.assert_allclose(out[0, :, 0], centres_x, atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 1], centres_y, atol=1e-5)


def test_proposals_decode_clip_nms_and_pad():
    anchors = np.array([[0.1, 0.1, 0.4, 0.4], [0.11, 0.1, 0.41, 0.4], [0.6, 0.6, 1.2, 1.2]])
    objectness = np.array([[0.9, 0.8, 0.7]])
    deltas = np.zeros((1, 3, 4))
    boxes, scores = B.proposals(objectness, deltas, anchors, count=4)
    # The second anchor overlaps the first (IoU > 0.7) and goes; the third is clipped.
    np.testing.assert_allclose(boxes[0, :2], [[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]])
    np.testing.assert_allclose(scores[0], [0.9, 0.7, 0.0, 0.0])
    np.testing.assert_allclose(boxes[0, 2:], [[0.6, 0.6, 1.0, 1.0]] * 2)  # padding repeats


def test_detections_skip_background_and_threshold():
    rois = np.array([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]]])
    scores = np.array([[[0.1, 0.0, 0.9], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]]])  # bg, c0, c1
    deltas = np.zeros((1, 3, 4))
    found = B.detections(rois, scores, deltas, score_threshold=0.25, max_detections=5)
    assert found["count"].tolist() == [2]
    assert found["classes"][0, :2].tolist() == [1, 0]  # by score; classes do not suppress
    np.testing.assert_allclose(found["scores"][0, :2], [0.9, 0.6])
    np.testing.assert_allclose(found["boxes"][0, 0], rois[0, 0], atol=1e-6)


def test_mirror_flips_boxes_and_keeps_padding():
    from mobilecv.two_stage.training import mirror

    images = np.arange(2 * 2 * 3).reshape(2, 2, 3, 1).astype(np.uint8)
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0]]] * 2, np.float32)
    flipped, fboxes = mirror(images, boxes, np.array([True, False]))
    np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], images[1])
    np.testing.assert_allclose(fboxes[0, 0], [0.7, 0.2, 0.9, 0.4])
    assert not fboxes[0, 1].any() and np.array_equal(fboxes[1], boxes[1])


# ------------------------------------------------------------------- tiny Keras pair

TINY = {"width": 0.25, "resolution": 64, "classes": 10, "proposals": 8}


@pytest.fixture(scope="module")
def tiny():
    from mobilecv.two_stage import build_two_stage

    return build_two_stage(**TINY)


@pytest.fixture(scope="module")
def scenes():
    from mobilecv.tasks.base import get_task

    return get_task("detection").load("scenes", "validation", limit=8)


def test_build_names_outputs_and_records_the_config(tiny):
    from mobilecv.modelinfo import get_info
    from mobilecv.two_stage.model import config_of

    assert set(tiny.stage1.output_names) == {"objectness", "deltas", "features"}
    assert set(tiny.stage2.output_names) == {"scores", "deltas"}
    c = tiny.config
    assert c.feature_size == (4, 4) and tiny.stage1.outputs[0].shape[1:3] == (4, 4)
    assert tiny.stage2.input_shape == (None, c.pool * c.pool * c.channels)
    assert config_of(get_info(tiny.stage1)) == c  # what a loaded file or .tflite reads


def test_detect_and_macs(tiny, scenes):
    from mobilecv.two_stage import macs

    found = tiny.detect(scenes.x, score_threshold=0.0, max_detections=20)
    assert found["boxes"].shape == (8, 20, 4) and found["count"].shape == (8,)
    assert ((found["boxes"] >= 0) & (found["boxes"] <= 1)).all()
    cost = macs(tiny)
    assert cost["stage1"] > 0 and cost["stage2_per_roi"] > 0
    assert cost["total"] == cost["stage1"] + TINY["proposals"] * cost["stage2_per_roi"]


def test_recalibrated_batchnorm_matches_the_batch_statistics(tiny, scenes):
    """After training, stage 1 in inference mode must see what it saw in training mode:
    MobileNet's BatchNorm momentum 0.999 left the moving statistics near their initial
    values (mAP 0.00001 after two epochs); recalibration makes them the batch's."""
    from mobilecv.two_stage import training

    x = training.model_inputs(scenes.x, tiny.config)
    training.recalibrate(tiny, scenes.x)
    trained = tiny.stage1(x, training=True)["features"].numpy()
    inferred = tiny.stage1(x, training=False)["features"].numpy()
    # Not exact (~0.1 on 8 images): fused BatchNorm keeps the unbiased variance (n / (n - 1)),
    # and the gap compounds over 13 blocks. Before recalibration it is as large as the values.
    assert np.abs(inferred - trained).mean() < 0.2 * np.abs(trained).mean()  # before: ~0.9


def test_bad_arguments_are_input_errors(tiny):
    from mobilecv.two_stage import build_two_stage, convert_two_stage

    with pytest.raises(InputError, match="anchors"):
        build_two_stage(anchors=9, **TINY)
    with pytest.raises(InputError, match="mode"):
        convert_two_stage(tiny, "/tmp/never", mode="int4")
    with pytest.raises(InputError, match="images"):
        tiny.detect(np.zeros((64, 64, 3), np.uint8))


def test_training_step_lowers_the_loss_on_one_batch(scenes):
    """The joint step's gradients reach both stages: repeating it on one batch lowers the
    summed loss (on VGG-16, whose short graph traces in a few seconds: any backbone)."""
    from mobilecv._tf import get_keras
    from mobilecv.two_stage import build_two_stage, training

    rng = np.random.default_rng(0)
    detector = build_two_stage(**{**TINY, "backbone": "vgg16"})
    step = training._step_function(detector, get_keras("tf_keras").optimizers.Adam(1e-3))
    x = training.model_inputs(scenes.x, detector.config)
    first = {k: v.numpy() for k, v in training._forward_function(detector)(x).items()}
    t = training.batch_targets(detector, first, scenes.y["box"], scenes.y["class"], rng)
    first = sum(float(v) for v in step(x, t).values())
    for _ in range(5):
        last = sum(float(v) for v in step(x, t).values())
    assert np.isfinite(last) and last < first


# ---------------------------------------------------------------- slow: the whole path

RELOAD = """
import sys, numpy as np
from mobilecv.two_stage import load_two_stage
from mobilecv.tasks.base import get_task
d = load_two_stage(sys.argv[1])
x = get_task("detection").load("scenes", "validation", limit=16).x
found = d.detect(x, score_threshold=0.05)
np.savez(sys.argv[2], **found)
"""


@pytest.mark.slow
def test_train_save_reload_convert_and_agree(tmp_path):
    from mobilecv.tasks.base import get_task
    from mobilecv.tasks.detection import match_detections
    from mobilecv.two_stage import (
        TwoStageTflite,
        build_two_stage,
        convert_two_stage,
        evaluate_two_stage,
        train_two_stage,
    )

    detector = build_two_stage(**TINY)
    detector, report = train_two_stage(
        detector, 2, train_scenes=192, val_scenes=32, batch_size=32, learning_rate=3e-3
    )
    json.dumps(report)  # a report is JSON
    assert report["history"]["head_class"][-1] < report["history"]["head_class"][0]
    assert 0.0 <= report["validation"]["map50"] <= 1.0
    detector.save(tmp_path / "keras")
    out = tmp_path / "found.npz"
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path / "keras"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    x = get_task("detection").load("scenes", "validation", limit=16).x
    keras_found = detector.detect(x, score_threshold=0.05)
    assert keras_found["count"].sum() > 0
    reloaded = dict(np.load(out))
    for key in keras_found:
        np.testing.assert_allclose(reloaded[key], keras_found[key], atol=1e-5)
    for mode, least in (("none", 0.95), ("int8", 0.5)):
        paths = convert_two_stage(detector, tmp_path / mode, mode=mode, calibration_samples=32)
        assert [p.name for p in paths] == ["stage1.tflite", "stage2.tflite"]
        pair = TwoStageTflite(tmp_path / mode)
        agreement = match_detections(keras_found, pair.detect(x, score_threshold=0.05))
        assert agreement["detection_f1"] >= least, (mode, agreement)
    scores = evaluate_two_stage(TwoStageTflite(paths), 16)
    assert {"map", "map50"} <= set(scores)

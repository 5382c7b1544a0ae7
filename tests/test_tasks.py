"""The task layer: registry, heads on any backbone, losses and metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest

import mobilecv
from mobilecv import postprocess
from mobilecv.errors import InputError
from mobilecv.features import backbone as feature_maps
from mobilecv.tasks import get_task, list_tasks


def test_registry_lists_the_builtin_tasks_and_rejects_unknown_ones():
    assert {"classification", "localisation", "landmarks"} <= set(list_tasks())
    with pytest.raises(InputError, match="localisation"):
        get_task("localization_")


def test_every_registered_model_names_a_registered_task():
    for name in mobilecv.list_models():
        assert mobilecv.registry.get(name).task in list_tasks(), name
    assert mobilecv.registry.get("localizer").task == "localisation"
    assert mobilecv.registry.get("mobilenet_v2").task == "classification"


def _one_backbone_per_family():
    seen = set()
    for name in mobilecv.list_models():
        entry = mobilecv.registry.get(name)
        if entry.task == "classification" and entry.family not in seen:
            seen.add(entry.family)
            yield name


@pytest.mark.parametrize("backbone", list(_one_backbone_per_family()))
def test_task_models_build_on_every_backbone_family(backbone):
    resolution = max(48, mobilecv.registry.get(backbone).min_resolution)
    knobs = {"width": 0.25, "resolution": resolution, "input_channels": 1}
    localizer = mobilecv.build("localizer", backbone=backbone, classes=7, **knobs)
    shapes = {
        n: int(t.shape[-1]) for n, t in zip(localizer.output_names, localizer.outputs, strict=True)
    }
    assert shapes == {"presence": 1, "box": 4, "scores": 7}
    landmarker = mobilecv.build("landmarker", backbone=backbone, points=4, **knobs)
    assert [int(t.shape[-1]) for t in landmarker.outputs] == [8]
    # The head's parameters do not depend on the resolution (pooled to a fixed grid).
    bigger = mobilecv.build(
        "localizer", backbone=backbone, classes=7, **{**knobs, "resolution": resolution + 32}
    )
    assert bigger.count_params() == localizer.count_params()
    # YOLO on the backbone's deepest map: an S x S grid of B anchors, whatever the family.
    deepest = max(int(k.removeprefix("stride")) for k in feature_maps(backbone, **knobs).output)
    yolo = mobilecv.build("yolo", backbone=backbone, classes=7, anchors=2, stride=deepest, **knobs)
    shapes = {n: tuple(t.shape[3:]) for n, t in zip(yolo.output_names, yolo.outputs, strict=True)}
    assert shapes == {"objectness": (2,), "box": (2, 4), "scores": (2, 7)}


def test_localisation_loss_is_the_courses(tmp_path):
    """Present: squared box error + log loss on class and Pc; absent: only the Pc term."""
    from mobilecv._tf import get_keras

    K = get_keras("tf_keras")
    task = get_task("localisation")
    inputs = K.Input((3,))
    head = {
        "presence": K.layers.Dense(1, activation="sigmoid", name="presence")(inputs),
        "box": K.layers.Dense(4, activation="sigmoid", name="box")(inputs),
        "scores": K.layers.Dense(3, activation="softmax", name="scores")(inputs),
    }
    model = K.Model(inputs, head)
    task.compile(model, K.optimizers.SGD(0.0), loss_weights={"presence": 1, "box": 1, "scores": 1})
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = {
        "present": np.array([1, 0, 1, 0], np.float32),
        "box": np.array([[0.1, 0.2, 0.5, 0.6], [0] * 4, [0.3, 0.3, 0.9, 0.8], [0] * 4], np.float32),
        "class": np.array([2, 0, 1, 0]),
    }
    targets, weights = task.keras_targets(y)
    got = model.evaluate(
        x, targets, sample_weight=weights, batch_size=4, verbose=0, return_dict=True
    )
    out = model.predict(x, verbose=0)
    pc, box, scores = out["presence"][:, 0], out["box"], out["scores"]
    present = y["present"]
    bce = -(present * np.log(pc) + (1 - present) * np.log(1 - pc))
    sq = np.mean((box - postprocess.corners_to_centre(y["box"])) ** 2, axis=1) * present
    ce = -np.log(scores[np.arange(4), y["class"]]) * present
    # Keras averages each term over the batch (absent samples contribute zero).
    expected = bce.mean() + sq.mean() + ce.mean()
    assert got["loss"] == pytest.approx(expected, rel=1e-4)


def test_localisation_metrics_by_hand():
    task = get_task("localisation")
    outputs = {
        "presence": np.array([[0.9], [0.2], [0.7]]),
        # (bx, by, bh, bw): the first is exact, the third is off by half its width.
        "box": np.array([[0.3, 0.4, 0.4, 0.4], [0.5] * 4, [0.6, 0.5, 0.2, 0.2]]),
        "scores": np.array([[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]]),
    }
    y = {
        "present": np.array([1, 0, 1]),
        "box": np.array([[0.1, 0.2, 0.5, 0.6], [0] * 4, [0.6, 0.4, 0.8, 0.6]]),
        "class": np.array([1, 0, 1]),
    }
    figures = task.score(outputs, y)
    # Third box: predicted [0.5, 0.4, 0.7, 0.6] vs [0.6, 0.4, 0.8, 0.6]: IoU 0.02/0.06 = 1/3.
    assert figures["mean_iou"] == pytest.approx((1 + 1 / 3) / 2, rel=1e-5)
    assert figures["iou50"] == 0.5
    assert figures["class_accuracy"] == 0.5
    assert figures["presence_accuracy"] == 1.0


def test_landmark_loss_ignores_invisible_points_and_nme_by_hand():
    from mobilecv._tf import tf
    from mobilecv.tasks.landmarks import masked_squared_error

    task = get_task("landmarks")
    y = {
        "points": np.array([[[0.2, 0.2], [0.8, 0.8]]], np.float32),
        "visible": np.array([[1, 0]]),
        "box": np.array([[0.2, 0.2, 0.8, 0.8]]),
    }
    targets, _ = task.keras_targets(y)
    predicted = np.array([[0.3, 0.2, 0.0, 0.0]], np.float32)  # 0.1 off; the hidden one is far
    loss = masked_squared_error(None)(tf().constant(targets["points"]), tf().constant(predicted))
    assert float(loss[0]) == pytest.approx(0.01 / 2, rel=1e-5)  # mean over visible coordinates
    nme = task.score({"points": predicted}, y)["nme"]
    assert nme == pytest.approx(0.1 / 0.6, rel=1e-5)  # error / sqrt(box area)

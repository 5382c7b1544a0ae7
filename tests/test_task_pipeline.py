"""Every task through the pipeline: train, int8 conversion verified by the task's own
figure, and numpy post-processing in the on-device script without TensorFlow or mobilecv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mobilecv
from mobilecv import postprocess
from mobilecv.bench import ondevice
from mobilecv.converters.tflite import convert
from mobilecv.data.datasets import model_inputs
from mobilecv.evaluate import TfliteModel
from mobilecv.tasks import get_task
from mobilecv.train import task_of, train

# One model per task beyond classification, at a tiny size.
TASK_MODELS = {
    # Scenes hold 10 classes (test_localisation.py matches a 4-class localiser's box and
    # class scores, of equal shape, by name).
    "localisation": ("localizer", {"classes": 10}),
    "landmarks": ("landmarker", {}),
    "detection": ("yolo", {"classes": 10}),
    "centroids": ("centroid_grid", {"classes": 10}),
    # 10 classes and the background, at the model's 48 px from the scenes' 96 px labels.
    "segmentation": ("unet", {"classes": 11}),
}
TINY = {"width": 0.25, "resolution": 48, "input_channels": 3}


@pytest.fixture(scope="module", params=sorted(TASK_MODELS))
def trained(request, tmp_path_factory):
    """(task, model, its int8 conversion, test data): one epoch on a few scenes."""
    name, knobs = TASK_MODELS[request.param]
    model = mobilecv.build(name, **TINY, **knobs)
    model, report = train(model, "scenes", 1, limit=96, batch_size=32, progress=False)
    assert report.task == request.param and get_task(request.param).primary_metric in (
        report.val_metrics
    )
    result = convert(model, "int8", calibration="scenes", samples=48, progress=False)
    test = get_task(request.param).load("scenes", "test", limit=8)
    path = tmp_path_factory.mktemp(request.param) / "model.tflite"
    result.save(path)
    return task_of(model), model, result, path, test


def test_conversion_is_verified_by_the_tasks_figure(trained):
    task, _, result, _, _ = trained
    agreement = result.verification.agreement
    assert task.agreement_metric in agreement, agreement
    assert result.verification.top1_agreement is None  # not a classifier
    if task.name == "landmarks":
        assert agreement["point_error"] >= 0.0
    else:  # box_iou, detection_f1
        assert 0.0 <= agreement[task.agreement_metric] <= 1.0


def test_litert_outputs_are_matched_by_name(trained):
    """Outputs of equal shape (a box of 4 and 4 class scores) must not swap: the LiteRT
    float model gives the Keras outputs name for name."""
    task, model, _, _, test = trained
    x = model_inputs(test.x, model)
    float_model = convert(model, "none", verify=False, progress=False)
    got = TfliteModel(float_model.tflite).predict_outputs(x, task.outputs)
    want = model(x, training=False)
    for name in task.outputs:  # a swap is off by ~0.1-0.5; LiteRT's float kernels by ~1e-5
        np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=1e-4)


def _device_folder(tmp_path: Path) -> Path:
    """ondevice.py and postprocess.py alone, where importing TensorFlow or mobilecv fails."""
    folder = tmp_path / "device"
    folder.mkdir()
    shutil.copy(ondevice.__file__, folder / "ondevice.py")
    shutil.copy(postprocess.__file__, folder / "postprocess.py")
    for blocked in ("tensorflow", "mobilecv"):
        (folder / blocked).mkdir()
        (folder / blocked / "__init__.py").write_text(f"raise ImportError('no {blocked} here')\n")
    return folder


def test_ondevice_decodes_with_the_tasks_numpy_post_processing(trained, tmp_path):
    task, model, result, path, test = trained
    folder = _device_folder(tmp_path)
    tfl = TfliteModel(path)
    x = model_inputs(test.x[:1], model)
    from mobilecv.converters.tflite import quantize_input

    np.save(tmp_path / "x.npy", quantize_input(x, tfl.input))
    done = subprocess.run(
        [sys.executable, str(folder / "ondevice.py"), str(path), "--postprocess", "--runs", "3",
         "--inputs", str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.json")],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    predictions = report["predictions"]
    assert predictions["task"] == task.name and report["postprocess_ms"] >= 0
    expected = task.decode(tfl.predict_outputs(x, task.outputs))
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(predictions[key], dtype=float), value, atol=1e-6)


def test_decode_takes_a_classifiers_single_output_whatever_its_name():
    decoded = postprocess.decode("classification", {"predictions": np.array([[0.1, 0.7, 0.2]])})
    assert decoded["classes"].tolist() == [[1]]
    with pytest.raises(ValueError, match="presence"):
        postprocess.decode("localisation", {"box": np.zeros((1, 4))})


@pytest.mark.parametrize("name", sorted(TASK_MODELS))
def test_a_task_model_calibrates_on_plain_images_or_its_tasks_own_data(name):
    # Calibration needs images only: fashion_mnist (no boxes, no points) calibrates a
    # localiser; "scenes" is read by the task; a source neither knows is one clear error.
    from mobilecv.calibration import load_samples
    from mobilecv.converters.tflite import _task_images
    from mobilecv.errors import InputError

    model_name, knobs = TASK_MODELS[name]
    model = mobilecv.build(model_name, **TINY, **knobs)
    shape = (TINY["resolution"], TINY["resolution"], 3)
    for source in ("fashion_mnist", "scenes"):
        images = load_samples(_task_images(source, model, 4), 4, shape)
        assert images.shape == (4, *shape) and images.std() > 0, source
    with pytest.raises(InputError, match="no_such_source"):
        load_samples(_task_images("no_such_source", model, 4), 4, shape)

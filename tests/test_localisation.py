"""The localiser (Pc, box, classes) through compress and convert: QAT and pruning, full int8
with every output quantised on its own, and outputs that keep their names end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import mobilecv
from mobilecv import tflite_graph
from mobilecv.compress import qat
from mobilecv.converters.tflite import convert
from mobilecv.data.datasets import model_inputs
from mobilecv.errors import InputError
from mobilecv.evaluate import TfliteModel
from mobilecv.tasks import get_task
from mobilecv.train import train

TINY = {"width": 0.25, "resolution": 32, "input_channels": 3}
TASK = get_task("localisation")


def _int8_outputs(tflite: bytes, classes: int) -> dict:
    """Each output tensor by signature name: int8, one scale and zero point of its own."""
    graph = tflite_graph.load(tflite)
    assert sorted(graph.output_names) == sorted(TASK.outputs), graph.output_names
    tensors = dict(zip(graph.output_names, (graph.tensors[i] for i in graph.outputs), strict=True))
    widths = {"presence": 1, "box": 4, "scores": classes}
    for name, tensor in tensors.items():
        assert tensor.dtype == "int8", (name, tensor.dtype)
        assert tensor.shape[-1] == widths[name]
        assert len(tensor.scale) == 1 and len(tensor.zero_point) == 1 and tensor.scale[0] > 0
    assert graph.dtypes == {"int8"}, graph.dtypes  # full integer: no float activation
    return tensors


def test_fewer_class_scores_than_the_data_has_is_an_input_error():
    """Ten Fashion-MNIST classes into four class scores used to fail deep inside the loss
    ("label value outside the valid range")."""
    model = mobilecv.build("localizer", classes=4, **TINY)
    with pytest.raises(InputError, match=r"scores 4 classes but scenes has 10"):
        train(model, "scenes", 1, limit=8, batch_size=8, progress=False)


def test_qat_localiser_keeps_its_output_names_through_int8():
    """tfmot renames the output layers "quant_box", ...; the .tflite signature must still say
    "box", so that outputs of equal shape (a box of 4, 4 class scores) match by name. The
    head is what is under test: a LeNet-5 backbone converts in seconds."""
    model = mobilecv.build("localizer", classes=4, backbone="lenet5", **TINY)
    quantised = qat.quantize(model)
    assert quantised.output_names == model.output_names
    result = convert(quantised, "int8", verify_samples=16, progress=False)
    _int8_outputs(result.tflite, classes=4)
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    got = TfliteModel(result.tflite).predict_outputs(x, TASK.outputs)
    want = quantised(x, training=False)
    for name in TASK.outputs:  # a swap of box and scores is off by ~0.25 everywhere
        np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=0.05, err_msg=name)
    assert "box_iou" in result.verification.agreement


def _cli(*args, cwd) -> str:
    done = run_cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_localiser_trains_prunes_qats_and_converts_to_int8_from_the_cli(tmp_path):
    """Each stage in its own process (the saved files are what the next stage reads):
    train, prune and QAT keeping the zeros (PQAT), convert to full int8."""
    small = ["--data", "scenes", "--limit", 64, "--batch-size", 32, "--epochs", 1]
    size = ["--width", 0.25, "--resolution", 32]
    _cli("train", "localizer", *small, *size, "-o", "t", cwd=tmp_path)
    compress = ["compress", "t/model.keras", *small, "--prune", 0.5, "--qat", "-o", "q"]
    report = json.loads(_cli(*compress, "--json", cwd=tmp_path))
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert report["qat_scheme"] == "pqat" and stages["qat"]["sparsity"] >= 0.49
    assert "iou50" in stages["prune"]["val_metrics"] and "iou50" in stages["qat"]["val_metrics"]
    int8 = ["--quantize", "int8", "--calibration", "scenes", "--samples", 32]
    converted = json.loads(
        _cli("convert", "q/model.h5", *int8, "-o", "q.tflite", "--json", cwd=tmp_path)
    )
    assert converted["qat"] is True
    assert 0.0 <= converted["verification"]["agreement"]["box_iou"] <= 1.0
    tflite = (tmp_path / "q.tflite").read_bytes()
    _int8_outputs(tflite, classes=10)
    test = TASK.load("scenes", "test", limit=8)
    x = model_inputs(test.x, mobilecv.build("localizer", classes=10, **TINY))  # same input
    scores = TASK.score(TfliteModel(tflite).predict_outputs(x, TASK.outputs), test.y)
    assert 0.0 <= scores["iou50"] <= 1.0 and scores["present_objects"] > 0

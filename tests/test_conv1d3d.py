"""1D and 3D convnets in TFLite (issue 16 §5): what converts, what LiteRT and TFLite Micro
run, and the real 1D signal (mobilecv.signals)."""

import numpy as np
import pytest

import mobilecv
from mobilecv import signals
from mobilecv.errors import InputError, RunFailed


def test_eeg_windows_are_real_and_split_in_time():
    data = signals.eeg_windows(length=32, stride=4)
    assert data.x_train.shape[1:] == (32, 1) and set(data.y_train) == {0, 1, 2, 3}
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    recording = signals.eeg_recording()
    assert recording.shape == (800, 4) and recording.std(axis=0).min() > 0
    # the first test window of electrode 0 starts where the training part ends (sample 560)
    first = data.x_test[data.y_test == 0][0, :, 0]
    train = recording[:560]
    scaled = (recording[560:592, 0] - train.min()) / (train.max() - train.min())
    np.testing.assert_allclose(first, np.clip(scaled, 0, 1), rtol=1e-5)
    with pytest.raises(InputError):
        signals.eeg_windows(length=500)


def _litert(tflite: bytes, x):
    from mobilecv.evaluate import TfliteModel

    return TfliteModel(tflite).predict(x)


def _convert(model, mode, rows):
    from mobilecv.converters.tflite import convert

    calibration = rows if mode == "int8" else None
    return convert(model, mode, calibration=calibration, samples=len(rows), progress=False)


@pytest.mark.parametrize("mode", [pytest.param("none", marks=pytest.mark.slow), "int8"])
def test_1d_lenet_converts_and_runs_in_litert_and_tflm(tmp_path, mode):
    from mobilecv.bench import micro

    model = mobilecv.build("lenet5", dims=1, resolution=32, input_channels=1, classes=4, width=0.5)
    rows = np.random.default_rng(0).random((24, 32, 1), dtype=np.float32)
    result = _convert(model, mode, rows)
    keras_out = model.predict(rows[:4], verbose=0)
    litert_out = _litert(result.tflite, rows[:4])
    tolerance = 1e-4 if mode == "none" else 0.05  # int8 probabilities: a few steps of 1/256
    np.testing.assert_allclose(litert_out, keras_out, atol=tolerance)
    path = tmp_path / "m.tflite"
    path.write_bytes(result.tflite)
    run = micro.run(path)
    assert run["ok"], run.get("error")


def test_3d_pooling_is_no_tflite_builtin():
    """The classic builder's 3D LeNet pools in 3D; the converter refuses it (one line)."""
    model = mobilecv.build("lenet5", dims=3, resolution=16, input_channels=1, classes=4)
    rows = np.random.default_rng(0).random((4, 16, 16, 16, 1), dtype=np.float32)
    with pytest.raises(RunFailed, match="AvgPool3D|MaxPool3D"):
        _convert(model, "none", rows)


@pytest.mark.slow
def test_strided_conv3d_runs_in_litert_float_and_int8_but_not_tflm(tmp_path):
    from mobilecv.bench import micro

    model = signals.strided_conv3d(size=8, width=4)
    rows = np.random.default_rng(0).random((16, 8, 8, 8, 1), dtype=np.float32)
    keras_out = model.predict(rows[:4], verbose=0)
    for mode in ("none", "int8"):
        result = _convert(model, mode, rows)
        np.testing.assert_allclose(_litert(result.tflite, rows[:4]), keras_out, atol=0.05)
        if mode == "int8":  # no int8 CONV_3D kernel: the converter leaves them in float
            assert any("CONV_3D" in note for note in result.notes)
    path = tmp_path / "m.tflite"
    path.write_bytes(result.tflite)
    run = micro.run(path)
    assert not run["ok"] and run["unresolved_ops"] == ["CONV_3D"]

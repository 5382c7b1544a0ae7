"""The TFLite converter and its LiteRT check run in a worker process (mobilecv.converters.isolated):
a crash there fails one conversion with one line, and the caller converts again."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_convert import tiny_model

from mobilecv.converters import isolated
from mobilecv.converters.tflite import convert
from mobilecv.errors import RunFailed

ABORT_ALWAYS = "abort-every-converter-worker"
ABORT_USED = "abort-a-used-converter-worker"


def test_converter_crash_fails_one_conversion_and_the_next_one_works(monkeypatch):
    model = tiny_model()
    monkeypatch.setenv(isolated.ABORT_HOOK_VAR, "1")  # not a hook value: ignored
    first = convert(model, "none", verify_samples=4, progress=False)
    monkeypatch.setenv(isolated.ABORT_HOOK_VAR, ABORT_ALWAYS)
    with pytest.raises(RunFailed) as failure:
        convert(model, "none", verify_samples=4, progress=False)
    message = str(failure.value)
    assert message.startswith("TFLite converter crashed with SIGABRT converting to none")
    assert "\n" not in message
    monkeypatch.delenv(isolated.ABORT_HOOK_VAR)
    again = convert(model, "none", verify_samples=4, progress=False)
    assert again.tflite == first.tflite and again.verification.max_abs_error < 1e-4


def test_a_used_worker_that_crashes_is_replaced_and_the_job_retried(monkeypatch):
    model = tiny_model()
    convert(model, "none", verify=False, progress=False)  # the worker has done a job now
    monkeypatch.setenv(isolated.ABORT_HOOK_VAR, ABORT_USED)
    result = convert(model, "none", verify_samples=4, progress=False)
    assert any("crashed (SIGABRT) after earlier jobs" in n for n in result.notes), result.notes
    assert result.verification.max_abs_error < 1e-4


def test_cli_converter_crash_exits_1_with_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "model.h5"
    tiny_model().save(src)
    out = tmp_path / "out"
    exe = os.path.join(os.path.dirname(sys.executable), "mobilecv")
    env = {**os.environ, isolated.ABORT_HOOK_VAR: ABORT_ALWAYS}
    proc = subprocess.run(
        [exe, "convert", str(src), "-o", str(out / "m.tflite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: TFLite converter crashed with SIGABRT converting to none")
    assert not out.exists() or list(out.iterdir()) == []  # no partial or temporary file


def test_nan_weights_are_refused_before_conversion():
    """A diverged training leaves NaN weights; TF 2.21 produced NaN quantisation scales
    from them, on which LiteRT's allocate_tensors() dies with SIGSEGV."""
    model = tiny_model()
    kernel = model.layers[1].kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.raises(RunFailed, match=r"NaN/inf weights \(1 of \d+ variables, first conv2d"):
        convert(model, "int8", calibration="digits", samples=8, verify_samples=4)


@pytest.mark.slow  # a real crash, so a fresh worker after it; the abort hook covers the mechanism
def test_litert_crash_on_nan_scales_is_isolated(monkeypatch):
    """The real crash behind the 'converter segfault' on a diverged QAT EfficientNet:
    LiteRT's allocate_tensors() on NaN quantisation ranges. With the NaN check bypassed
    it reaches the worker, which dies; this process gets one line."""
    import tensorflow_model_optimization as tfmot

    import mobilecv.converters.tflite as tflite

    qat = tfmot.quantization.keras.quantize_model(tiny_model())
    for w in qat.weights:
        if w.name.endswith(("_min:0", "_max:0")):
            w.assign(np.full(w.shape, np.nan, np.float32))
    monkeypatch.setattr(tflite, "_require_finite_weights", lambda model: None)
    with pytest.raises(RunFailed, match="^LiteRT crashed with SIGSEGV running the converted model"):
        convert(qat, "int8", verify_samples=4, progress=False)
    assert convert(tiny_model(), "none", verify_samples=4).verification.max_abs_error < 1e-4


def test_model_that_cannot_be_a_saved_model_converts_in_process(monkeypatch):
    import mobilecv.converters.tflite as tflite

    def refuse(model, keras3, path):
        raise RuntimeError("cannot save this model\nsecond line")

    monkeypatch.setattr(tflite, "_export_saved_model", refuse)
    result = convert(tiny_model(), "none", verify_samples=4, progress=False)
    assert result.verification.max_abs_error < 1e-4
    assert any("cannot save this model): converted in this process" in n for n in result.notes)

"""Progress output: a live bar on a terminal, one line per stage in a file or a pipe.

The file cases redirect a fresh process's stderr to a real file, as a CI log or
`mobilecv ... 2> log.txt` does; before mobilecv.progress, tqdm wrote hundreds of
carriage-return updates there.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobilecv.progress import Progress


def _stderr_to_file(code: str, tmp_path: Path) -> str:
    """Run `code` in a new Python process whose stderr is a file; return that file."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-c", code], stderr=handle, check=True, timeout=300, cwd=tmp_path
        )
    text = log.read_text()
    assert "\r" not in text, text[:500]
    return text


def test_a_stage_in_a_file_is_one_line(tmp_path):
    code = (
        "from mobilecv.progress import Progress\n"
        "for stage in ('convert', 'verify'):\n"
        "    with Progress(stage, 300, 'step') as bar:\n"
        "        for _ in range(300):\n"
        "            bar.update(note='working')\n"
    )
    lines = _stderr_to_file(code, tmp_path).splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"convert: 300 steps \.\.\. done in \d+\.\d s", lines[0])
    assert lines[1].startswith("verify: 300 steps ... done in ")


def test_a_failed_stage_says_how_far_it_got():
    stream = io.StringIO()
    with pytest.raises(ZeroDivisionError), Progress("probes", 7, "probe", stream=stream) as bar:
        bar.update()
        raise ZeroDivisionError
    assert re.fullmatch(r"probes: 1/7 probes \.\.\. failed after \d+\.\d s\n", stream.getvalue())


def test_per_update_lines_for_long_items_and_nothing_when_disabled():
    stream = io.StringIO()
    with Progress("sweep", 2, "point", per_update=True, stream=stream) as bar:
        bar.update(note="w0.25 r32 fits")
        bar.update(note="w0.5 r32 does not fit")
    lines = stream.getvalue().splitlines()
    assert lines[:2] == [
        "sweep: 1/2 points (w0.25 r32 fits)",
        "sweep: 2/2 points (w0.5 r32 does not fit)",
    ]
    assert lines[2].startswith("sweep: 2 points ... done in ") and len(lines) == 3
    quiet = io.StringIO()
    with Progress("sweep", 2, enabled=False, per_update=True, stream=quiet) as bar:
        bar.update()
    with Progress("epoch 1/2", 2, summary=False, stream=quiet) as bar:
        bar.update()  # the caller prints its own line per epoch
    assert quiet.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_live_bar_then_the_summary_line():
    stream = _Terminal()
    with Progress("calibrating host", 3, "probe", stream=stream) as bar:
        for _ in range(3):
            bar.update(note="conv_int8")
    text = stream.getvalue()
    assert "\r" in text and "conv_int8" in text  # tqdm's live bar
    assert text.rstrip().splitlines()[-1].startswith("calibrating host: 3 probes ... done in")


def test_training_bars_in_a_file_leave_only_the_epoch_lines(tmp_path):
    # The per-epoch Keras callback, driven as Keras would drive it (no TensorFlow needed).
    code = (
        "import types\n"
        "from mobilecv.train import TqdmProgress\n"
        "K = types.SimpleNamespace(callbacks=types.SimpleNamespace(Callback=object))\n"
        "cb = TqdmProgress(K, epochs=2, steps=50).callback\n"
        "for epoch in range(2):\n"
        "    cb.on_epoch_begin(epoch)\n"
        "    for batch in range(50):\n"
        "        cb.on_train_batch_end(batch, {'loss': 1.0 / (batch + 1), 'accuracy': 0.5})\n"
        "    cb.on_epoch_end(epoch, {'loss': 0.5, 'accuracy': 0.75})\n"
    )
    lines = _stderr_to_file(code, tmp_path).splitlines()
    assert lines == [
        "epoch 1/2: loss=0.5000 accuracy=0.7500",
        "epoch 2/2: loss=0.5000 accuracy=0.7500",
    ]


def test_host_calibration_in_a_file_is_one_line(tmp_path):
    try:
        import tflite_micro
    except ImportError:
        pytest.skip("needs tflite-micro's sine_float.tflite as a probe model")
    sine = next(Path(tflite_micro.__file__).parent.rglob("sine_float.tflite"), None)
    if sine is None:
        pytest.skip("needs tflite-micro's sine_float.tflite as a probe model")
    # The real calibration loop, with the probe models and their timing stubbed out:
    # building the probes needs TensorFlow and timing them takes half a minute.
    code = (
        "from pathlib import Path\n"
        "from mobilecv.bench import calibrate, harness\n"
        "names = ('conv_fp32', 'conv_int8', 'dw_fp32', 'dw_int8', 'fc_fp32', 'fc_int8', 'chain')\n"
        f"calibrate._probe_models = lambda tmp: {{n: (Path({str(sine)!r}), 1000) for n in names}}\n"
        "harness.measure = lambda *a, **k: {'ok': True, 'latency_ms': {'p50': 0.05}}\n"
        "result = calibrate.run_calibration(progress=True)\n"
        "assert set(result['probe_seconds']) == set(names)\n"
    )
    lines = _stderr_to_file(code, tmp_path).splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"calibrating host: 7 probes \.\.\. done in \d+\.\d s", lines[0])

"""The TFLite converter and the LiteRT check of its output run in a spawned worker
process, so a crash in either fails one conversion, not the caller.

Both have died with SIGSEGV (TF 2.21, ai-edge-litert 2.3): the converter on a QAT
EfficientNet whose fine-tune had diverged to NaN weights, LiteRT's allocate_tensors()
on a QAT model with NaN quantisation ranges. A signal cannot be caught in Python, so
the work runs in a worker: a fresh interpreter started as `python -m
mobilecv.converters.isolated` (spawned, never forked: TensorFlow is multithreaded).
The Keras side of the verification stays in the caller, on the caller's model.

- The parent writes each job into a job folder and sends the folder's path on the
  worker's stdin: `job.json` (what to do), and for a conversion the model as a
  SavedModel (`saved_model/`) plus the calibration rows (`calibration.npy`); for a
  LiteRT run the .tflite and the input rows.
- The worker imports TensorFlow only (no Keras, no tfmot, no model rebuild), does the
  job, writes its result into the folder and answers one JSON line: `{"ok": true}`,
  or `{"error": ...}` for an ordinary failure.
- A worker killed by a signal becomes one `RunFailed` line naming the signal.

The worker stays up for the next job (a TensorFlow import costs about 5 s of CPU)
and exits when its stdin closes or after `IDLE_SECONDS` without work. A worker that
crashes after earlier jobs is replaced and the job retried once in a fresh one, in
case the crash came from state those jobs left behind.

Test hook: with MOBILECV_TEST_ABORT_CONVERTER set to a key of `ABORT_HOOKS` (long,
explicit values; anything else is ignored) in the parent's environment, the worker
calls os.abort() where the converter would run. Only the worker acts on it, so it
can never kill the caller.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

from mobilecv.errors import RunFailed

SAVED_MODEL = "saved_model"
CALIBRATION = "calibration.npy"
JOB = "job.json"
CONVERTED = "converted.tflite"
CHECKED = "checked.tflite"
OUTPUTS = "outputs.npz"
IDLE_SECONDS = 300

ABORT_HOOK_VAR = "MOBILECV_TEST_ABORT_CONVERTER"
# Value of ABORT_HOOK_VAR -> when the worker aborts in a conversion: on every one, or
# only once it has done a job before (to test the retry in a fresh worker).
ABORT_HOOKS = {"abort-every-converter-worker": "always", "abort-a-used-converter-worker": "used"}


class RuntimeRefused(Exception):
    """LiteRT refused the model with an ordinary error (not a crash)."""


class Session:
    """The jobs of one `convert()` call, in one job folder."""

    def __init__(self, job_dir: Path, notes: list[str]) -> None:
        self.job_dir = job_dir
        self.notes = notes

    def write_model(self, export) -> None:
        """`export(path)` writes the SavedModel the conversions read."""
        export(self.job_dir / SAVED_MODEL)

    def write_calibration(self, calib: np.ndarray | None) -> None:
        if calib is not None:
            np.save(self.job_dir / CALIBRATION, np.ascontiguousarray(calib, dtype=np.float32))

    def convert(self, settings: dict[str, Any]) -> bytes:
        """The SavedModel converted with `settings` (see tflite._settings)."""
        hook = ABORT_HOOKS.get(os.environ.get(ABORT_HOOK_VAR, ""))
        self._run(
            {"kind": "convert", "settings": settings, "abort_for_test": hook},
            f"TFLite converter crashed with {{signal}} converting to {settings['mode']}",
        )
        return (self.job_dir / CONVERTED).read_bytes()

    def run_litert(self, data: bytes, inputs: list[np.ndarray], resolver: str) -> list[np.ndarray]:
        """LiteRT's float outputs for `inputs` (one array per model input, in the
        interpreter's order), one row at a time; RuntimeRefused if LiteRT refuses it."""
        (self.job_dir / CHECKED).write_bytes(data)
        names = []
        for i, x in enumerate(inputs):
            names.append(f"input_{i}.npy")
            np.save(self.job_dir / names[-1], x)
        reply = self._run(
            {"kind": "litert", "inputs": names, "resolver": resolver},
            "LiteRT crashed with {signal} running the converted model",
        )
        if "refused" in reply:
            raise RuntimeRefused(reply["refused"])
        with np.load(self.job_dir / OUTPUTS) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def _run(self, job: dict[str, Any], crash_message: str) -> dict:
        for name in (CONVERTED, OUTPUTS):
            (self.job_dir / name).unlink(missing_ok=True)
        (self.job_dir / JOB).write_text(json.dumps(job))
        with _LOCK:
            reply, returncode, had_worked = _run_job(self.job_dir)
            if reply is None and returncode < 0 and had_worked:
                # Maybe state left by earlier jobs: one retry in a fresh worker.
                first = returncode
                reply, returncode, _ = _run_job(self.job_dir)
                if reply is not None:
                    self.notes.append(
                        f"the TFLite worker process crashed ({_signal_name(-first)}) after "
                        "earlier jobs; a fresh worker did this one"
                    )
        if reply is None:
            if returncode < 0:
                message = crash_message.format(signal=_signal_name(-returncode))
                raise RunFailed(f"{message} (in a worker process; this process is unharmed)")
            raise RunFailed(f"the TFLite worker process exited with code {returncode}")
        if "error" in reply:
            raise RunFailed(reply["error"])
        return reply


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Worker:
    """One worker process and the pipes to it."""

    def __init__(self) -> None:
        verbose = bool(os.environ.get("MOBILECV_VERBOSE_TF"))
        self.owner = os.getpid()
        self.jobs = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mobilecv.converters.isolated"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.DEVNULL,
        )

    def run(self, job_dir: Path) -> dict | None:
        """The worker's reply, or None when it died (see `self.proc.returncode`)."""
        try:
            self.proc.stdin.write(f"{job_dir}\n".encode())
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # BrokenPipeError: it had exited
            line = b""
        if not line:
            self.proc.wait()
            return None
        self.jobs += 1
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        if self.jobs == 0:  # maybe still importing TensorFlow: do not wait for that
            self.proc.kill()
        else:
            self.proc.stdin.close()  # an idle worker exits at the end of its input
            try:
                self.proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


_LOCK = threading.Lock()
_worker: _Worker | None = None


def start_worker() -> None:
    """Start the worker now if none is up, so that its TensorFlow import overlaps the
    caller's own work (export, calibration data) before the first job."""
    with _LOCK:
        _live_worker()


def _live_worker() -> _Worker:
    global _worker
    if _worker is None or _worker.owner != os.getpid() or _worker.proc.poll() is not None:
        _worker = _Worker()
    return _worker


def _run_job(job_dir: Path) -> tuple[dict | None, int, bool]:
    """(the reply, or None when the worker died; its return code; whether it had done
    a job before)."""
    global _worker
    for _ in range(2):  # a worker that has just idled out is replaced once
        worker = _live_worker()
        had_worked = worker.jobs > 0
        reply = worker.run(job_dir)
        if reply is not None:
            return reply, 0, had_worked
        _worker = None
        if worker.proc.returncode != 0:  # 0: it idled out just before the job came
            return None, worker.proc.returncode, had_worked
    return None, 0, False


def stop_worker() -> None:
    """Stop the worker now, releasing the TensorFlow runtime it holds; the next job
    starts a fresh one."""
    global _worker
    with _LOCK:
        if _worker is not None and _worker.owner == os.getpid():
            _worker.close()
        _worker = None


@atexit.register
def _close_worker() -> None:
    if _worker is not None and _worker.owner == os.getpid():
        _worker.close()


# --- the worker process ---------------------------------------------------------


def _serve() -> int:
    """Do the job folders named on stdin, one per line, until stdin closes or idles."""
    import faulthandler

    faulthandler.enable()  # the C stack of a crash, visible with MOBILECV_VERBOSE_TF=1
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # TensorFlow's C++ writes to fd 1 too; keep the reply channel clean
    from mobilecv._tf import tf

    tf()
    done = 0
    while select.select([sys.stdin], [], [], IDLE_SECONDS)[0]:
        line = sys.stdin.readline()
        if not line:
            break
        _reply(replies, _do_job(Path(line.strip()), done))
        done += 1
    return 0


def _reply(stream: IO[str], reply: dict) -> None:
    stream.write(json.dumps(reply) + "\n")
    stream.flush()


def _do_job(job_dir: Path, done: int) -> dict:
    from mobilecv.converters.tflite import _first_line

    job = json.loads((job_dir / JOB).read_text())
    try:
        if job["kind"] == "convert":
            return _convert_job(job_dir, job, done)
        return _litert_job(job_dir, job)
    except RunFailed as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one line back to the parent; the worker lives on
        return {"error": f"TFLite worker: {type(exc).__name__}: {_first_line(exc)}"}


def _convert_job(job_dir: Path, job: dict, done: int) -> dict:
    from mobilecv._tf import tf
    from mobilecv.converters.tflite import _quiet, _run_converter, configure_from_settings

    calib_path = job_dir / CALIBRATION
    calib = np.load(calib_path) if calib_path.exists() else None
    with _quiet():
        conv = tf().lite.TFLiteConverter.from_saved_model(str(job_dir / SAVED_MODEL))
    configure_from_settings(conv, job["settings"], calib)
    hook = job.get("abort_for_test")
    if hook == "always" or (hook == "used" and done):
        os.abort()
    (job_dir / CONVERTED).write_bytes(_run_converter(conv))
    return {"ok": True}


def _litert_job(job_dir: Path, job: dict) -> dict:
    from mobilecv.converters.tflite import run_in_litert

    inputs = [np.load(job_dir / name) for name in job["inputs"]]
    try:
        outputs = run_in_litert((job_dir / CHECKED).read_bytes(), inputs, job["resolver"])
    except RuntimeRefused as exc:
        return {"refused": str(exc)}
    np.savez(job_dir / OUTPUTS, *outputs)
    return {"ok": True}


if __name__ == "__main__":
    # Serve from the importable module, not __main__: the exception classes the
    # converter code raises (RuntimeRefused) must be the ones the worker catches.
    from mobilecv.converters import isolated as _module

    sys.exit(_module._serve())

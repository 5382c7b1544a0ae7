"""Measured runs: ondevice.py in a child process, so a crash, hang or OOM in the
runtime becomes a failed result with a reason instead of taking mobilecv down."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobilecv.errors import InputError
from mobilecv.fileio import load_numpy

ONDEVICE = Path(__file__).with_name("ondevice.py")


@dataclass(frozen=True)
class RunConfig:
    threads: int = 1
    runs: int | None = 50
    warmup: int = 5
    time_budget_s: float | None = None
    cores: tuple[int, ...] = ()
    memory_limit_mb: float | None = None
    inputs: tuple[str, ...] = ()
    timeout_s: float = 120.0
    seed: int = 0

    def validate(self) -> None:
        if self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if self.runs is not None and self.runs < 1:
            raise InputError(f"runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if self.timeout_s <= 0:
            raise InputError("timeout must be positive")
        available = _available_cores()
        bad = [c for c in self.cores if available is not None and c not in available]
        if bad:
            raise InputError(
                f"cores {bad} not available (this process may use {sorted(available)})"
            )
        for f in self.inputs:
            if not Path(f).is_file():
                raise InputError(f"{f}: no such input file")


def check_inputs(graph, files: tuple[str, ...] | list[str]) -> None:
    """The user's --inputs .npy files match the model's inputs in number and size, so
    a wrong file is bad input (InputError), not a measured run that fails."""
    if not files:
        return
    import numpy as np

    tensors = [graph.tensors[i] for i in graph.inputs]
    if len(files) != len(tensors):
        raise InputError(
            f"{graph.path} has {len(tensors)} input(s); got {len(files)} --inputs file(s)"
        )
    for tensor, path in zip(tensors, files, strict=True):
        array = load_numpy(path, mmap_mode="r")
        if not isinstance(array, np.ndarray):
            raise InputError(f"{path}: an .npz archive; give one .npy array per input")
        if array.size != tensor.elements:
            raise InputError(
                f"{path}: shape {array.shape} has {array.size} values; input "
                f"{tensor.name!r} takes shape {list(tensor.shape)}"
            )


def _available_cores() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def measure(path: str | os.PathLike, config: RunConfig = RunConfig(), device: str = "host") -> dict:
    """Run ondevice.py on `path` in a fresh process. Always returns a dict with "ok";
    on failure "error" says why (crash signal, timeout, out of memory, runtime error)."""
    config.validate()
    with tempfile.TemporaryDirectory(prefix="mobilecv-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(ONDEVICE), str(path), "--threads", str(config.threads),
               "--warmup", str(config.warmup), "--seed", str(config.seed),
               "--device", device, "-o", str(out)]  # fmt: skip
        if config.runs is not None:
            cmd += ["--runs", str(config.runs)]
        if config.time_budget_s:
            cmd += ["--time-budget", str(config.time_budget_s)]
        if config.cores:
            cmd += ["--cores", ",".join(map(str, config.cores))]
        if config.memory_limit_mb:
            cmd += ["--memory-limit-mb", str(config.memory_limit_mb)]
        if config.inputs:
            cmd += ["--inputs", *map(str, config.inputs)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        # A new session makes the child a process-group leader, so a timeout kills
        # it together with anything it started; communicate() then reaps it.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            _, err = proc.communicate(timeout=config.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return _failed(f"timed out after {config.timeout_s:g} s (killed)")
        finally:
            if proc.poll() is None:  # KeyboardInterrupt and the like: leave no orphan
                _kill_group(proc)
                proc.wait()
        result = None
        if out.exists():
            try:
                result = json.loads(out.read_text())
            except json.JSONDecodeError:
                result = None
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            hint = " (out of memory?)" if sig == "SIGKILL" else ""
            return _failed(f"runtime crashed with {sig}{hint}", err)
        if result is None:
            return _failed(f"child exited with code {proc.returncode} and no result", err)
        if not result.get("ok"):
            return _failed(result.get("error", "unknown error"), err)
        return result


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _failed(reason: str, stderr: bytes | None = None) -> dict:
    tail = ""
    if stderr:
        lines = [s for s in stderr.decode(errors="replace").splitlines() if s.strip()]
        lines = [s for s in lines if not s.startswith("INFO:")]
        if lines and lines[-1] not in reason:
            tail = lines[-1][:300]
    return {"ok": False, "error": reason, "stderr_tail": tail}


# --- importing results measured elsewhere ---------------------------------------------

_BM_RUN_LINE = re.compile(
    r"count=(\d+)\s+(?:first=(\d+)\s+)?curr=(\d+)\s+min=(\d+)\s+max=(\d+)\s+avg=([\d.e+]+)\s+std=(\d+)"
)


def parse_benchmark_model(text: str, model: str = "", device: str = "android") -> dict:
    """Parse the text printed by TensorFlow's `benchmark_model` binary (e.g. via adb).

    Its summary gives count/min/max/avg/std in microseconds for the timed runs; it has
    no percentiles, so p50/p90/p99 are left as None rather than invented.
    """
    runs = _BM_RUN_LINE.findall(text)
    if not runs:
        raise InputError("no 'count=... avg=...' timing line found: not benchmark_model output")
    count, first, _curr, mn, mx, avg, std = runs[-1]  # the last line is the timed runs
    init = re.search(r"Init(?:ialization)?: ([\d.]+)", text)
    first_inf = re.search(r"First inference: ([\d.]+)", text)
    threads = re.search(r"#?\s*[Nn]um(?:ber of)? threads: \[?(\d+)", text)
    graph = re.search(r"Graph: \[([^\]]+)\]", text)
    mem = re.search(r"(?:overall|Peak memory footprint \(MB\)).*?([\d.]+)\s*$", text, re.M)
    return {
        "schema": 1,
        "model": model or (Path(graph.group(1)).name if graph else ""),
        "device": device,
        "threads": int(threads.group(1)) if threads else None,
        "runs": int(count),
        "latency_ms": {
            "mean": float(avg) / 1000,
            "p50": None,
            "p90": None,
            "p99": None,
            "min": float(mn) / 1000,
            "max": float(mx) / 1000,
            "std": float(std) / 1000,
        },
        "init_ms": float(init.group(1)) / 1000 if init else None,  # benchmark_model prints us
        "first_inference_ms": float(first_inf.group(1)) / 1000 if first_inf else None,
        "peak_rss_mb": float(mem.group(1)) if mem else None,
        "model_bytes": None,
        "measured": ["latency_ms"] + (["init_ms"] if init else []),
        "ok": True,
        "source": "benchmark_model",
    }


def load_result(path: str | os.PathLike) -> dict:
    """Read an ondevice.py JSON file or a saved benchmark_model text log."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return parse_benchmark_model(text)
    if not isinstance(data, dict) or "latency_ms" not in data:
        raise InputError(f"{path}: not a mobilecv bench or ondevice.py result (no latency_ms)")
    return data

"""Trial functions for tests/test_search.py that stand in for building and training (no
TensorFlow), pickled by value into Ray Tune's workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def evaluate(settings, knobs: dict, scratch: Path) -> dict:
    """A point's row made up from its knobs: the score grows with width and resolution,
    latency with both; width above 0.9 raises and resolution 96 kills its worker (as the
    OOM killer would). ``settings.extra`` may say how long to sleep."""
    time.sleep(settings.extra.get("sleep", 0))
    if knobs["width"] > 0.9:
        raise ValueError(f"bad point width={knobs['width']}\nsecond line")
    if knobs["resolution"] == 96:
        os.kill(os.getpid(), signal.SIGKILL)
    latency = knobs["width"] * knobs["resolution"]
    fits = latency < 30
    return {
        "params": 1000, "macs": int(1e6 * latency), "tflite_bytes": 1024, "arena_bytes": 2048,
        "host_latency_ms": latency, "judged_latency_ms": latency, "fits": fits,
        "verdict": "fits" if fits else "does not fit", "reasons": [] if fits else ["latency"],
        "constraints": [] if fits else ["latency"], "task": "classification",
        "metric": "accuracy", "val_score": knobs["width"] * knobs["resolution"] / 100 if fits else None,
        "pid": os.getpid(), "finished_at": time.time(),
    }  # fmt: skip

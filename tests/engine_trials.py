"""Trial functions for tests/test_engine.py: a module of its own, pickled by value into
Ray's workers (cloudpickle.register_pickle_by_value), so no test file is imported there."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def trial(task: dict) -> dict:
    """Does what ``task["do"]`` says: "ok" (after ``sleep`` s), "raise", "kill" (SIGKILL,
    as the kernel's OOM killer does). Leaves a file in ``task["marks"]`` when it starts."""
    if task.get("marks"):
        Path(task["marks"], f"{task['name']}.{os.getpid()}").touch()
    time.sleep(task.get("sleep", 0))
    if task["do"] == "raise":
        raise ValueError(f"bad point {task['name']}\nsecond line")
    if task["do"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS")
    return {"name": task["name"], "error": None, "pid": os.getpid(), "threads": threads}


def failed(task: dict, error: str) -> dict:
    return {"name": task["name"], "error": error, "pid": None, "threads": None}


def key(task: dict) -> str:
    return task["name"]

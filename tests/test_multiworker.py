"""Multi-worker training: roles from TF_CONFIG, and two real workers on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mobilecv.distribute import task_from_tf_config
from mobilecv.errors import InputError


def _config(cluster: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_the_chief_is_the_chief_task_else_worker_0():
    workers = {"worker": ["a:1", "b:1"]}
    assert task_from_tf_config(_config(workers, "worker", 0)).is_chief
    assert not task_from_tf_config(_config(workers, "worker", 1)).is_chief
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert task_from_tf_config(_config(with_chief, "chief", 0)).is_chief
    assert not task_from_tf_config(_config(with_chief, "worker", 0)).is_chief
    assert task_from_tf_config(_config(with_chief, "worker", 1)).name == "worker 1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG must be JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG must be JSON"),
        (_config({"worker": ["a:1"]}, "worker", 3), "index 3 is outside"),
    ],
)
def test_a_bad_tf_config_is_bad_input(text, message):
    with pytest.raises(InputError, match=message):
        task_from_tf_config(text)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


SMALL = [
    "data.dataset=digits",
    "data.limit=256",
    "model.resolution=32",
    "model.width=0.35",
    "train.epochs=1",
    "train.batch_size=64",
    "train.strategy=multi_worker",
    "convert.modes=[none]",
    "devices=[]",
    "evaluate.test_samples=100",
]


def _start_workers(tmp_path, out) -> list[tuple[subprocess.Popen, object, object]]:
    """Both workers run the README's one-machine command: the same recipe and -o folder."""
    exe = os.path.join(os.path.dirname(sys.executable), "mobilecv")
    args = [exe, "run", "mobilenet_v2_fashion_int8", "-o", str(out), "--json"]
    args += [arg for item in SMALL for arg in ("--set", item)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    started = []
    for index in (0, 1):
        temp = tmp_path / f"tmp{index}"  # each worker's TMPDIR, to see what it leaves there
        temp.mkdir()
        env = {**os.environ, "TF_CONFIG": _config(cluster, "worker", index), "TMPDIR": str(temp)}
        stdout = open(tmp_path / f"worker{index}.out", "w")  # noqa: SIM115 - closed below
        stderr = open(tmp_path / f"worker{index}.err", "w")  # noqa: SIM115
        started.append(
            (subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr), stdout, stderr)
        )
    return started


def _finish(started, tmp_path) -> list[dict]:
    try:
        for proc, _, _ in started:
            proc.wait(timeout=1800)
    finally:
        for proc, stdout, stderr in started:
            if proc.poll() is None:
                proc.kill()
            stdout.close()
            stderr.close()
    summaries = []
    for index, (proc, _, _) in enumerate(started):
        err = (tmp_path / f"worker{index}.err").read_text()
        assert proc.returncode == 0, f"worker {index}: {err[-3000:]}"
        summaries.append(json.loads((tmp_path / f"worker{index}.out").read_text()))
    return summaries


@pytest.mark.slow
def test_two_workers_train_one_recipe_and_only_the_chief_writes(tmp_path):
    from mobilecv.modelio import load_model
    from mobilecv.runner import weights_digest

    shared = tmp_path / "shared"
    chief, worker = _finish(_start_workers(tmp_path, shared), tmp_path)
    assert chief["chief"] and chief["task"] == "worker 0"
    assert not worker["chief"] and worker["task"] == "worker 1"
    assert worker["ran"] == ["build", "train"] and worker["out"] is None
    for name in ("model.keras", "trained.keras", "train.json", "model_none.tflite", "report.md"):
        assert (shared / name).exists(), name
    # Everything in the shared folder is an output the chief recorded; the other worker
    # wrote into a temporary folder of its own and removed it.
    state = json.loads((shared / "run_state.json").read_text())
    recorded = {out for step in state.values() for out in step["outputs"]}
    assert {p.name for p in shared.iterdir()} - recorded <= {
        "run_state.json",
        "recipe.resolved.yaml",
    }
    assert not list((tmp_path / "tmp1").iterdir())
    # Both workers ended with the same weights, which are the saved ones.
    digest = weights_digest(load_model(shared / "trained.keras"))
    assert chief["train"]["weights_sha256"] == worker["train"]["weights_sha256"] == digest

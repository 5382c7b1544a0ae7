"""mobilecv.engine: trials as Ray tasks on a Ray started in the process. A trial that
raises or whose worker is killed is a failed row and the others finish; each trial runs
in its own worker with TensorFlow's threads set from its CPUs; a run killed halfway
resumes from its state file and runs only what is missing; a state made with other
settings is refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engine_trials
import pytest
import ray.cloudpickle as cloudpickle
from conftest import run_cli

from mobilecv import engine
from mobilecv.errors import InputError, RunFailed

cloudpickle.register_pickle_by_value(engine_trials)


def _run(tasks, state=None, cpus_per_trial=1):
    with engine.ray_session(cpus=2):
        return engine.run_trials(
            engine_trials.trial, tasks, key=engine_trials.key, failed_row=engine_trials.failed,
            cpus_per_trial=cpus_per_trial, state=state, progress=False,
        )  # fmt: skip


def test_a_failing_or_killed_trial_is_a_row_and_the_others_finish():
    tasks = [
        {"name": n, "do": d} for n, d in [("a", "ok"), ("b", "raise"), ("c", "kill"), ("d", "ok")]
    ]
    rows = _run(tasks)
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]  # task order
    assert rows[0]["error"] is None and rows[3]["error"] is None
    assert rows[1]["error"] == "ValueError: bad point b"
    assert rows[2]["error"].startswith("worker process died")
    assert rows[0]["pid"] != rows[3]["pid"]  # a fresh worker for every trial
    assert {r["threads"] for r in (rows[0], rows[3])} == {"1"}


def test_threads_follow_the_cpus_of_a_trial():
    (row,) = _run([{"name": "a", "do": "ok"}], cpus_per_trial=2)
    assert row["threads"] == "2"


def test_state_is_refused_when_it_exists_or_was_made_otherwise(tmp_path):
    path = tmp_path / "trials.jsonl"
    with pytest.raises(InputError, match="nothing to resume"):
        engine.open_state(path, {"a": 1}, resume=True, force=False)
    engine.open_state(path, {"a": 1}, resume=False, force=False)
    with pytest.raises(InputError, match="pass --resume or --force"):
        engine.open_state(path, {"a": 1}, resume=False, force=False)
    with pytest.raises(InputError, match=r"other settings \(a: 1 then, 2 now\)"):
        engine.open_state(path, {"a": 2}, resume=True, force=False)
    assert engine.open_state(path, {"a": 1}, resume=True, force=False) == path
    path.write_text("not json\n")
    with pytest.raises(InputError, match="not a mobilecv run state"):
        engine.open_state(path, {"a": 1}, resume=True, force=False)


@pytest.mark.parametrize(
    ("command", "address", "message"),
    [
        ("search", "127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
        ("sweep", "ray://nohost.invalid:10001", "nothing answers at ray://nohost.invalid"),
        ("search", "head-node", "--address must be auto, HOST:PORT or ray://HOST:PORT"),
    ],
)
def test_a_wrong_address_is_a_one_line_error_at_once_and_writes_nothing(
    tmp_path, command, address, message
):
    """Ray itself retries a wrong address for minutes."""
    points = (
        ["--trials", "1"] if command == "search" else ["--widths", "0.25", "--resolutions", "32"]
    )
    started = time.monotonic()
    done = run_cli(command, "mobilenet_v2", *points, "--address", address,
                   "-o", tmp_path / "out", timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 60


def test_a_local_ray_that_does_not_start_is_a_failed_run(monkeypatch):
    import ray

    def timed_out(**options):
        raise Exception("The current node timed out during startup.")  # what Ray raises

    monkeypatch.setattr(ray, "init", timed_out)
    message = "Ray did not start on this machine: The current node"
    with pytest.raises(RunFailed, match=message), engine.ray_session(cpus=1):
        pass


_SCRIPT = """
import sys, engine_trials
import ray.cloudpickle as cloudpickle
from pathlib import Path
from mobilecv import engine
cloudpickle.register_pickle_by_value(engine_trials)
state, marks, resume = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume"
tasks = [{"name": f"t{i}", "do": "ok", "sleep": 1 + 4 * (i >= 2), "marks": marks} for i in range(4)]
state = engine.open_state(state, {"n": 4}, resume=resume, force=False)
with engine.ray_session(cpus=2):
    rows = engine.run_trials(engine_trials.trial, tasks, key=engine_trials.key,
                             failed_row=engine_trials.failed, state=state, progress=False)
print([r["name"] for r in rows if r["error"] is None])
"""


def test_a_run_killed_halfway_resumes_with_only_the_missing_trials(tmp_path):
    state, marks = tmp_path / "trials.jsonl", tmp_path / "marks"
    marks.mkdir()
    command = [sys.executable, "-c", _SCRIPT, str(state), str(marks)]
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    # Its own session, killed as a whole: the command and the Ray it started, as Ctrl-C
    # or a lost machine would stop them.
    first = subprocess.Popen([*command, "new"], env={**_env(), **env}, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(engine.read_rows(state) if state.exists() else {}) < 2:  # t0 and t1: 1 s each
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended early"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = set(engine.read_rows(state))
    assert len(done) in (2, 3) and done < {"t0", "t1", "t2", "t3"}
    second = subprocess.run([*command, "resume"], env={**_env(), **env}, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1] == str(["t0", "t1", "t2", "t3"])
    started = sorted(p.name.split(".")[0] for p in marks.iterdir())
    assert all(started.count(name) == 1 for name in done)  # finished trials do not run again
    assert set(started) == {"t0", "t1", "t2", "t3"}
    assert set(engine.read_rows(state)) == {"t0", "t1", "t2", "t3"}
    header = json.loads(state.read_text().splitlines()[0])
    assert header == {"format": engine.STATE_FORMAT, "settings": {"n": 4}}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# --------------------------------------------------------------------------- a cluster


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(*args: str, env: dict) -> subprocess.Popen:
    """`ray start --block ...` in its own session, so that stopping it (killpg) stops this
    node's processes only (`ray stop` would stop every Ray on the machine)."""
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               "--disable-usage-stats", *args]  # fmt: skip
    return subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(address: str, env: dict) -> int:
    probe = "import ray; ray.init(address=%r); print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", probe % address], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


@pytest.mark.slow
def test_a_sweep_runs_on_a_two_node_cluster(tmp_path):
    """`ray start --head` and one worker node on 127.0.0.1, one CPU each, with token
    authentication; `mobilecv sweep --address` runs its two points one on each node."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    # A short folder of its own: Ray's socket paths must fit AF_UNIX's 107 characters.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = _ray_node("--head", f"--port={port}", "--include-dashboard=false",
                     f"--temp-dir={temp}", env=env)  # fmt: skip
    nodes = [head]
    try:
        deadline = time.monotonic() + 180
        while not _listening(port):  # before that, ray.init would wait minutes
            assert head.poll() is None and time.monotonic() < deadline, "the head did not start"
            time.sleep(0.5)
        nodes.append(_ray_node(f"--address={address}", env=env))
        while _alive_nodes(address, env) < 2:
            assert nodes[1].poll() is None and time.monotonic() < deadline, "no worker node"
        done = subprocess.run(
            [sys.executable, "-m", "mobilecv.cli", "sweep", "mobilenet_v2", "--widths",
             "0.25,0.35", "--resolutions", "32", "--classes", "10", "--input-channels", "1",
             "--device", "host", "--runs", "5", "--address", address, "-o", "out", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        rows = json.loads(done.stdout[done.stdout.index("[") :])
        print("\n".join(f"{r['width']} {r['resolution']} node {r['node']} "
                        f"{r['host_latency_ms']} ms {r['seconds']} s" for r in rows))  # fmt: skip
        assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
        assert len({r["node"] for r in rows}) == 2  # one point on each machine
    finally:
        _stop(nodes)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(nodes: list[subprocess.Popen]) -> None:
    for node in reversed(nodes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    for node in nodes:
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)

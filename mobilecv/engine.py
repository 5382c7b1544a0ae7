"""Trials on Ray: the one engine that sweeps (and searches) run their points on.

Each trial is a Ray task that asks for its CPUs (``cpus_per_trial``) and runs in a fresh
worker process (``max_calls=1``: a crash, a leak or TensorFlow's thread pools stay in that
trial), with TensorFlow's thread counts set from those CPUs so that trials sharing a
machine do not oversubscribe it.

- Where: by default Ray starts inside the command, on this machine, and stops with it;
  ``address`` ("auto", "HOST:6379" or "ray://HOST:10001") joins a running cluster
  (docs/ARCHITECTURE.md says how to start one). mobilecv must be installed on every node.
- Faults: a trial that raises, crashes or is killed (the kernel's OOM killer, Ray's
  memory monitor) becomes a failed row (``failed_row(task, error line)``) and the others
  go on. Ray never retries a trial (``max_retries=0``): a point that kills its worker
  would kill the next one too.
- Resume: with a ``state`` file every finished row is appended to it (JSON lines, flushed
  and fsynced) as it arrives, under a header naming the run's settings; a run started
  again with ``resume=True`` and the same settings runs only the trials not in it, and
  one with other settings is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mobilecv.errors import InputError, RunFailed
from mobilecv.progress import Progress

STATE_FORMAT = 1
NODE_ID_CHARS = 12  # of Ray's 56-hex-digit node id: enough to tell machines apart
Row = dict[str, Any]


# --------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_session(address: str | None = None, cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block: a local Ray of ``cpus`` CPUs (default: all),
    or the cluster at ``address``. A session already open (a caller's) is reused."""
    import ray

    if ray.is_initialized():
        yield
        return
    check_address(address)
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        options["num_cpus"] = cpus or os.cpu_count() or 1
        # Ray's hint that token auth is on says nothing to someone who started no cluster.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    try:  # "local": a Ray of our own even when `ray start` runs one on this machine
        ray.init(address=address or "local", **options)
    except Exception as exc:  # Ray raises a bare Exception when its node times out starting
        raise _start_error(address, exc) from None
    try:
        yield
    finally:
        ray.shutdown()


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """An InputError, within ``timeout`` seconds, when nothing answers at a cluster
    address ("HOST:PORT" or "ray://HOST:PORT"): Ray itself retries a wrong one for
    minutes. None (a local Ray) and "auto" are not probed."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address must be auto, HOST:PORT or ray://HOST:PORT; got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"nothing answers at {address} ({exc.strerror or exc}): start the cluster there "
            "(ray start --head) or check the address"
        ) from None


def _start_error(address: str | None, exc: Exception) -> Exception:
    """A bad address is the user's input (exit 2); a local Ray that did not start (its
    node timed out on an overloaded machine, say) is a failed run (exit 1)."""
    if address is not None:
        return InputError(f"cannot reach Ray at {address}: {_first_line(exc)}")
    return RunFailed(
        f"Ray did not start on this machine: {_first_line(exc)} (is the machine overloaded? "
        "run the command again)"
    )


def cluster_cpus() -> int:
    """The CPUs of the connected Ray cluster (all nodes)."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def limit_threads(threads: int) -> None:
    """TensorFlow's (and OpenMP's) thread pools sized to a trial's CPUs; called in the
    trial's fresh worker before TensorFlow is imported there."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def node_id() -> str:
    """The Ray node (machine) this code runs on, short."""
    import ray

    return ray.get_runtime_context().get_node_id()[:NODE_ID_CHARS]


def _in_worker(trial: Callable[[Mapping], Row], task: Mapping, threads: int) -> Row:
    """The Ray task: TensorFlow limited to this trial's CPUs, then the trial; the row
    says which node (machine) ran it."""
    limit_threads(threads)
    row = trial(task)
    row["node"] = node_id()
    return row


def run_trials(
    trial: Callable[[Mapping], Row],
    tasks: Sequence[Mapping],
    *,
    key: Callable[[Mapping], str],
    failed_row: Callable[[Mapping, str], Row],
    cpus_per_trial: int = 1,
    state: Path | None = None,
    progress: bool = True,
    note: Callable[[Row], str] = lambda row: "",
) -> list[Row]:
    """``trial(task)`` for every task as a Ray task (inside a :func:`ray_session`); one row
    per task, in task order. ``state`` (opened by :func:`open_state`) keeps finished rows
    and gives back those of an earlier run."""
    import ray

    done = read_rows(state) if state else {}
    rows: list[Row | None] = [done.get(key(t)) for t in tasks]
    bar = Progress("trials", len(tasks), "trial", enabled=progress, per_update=True)
    for row in rows:
        if row is not None:
            bar.update(note="resumed")
    remote = ray.remote(num_cpus=cpus_per_trial, max_retries=0, max_calls=1)(_in_worker)
    running = {
        remote.remote(trial, task, cpus_per_trial): i
        for i, task in enumerate(tasks)
        if rows[i] is None
    }
    while running:
        (ready,), _ = ray.wait(list(running), num_returns=1)
        i = running.pop(ready)
        try:
            row = ray.get(ready)
        except ray.exceptions.RayError as exc:
            row = failed_row(tasks[i], failure_line(exc))
        rows[i] = row
        if state:
            append_row(state, key(tasks[i]), row)
        bar.update(note=note(row))
    bar.close()
    return rows  # type: ignore[return-value]


def failure_line(exc: BaseException) -> str:
    """One line for a failed trial: the trial's own exception, or how its worker died."""
    import ray

    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "out of memory: Ray's memory monitor killed the trial's worker"
    died = (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.RayActorError,  # a Ray Tune trial's worker
    )
    if isinstance(exc, died):
        return f"worker process died ({type(exc).__name__}): killed, or crashed in native code"
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return _error_line(exc.cause)
    return _error_line(exc)


def _error_line(exc: BaseException) -> str:
    first = _first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------- state


def open_state(path: Path, settings: Mapping, *, resume: bool, force: bool) -> Path:
    """The state file of a run with ``settings`` (JSON). Without ``resume`` a new one
    (an existing one needs ``force``); with it, the existing one, whose settings must be
    these."""
    path = Path(path)
    header = {"format": STATE_FORMAT, "settings": json.loads(json.dumps(settings, default=str))}
    if resume:
        if not path.exists():
            raise InputError(f"--resume: {path} does not exist; nothing to resume")
        found = _header(path)
        if found != header:
            raise InputError(
                f"--resume: {path} was made with other settings "
                f"({_difference(found.get('settings', {}), header['settings'])}); "
                "run again without --resume (and --force) to start over"
            )
        return path
    if path.exists() and not force:
        raise InputError(f"{path} exists (an earlier run's state); pass --resume or --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(header, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_rows(path: Path) -> dict[str, Row]:
    """Finished rows by key. A last line cut short by a kill is ignored."""
    rows = {}
    for line in Path(path).read_text().splitlines()[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[entry["key"]] = entry["row"]
    return rows


def _header(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.loads(f.readline())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a mobilecv run state ({_first_line(exc)})") from None


def _difference(old: Mapping, new: Mapping) -> str:
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys[:3])


def append_row(path: Path, key: str, row: Mapping) -> None:
    """One finished row, on disk before the next (a kill loses at most a line)."""
    with open(path, "a") as f:
        f.write(json.dumps({"key": key, "row": row}, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """One timed measurement at a time on this machine, whichever trial or process asks
    (a lock file in the temp folder), so that a neighbour's training or conversion is the
    only other load while a latency is timed."""
    path = Path(tempfile.gettempdir()) / "mobilecv-measure.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

"""Run a model on the real TensorFlow Lite Micro interpreter (the `tflite-micro` wheel)
and read the arena it actually used, the ops it cannot resolve, and the smallest
`tensor_arena` that works. Every run happens in a child process: TFLM aborts hard
on some malformed models, and print_allocations() writes from C++ straight to the
process's file descriptors, which only a child's pipe captures reliably.

Two things TFLM does that are not the model's fault are worked around here:
- an arena that is too small can crash TFLM (SIGSEGV in its memory planner) instead
  of failing cleanly, so each size the minimum-arena search tries runs in a fork;
- an untrained classifier's logits are nearly constant, so the int8 SOFTMAX input
  scale is tiny and TFLM aborts computing softmax parameters. The arena is then
  measured on a copy with a valid scale (it does not depend on the scale's value),
  and the result says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

_ALLOC = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_UNRESOLVED = (
    re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'"),
    re.compile(r"Failed to get registration from op code ([A-Z0-9_]+)"),
    re.compile(r"Didn't find op for custom opcode '([^']+)'"),
)


def _child_main() -> None:
    """Child process: try arenas, write a JSON result to argv[2]. argv[5] == "0" only
    allocates (TFLM plans the whole arena then; invoke allocates nothing more)."""
    import numpy as np
    import tflite_micro

    from mobilecv.modelinfo import ModelInfo, read_info

    path, out, arena, search = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    invoke = sys.argv[5:6] != ["0"]
    data = Path(path).read_bytes()
    rng = np.random.default_rng(0)
    lo, hi = (read_info(data) or ModelInfo()).input_range  # float inputs: the declared range

    def attempt(size: int):
        interp = tflite_micro.runtime.Interpreter.from_bytes(data, arena_size=size)
        i = 0
        while True:
            try:
                d = interp.get_input_details(i)
            except Exception:  # noqa: BLE001 - TFLM signals "no more inputs" by raising
                break
            dtype = np.dtype(d["dtype"])
            shape = [int(s) for s in d["shape"]]
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                x = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
            else:
                x = rng.uniform(lo, hi, shape).astype(dtype)
            interp.set_input(x, i)
            i += 1
        if invoke:
            interp.invoke()
        return interp

    result: dict = {"ok": False}
    try:
        interp = attempt(arena)
        sys.stdout.flush()
        print("=== allocations ===", flush=True)
        interp.print_allocations()
        sys.stdout.flush()
        sys.stderr.flush()
        print("=== end ===", flush=True)
        result = {"ok": True, "arena_size": arena}
        if search:
            result.update(_smallest_arena(attempt, arena))
    except RuntimeError as exc:
        result = {
            "ok": False,
            "error": str(exc).strip().splitlines()[-1] if str(exc).strip() else "RuntimeError",
        }
    Path(out).write_text(json.dumps(result))


def _smallest_arena(attempt, arena: int) -> dict:
    """Bisect, 16-byte granular, for the smallest arena in which `attempt` runs, below
    `arena` (which worked). Each size is tried in a fork: TFLM can crash on an arena
    that is too small, and a crashed probe is one more size that does not work."""
    lo, hi, crashed = 0, arena, 0
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        if mid <= lo:
            break
        works = _works_in_fork(attempt, mid)
        crashed += works is None
        if works:
            hi = mid
        else:
            lo = mid
    return {"min_arena_bytes": hi, "search_probes_crashed": crashed}


def _works_in_fork(attempt, size: int) -> bool | None:
    """True if `attempt(size)` runs in a forked copy of this process, False if TFLM
    refuses it cleanly, None if it crashed. The fork is silent: its failures are
    expected and would only bury the real output."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the probe never returns into the search
        code = 2
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            attempt(size)
            code = 0
        except RuntimeError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None
    return os.WEXITSTATUS(status) == 0


def run(
    path: str | os.PathLike,
    arena_size: int | None = None,
    find_min: bool = True,
    timeout_s: float = 120,
    invoke: bool = True,
) -> dict:
    """Run `path` on TFLM once (`invoke=False`: allocate only). Returns {"ok", "arena_bytes"
    (total used), "arena_head_bytes", "arena_tail_bytes", "min_arena_bytes",
    "search_probes_crashed", "unresolved_ops", "error"}; for a model whose SOFTMAX input
    scale TFLM rejects (an untrained one), the figures of a copy with a valid scale, with
    "softmax_untrained" and a "note" that say so."""
    result = _run_child(path, arena_size, find_min, timeout_s, invoke)
    if not result.get("ok") and not result["unresolved_ops"]:
        result = _retry_with_valid_softmax(path, result, arena_size, find_min, timeout_s)
    return result


def _run_child(
    path: str | os.PathLike, arena_size: int | None, find_min: bool, timeout_s: float, invoke: bool
) -> dict:
    model_bytes = Path(path).stat().st_size
    arena = arena_size or max(1 << 20, 16 * model_bytes)
    with tempfile.TemporaryDirectory(prefix="mobilecv-tflm-") as tmp:
        out = Path(tmp) / "r.json"
        code = "from mobilecv.bench.micro import _child_main; _child_main()"
        cmd = [
            sys.executable,
            "-c",
            code,
            str(path),
            str(out),
            str(arena),
            "1" if find_min else "0",
            "1" if invoke else "0",
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            text, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {
                "ok": False,
                "error": f"TFLM timed out after {timeout_s:g} s",
                "unresolved_ops": [],
            }
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = text.decode(errors="replace")
        result = json.loads(out.read_text()) if out.exists() else {"ok": False}
    unresolved = {m for rx in _UNRESOLVED for m in rx.findall(log)}
    if "CUSTOM" in unresolved:  # TFLM names only the op kind; the graph has the names
        from mobilecv.tflite_graph import load

        unresolved.discard("CUSTOM")
        try:
            unresolved.update(load(path).custom_ops or ["CUSTOM"])
        except ValueError:
            unresolved.add("CUSTOM")
    unresolved = sorted(unresolved)
    result["unresolved_ops"] = unresolved
    if proc.returncode and proc.returncode < 0:
        result["ok"] = False
        result["error"] = f"TFLM crashed with {signal.Signals(-proc.returncode).name}"
        hint = _softmax_scale_hint(path)
        if hint is None and arena_size:
            hint = f"an arena of {arena_size} bytes may be too small: TFLM can crash then"
        if hint:
            result["error"] += f" ({hint})"
    elif not result.get("ok") and "error" not in result:
        tail = [s for s in log.splitlines() if s.strip()]
        result["error"] = tail[-1] if tail else f"TFLM exited with code {proc.returncode}"
    if unresolved and not result.get("ok"):
        result["error"] = f"TFLM cannot resolve ops: {', '.join(unresolved)}"
    sizes = dict(_ALLOC.findall(log))
    if "total" in sizes:
        result["arena_bytes"] = int(sizes["total"])
        result["arena_head_bytes"] = int(sizes.get("head", 0))
        result["arena_tail_bytes"] = int(sizes.get("tail", 0))
    if "=== allocations ===" in log:
        section = log.split("=== allocations ===", 1)[1].split("=== end ===", 1)[0]
        result["allocations"] = [s.strip() for s in section.splitlines() if s.strip()]
    return result


# TFLM aborts in CalculateSoftmaxParams when the int8 scale at SOFTMAX's input is tiny
# (it needs scale * 2**26 > 1), which happens when a model's logits are (nearly) constant,
# e.g. an untrained model. Below this scale the logits are suspect.
SOFTMAX_MIN_INPUT_SCALE = 1e-6
# What the copy measured in place of an untrained model uses: int8 logits over +-12.8,
# the order of a trained classifier's.
VALID_LOGIT_SCALE = 0.1


def _tiny_softmax_inputs(path) -> dict[int, float]:
    """Main-subgraph tensor index -> scale of each SOFTMAX input with a suspect scale."""
    from mobilecv.tflite_graph import load

    try:
        graph = load(path)
    except ValueError:
        return {}
    tiny = {}
    for op in graph.ops:
        if op.opcode != "SOFTMAX" or not op.inputs:
            continue
        tensor = graph.tensors[op.inputs[0]]
        scale = tensor.scale[0] if tensor.scale else None
        if scale is not None and 0 < scale < SOFTMAX_MIN_INPUT_SCALE:
            tiny[tensor.index] = scale
    return tiny


def _softmax_scale_hint(path) -> str | None:
    tiny = _tiny_softmax_inputs(path)
    if not tiny:
        return None
    return (
        f"the SOFTMAX input scale is {min(tiny.values()):.2g}: the logits are nearly constant, "
        "as in an untrained model, and TFLM cannot compute softmax parameters for it"
    )


def with_softmax_input_scale(
    data: bytes, tensors: Iterable[int], scale: float = VALID_LOGIT_SCALE
) -> bytes:
    """A copy of the model whose main-subgraph `tensors` have quantisation scale `scale`."""
    from mobilecv.tflite_graph import rewrite

    def edit(model) -> None:
        for index in tensors:
            quant = model.subgraphs[0].tensors[index].quantization
            quant.scale = [scale] * len(quant.scale)

    return rewrite(data, edit)


def _retry_with_valid_softmax(path, failed: dict, arena_size, find_min, timeout_s) -> dict:
    """If `failed` is the untrained-softmax abort, measure a copy with a valid scale:
    run it if it runs, else only allocate it (its logits are still flat, and this
    wheel's int8 softmax also aborts at invoke on a flat row of 1000 classes)."""
    tiny = _tiny_softmax_inputs(path)
    if not tiny or "timed out" in failed.get("error", ""):
        return failed
    with tempfile.TemporaryDirectory(prefix="mobilecv-tflm-") as tmp:
        copy = Path(tmp) / "valid_softmax.tflite"
        copy.write_bytes(with_softmax_input_scale(Path(path).read_bytes(), tiny))
        retry = _run_child(copy, arena_size, find_min, timeout_s, invoke=True)
        how = "by running it"
        if not retry.get("ok"):
            invoke_error = retry.get("error", "failed")
            retry = _run_child(copy, arena_size, find_min, timeout_s, invoke=False)
            how = f"by allocating it only, as running it failed too ({invoke_error})"
    if not retry.get("ok"):
        return failed  # something else is wrong too: report the model's own failure
    scale = min(tiny.values())
    retry["softmax_untrained"] = {"input_scale": scale, "error": failed.get("error")}
    retry["note"] = (
        f"every op is supported, but this file aborts in TFLM: its logits are nearly constant "
        f"(SOFTMAX input scale {scale:.2g}), as in an untrained model, and TFLM cannot compute "
        "softmax parameters for them. The arena was measured on a copy with a valid scale "
        f"(the arena does not depend on it), {how}; a trained model does not have this problem."
    )
    return retry

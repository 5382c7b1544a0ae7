"""Run a model on the real TensorFlow Lite Micro interpreter (the `tflite-micro` wheel)
and read the arena it actually used, the ops it cannot resolve, and the smallest
`tensor_arena` that works. Every run happens in a child process: TFLM aborts hard
on some malformed models, and print_allocations() writes from C++ straight to the
process's file descriptors, which only a child's pipe captures reliably."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_ALLOC = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_UNRESOLVED = (
    re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'"),
    re.compile(r"Failed to get registration from op code ([A-Z0-9_]+)"),
    re.compile(r"Didn't find op for custom opcode '([^']+)'"),
)


def _child_main() -> None:
    """Child process: try arenas, write a JSON result to argv[2]."""
    import numpy as np
    import tflite_micro

    from mobilecv.modelinfo import ModelInfo, read_info

    path, out, arena, search = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
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
            # Smallest arena, 16-byte granular: the used total is a lower bound that
            # usually works; otherwise bisect up to the size that worked.
            lo, hi = 0, arena
            while hi - lo > 16:
                mid = (lo + hi) // 2 // 16 * 16
                try:
                    attempt(mid)
                    hi = mid
                except RuntimeError:
                    lo = mid
            result["min_arena_bytes"] = hi
    except RuntimeError as exc:
        result = {
            "ok": False,
            "error": str(exc).strip().splitlines()[-1] if str(exc).strip() else "RuntimeError",
        }
    Path(out).write_text(json.dumps(result))


def run(
    path: str | os.PathLike,
    arena_size: int | None = None,
    find_min: bool = True,
    timeout_s: float = 120,
) -> dict:
    """Run `path` on TFLM once. Returns {"ok", "arena_bytes" (total used), "arena_head_bytes",
    "arena_tail_bytes", "min_arena_bytes", "unresolved_ops", "error"}."""
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


# TFLM aborts in CalculateSoftmaxParams when the int8 scale at SOFTMAX's input is tiny,
# which happens when a model's logits are (nearly) constant, e.g. an untrained model.
SOFTMAX_MIN_INPUT_SCALE = 1e-6


def _softmax_scale_hint(path) -> str | None:
    from mobilecv.tflite_graph import load

    try:
        graph = load(path)
    except ValueError:
        return None
    for op in graph.ops:
        if op.opcode != "SOFTMAX" or not op.inputs:
            continue
        tensor = graph.tensors[op.inputs[0]]
        scale = tensor.scale[0] if tensor.scale else None
        if scale is not None and 0 < scale < SOFTMAX_MIN_INPUT_SCALE:
            return (
                f"the SOFTMAX input scale is {scale:.2g}: the logits are nearly constant, as in "
                "an untrained model, and TFLM cannot compute softmax parameters for it"
            )
    return None

#!/usr/bin/env python3
"""Time a .tflite model on this machine and write the result as JSON.

A single file to copy to a Raspberry Pi or a phone. It needs numpy and either
`ai_edge_litert` or `tflite_runtime`; it never imports TensorFlow or mobilecv.
mobilecv's harness runs this same file in a child process on the host, and
`mobilecv bench --import result.json` merges a device's output into a report.

Random float inputs are drawn in the input range the model declares: the "mobilecv"
metadata entry mobilecv writes into every .tflite (read with ai_edge_litert's schema),
else `--input-range LO,HI`, else [0, 1]. Quantised inputs take every integer code.

With `--postprocess` the outputs are decoded by the model's task (classification,
localisation, landmarks, detection, ...: named in the same metadata, with any options such
as a detector's anchors in its "task_options") with mobilecv's numpy
post-processing, `postprocess.py`: copy it beside this file on a device (it needs only
numpy); the result gains "predictions" and "postprocess_ms". For an embedding model,
`--database DB.npz` (from `mobilecv enroll` with the same model file) also recognises the
embedding: the nearest enrolled identity and its distance, or unknown beyond tau.

    python3 ondevice.py model.tflite --threads 4 --runs 100 -o result.json
    python3 ondevice.py encoder.tflite --inputs face.npy --database db.npz -o who.json
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import platform
import resource
import sys
import time

SCHEMA_VERSION = 1
DEFAULT_INPUT_RANGE = (0.0, 1.0)


def _interpreter_class():
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError:
        raise SystemExit("Error: install ai-edge-litert or tflite-runtime") from None


def _rss_kb(field: str = "VmRSS") -> float | None:
    """Current (VmRSS) or peak (VmHWM) resident set from /proc, in kB; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _peak_rss_kb() -> float:
    hwm = _rss_kb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else float(peak)  # macOS reports bytes


def model_info(model: str, entry_name: bytes = b"mobilecv") -> dict | None:
    """The model's mobilecv info (its metadata entry `entry_name`: input range, task,
    output names), or None (no entry, or no schema: tflite_runtime does not ship one).

    The file is memory-mapped, so only the pages holding the metadata are read: the
    measured peak RSS stays the runtime's own."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        return None
    try:
        with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            payload = _metadata_entry(fb, mm, entry_name)
            info = json.loads(payload) if payload is not None else {}
            info["signature_outputs"] = _signature_outputs(fb, mm)
        return info
    except Exception:  # noqa: BLE001 - not a model, or a damaged entry: the flag or default decides
        return None


def declared_input_range(model: str, entry_name: bytes = b"mobilecv") -> tuple | None:
    """(lo, hi) from the model's mobilecv info, or None."""
    info = model_info(model, entry_name) or {}
    if "input_range" not in info:
        return None
    lo, hi = info["input_range"]
    return float(lo), float(hi)


def _signature_outputs(fb, data) -> list[str]:
    """The main subgraph's output names from its signature, in output order ([] if none)."""
    root = fb.Model.GetRootAs(data, 0)
    outputs = root.Subgraphs(0).OutputsAsNumpy().tolist()
    for i in range(root.SignatureDefsLength()):
        signature = root.SignatureDefs(i)
        names = {}
        for j in range(signature.OutputsLength()):
            entry = signature.Outputs(j)
            names[entry.TensorIndex()] = entry.Name().decode()
        if signature.SubgraphIndex() == 0 and set(names) == set(outputs):
            return [names[t] for t in outputs]
    return []


def _postprocess_module():
    """mobilecv/postprocess.py: beside this script on a device, else the installed one."""
    try:
        import postprocess  # copied next to ondevice.py

        return postprocess
    except ImportError:
        from mobilecv import postprocess

        return postprocess


def decode_outputs(interp, info: dict, repeats: int = 20) -> tuple[dict, float]:
    """The task's numpy post-processing of the last invoke's outputs, and its median ms."""
    import numpy as np

    post = _postprocess_module()
    details = interp.get_output_details()
    names = info.get("signature_outputs") or [d["name"] for d in details]
    outputs = {}
    for name, d in zip(names, details, strict=True):
        raw = interp.get_tensor(d["index"]).astype(np.float32)
        scale, zero = d.get("quantization", (0.0, 0))
        outputs[name] = (raw - zero) * scale if scale else raw
    task = info.get("task", "classification")
    # Options the decoder needs beyond the outputs (a detector's anchors), from the metadata.
    options = info.get("task_options") or {}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decoded = post.decode(task, outputs, **options)
        times.append((time.perf_counter() - t0) * 1000)
    plain = {k: np.asarray(v).tolist() for k, v in decoded.items()}
    return {"task": task, **plain}, sorted(times)[len(times) // 2]


def recognise(embeddings, database: str, model: str, threshold: float | None) -> list[dict]:
    """The course's recognition rule on a device, numpy only: each embedding against the
    identities of a `mobilecv enroll` database (its version-1 .npz, which must come from
    this model file); the nearest identity and its distance, or "unknown" (None) when
    the distance is not under tau (the database's own unless ``threshold``)."""
    import hashlib

    import numpy as np

    with np.load(database, allow_pickle=False) as f:
        db = {k: f[k] for k in ("kind", "version", "dim", "model_fingerprint", "threshold",
                                "names", "encodings")}  # fmt: skip
    if str(db["kind"]) != "mobilecv-embedding-database" or int(db["version"]) != 1:
        raise ValueError(f"{database}: not a version-1 mobilecv enrolment database")
    with open(model, "rb") as fh:
        if hashlib.sha256(fh.read()).hexdigest() != str(db["model_fingerprint"]):
            raise ValueError(f"{database} was enrolled with another model; enrol with {model}")
    tau = float(db["threshold"]) if threshold is None else float(threshold)
    found = _postprocess_module().nearest_identity(embeddings, db["encodings"], tau)
    names = [str(n) for n in db["names"]]
    return [
        {"identity": names[k] if k >= 0 else None, "nearest": names[n], "distance": float(d),
         "threshold": tau}
        for k, n, d in zip(found["identity"], found["nearest"], found["distance"], strict=True)
    ]  # fmt: skip


def _metadata_entry(fb, data, name: bytes) -> bytes | None:
    """A copy of one metadata entry's payload (no view of `data` outlives the call)."""
    root = fb.Model.GetRootAs(data, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() == name:
            return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def parse_input_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi) with lo < hi."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input-range expects LO,HI (e.g. 0,255); got {text!r}") from None
    if not lo < hi:
        raise ValueError(f"--input-range needs LO < HI; got {text!r}")
    return lo, hi


def input_range_for(model: str, flag: tuple[float, float] | None) -> tuple[tuple, str]:
    """The range random float inputs are drawn from, and where it came from."""
    if flag is not None:
        return flag, "flag"
    declared = declared_input_range(model)
    if declared is not None:
        return declared, "metadata"
    return DEFAULT_INPUT_RANGE, "default"


def random_input(detail: dict, rng, input_range: tuple[float, float] = DEFAULT_INPUT_RANGE):
    """Random data: float inputs uniform over the model's input range, quantised inputs
    over every integer code."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    shape = [max(int(d), 1) for d in detail["shape"]]
    if dtype.kind == "f":
        return rng.uniform(input_range[0], input_range[1], shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        scale = detail.get("quantization", (0.0, 0))[0]
        if scale:  # quantised activations: every code is a valid value
            return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
        return rng.integers(0, min(info.max, 16), shape, dtype=dtype)  # ids, indices
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raise ValueError(f"cannot make random input of dtype {dtype}")


def percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = (len(sorted_ms) - 1) * p / 100.0
    lo = int(math.floor(k))
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (k - lo) * (sorted_ms[hi] - sorted_ms[lo])


def summarize(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    n = len(s)
    mean = sum(s) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": mean,
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "min": s[0],
        "max": s[-1],
        "std": std,
    }


def measure(
    model: str,
    threads: int = 1,
    runs: int | None = 50,
    warmup: int = 5,
    time_budget_s: float | None = None,
    cores: list[int] | None = None,
    memory_limit_mb: float | None = None,
    inputs: list[str] | None = None,
    seed: int = 0,
    device: str = "",
    input_range: tuple[float, float] | None = None,
    postprocess: bool = False,
    database: str | None = None,
    threshold: float | None = None,
) -> dict:
    """Load, warm up and time `model`; return the result dict (raises on failure).

    `input_range` overrides the range the model declares for random float inputs. With
    `postprocess`, the task's numpy post-processing (from the model's metadata) decodes the
    last outputs, and its time is reported too; with `database` (an embedding model's
    enrolment .npz) each embedding is also recognised (:func:`recognise`)."""
    if cores:
        os.sched_setaffinity(0, cores)  # before the runtime starts its threads
    if memory_limit_mb:
        limit = int(memory_limit_mb * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np

    # Before the runtime starts, so that reading the metadata is not part of its memory.
    drawn_in, range_source = (None, "inputs") if inputs else input_range_for(model, input_range)
    postprocess = postprocess or database is not None
    info = (model_info(model) or {}) if postprocess else {}
    interpreter_cls, runtime = _interpreter_class()
    rss_before = _rss_kb() or _peak_rss_kb()

    t0 = time.perf_counter()
    interp = interpreter_cls(model_path=model, num_threads=threads)
    interp.allocate_tensors()
    init_ms = (time.perf_counter() - t0) * 1000

    details = interp.get_input_details()
    for d in details:
        sig = list(d.get("shape_signature", d["shape"]))
        if any(x < 0 for x in sig[1:]):
            raise ValueError(f"input {d['name']!r} has dynamic shape {sig}; not supported")
    if inputs:
        if len(inputs) != len(details):
            raise ValueError(f"model has {len(details)} inputs, got {len(inputs)} .npy files")
        data = []
        for d, f in zip(details, inputs, strict=True):
            arr = np.load(f)
            if tuple(arr.shape) != tuple(d["shape"]):
                arr = arr.reshape(d["shape"])  # e.g. a sample without its batch axis
            data.append(arr.astype(d["dtype"], copy=False))
    else:
        rng = np.random.default_rng(seed)
        data = [random_input(d, rng, drawn_in) for d in details]
    for d, arr in zip(details, data, strict=True):
        interp.set_tensor(d["index"], arr)

    clock = time.perf_counter
    t0 = clock()
    interp.invoke()
    first_ms = (clock() - t0) * 1000
    for _ in range(warmup):
        interp.invoke()

    if runs is None and time_budget_s is None:
        runs = 50
    max_runs = runs if runs is not None else 10**9
    deadline = clock() + time_budget_s if time_budget_s else float("inf")
    samples = []
    invoke = interp.invoke
    while len(samples) < max_runs:
        t0 = clock()
        invoke()
        t1 = clock()
        samples.append((t1 - t0) * 1000)
        if t1 >= deadline:
            break

    # The loop's own cost (two clock reads, an append) per inference, for honesty.
    t0 = clock()
    probe = []
    for _ in range(1000):
        a = clock()
        b = clock()
        probe.append(b - a)
    overhead_us = (clock() - t0) / 1000 * 1e6

    peak_kb = _peak_rss_kb()
    decoded = decode_outputs(interp, info) if postprocess else None
    if database is not None:
        if decoded[0]["task"] != "embedding":
            raise ValueError(
                f"--database needs an embedding model; this one is {decoded[0]['task']}"
            )
        decoded[0]["recognised"] = recognise(decoded[0]["embedding"], database, model, threshold)
    return {
        "schema": SCHEMA_VERSION,
        "model": os.path.basename(model),
        "device": device or platform.node(),
        "threads": threads,
        "runs": len(samples),
        "warmup": warmup,
        "latency_ms": summarize(samples),
        "init_ms": init_ms,
        "first_inference_ms": first_ms,
        "peak_rss_mb": max(peak_kb - rss_before, 0.0) / 1024,
        "model_bytes": os.path.getsize(model),
        "measured": ["latency_ms", "init_ms", "first_inference_ms", "peak_rss_mb", "model_bytes"],
        "samples_ms": samples,
        "loop_overhead_us": overhead_us,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "runtime": runtime,
        "machine": f"{platform.system()} {platform.machine()} {platform.python_version()}",
        "input_range": list(drawn_in) if drawn_in else None,
        "input_range_source": range_source,
        **({"predictions": decoded[0], "postprocess_ms": decoded[1]} if decoded else {}),
        "ok": True,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=None, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=None, help="stop timing after S seconds")
    p.add_argument("--cores", default="", help="CPU affinity, e.g. 0 or 0,1")
    p.add_argument("--memory-limit-mb", type=float, default=None, help="RLIMIT_AS for this process")
    p.add_argument("--inputs", nargs="*", default=None, help=".npy file per model input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--input-range",
        default=None,
        metavar="LO,HI",
        help="range of random float inputs (default: the model's mobilecv metadata, else 0,1)",
    )
    p.add_argument(
        "--postprocess",
        action="store_true",
        help="decode the outputs with the model's task (numpy; needs postprocess.py beside "
        "this script, or mobilecv) and time it",
    )
    p.add_argument(
        "--database",
        default=None,
        metavar="DB.npz",
        help="an embedding model's `mobilecv enroll` database: recognise each embedding "
        "(implies --postprocess)",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="tau for --database (default: its own)"
    )
    p.add_argument("--device", default="", help="name to record (default: hostname)")
    p.add_argument("-o", "--output", default="-", help="JSON file (default stdout)")
    a = p.parse_args(argv)
    cores = [int(c) for c in a.cores.split(",") if c.strip()] if a.cores else None
    try:
        flag_range = parse_input_range(a.input_range) if a.input_range else None
    except ValueError as exc:
        p.error(str(exc))
    try:
        result = measure(
            a.model, a.threads, a.runs, a.warmup, a.time_budget, cores,
            a.memory_limit_mb, a.inputs, a.seed, a.device, flag_range, a.postprocess,
            a.database, a.threshold,
        )  # fmt: skip
        code = 0
    except MemoryError:
        result = {"ok": False, "error": f"out of memory (limit {a.memory_limit_mb} MB)"}
        code = 1
    except Exception as exc:  # any runtime failure becomes a failed result, not a traceback
        msg = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {msg[-1] if msg else ''}".strip()
        oom = ("failed to map", "bad_alloc", "Cannot allocate memory", "MemoryError")
        if a.memory_limit_mb and any(s in str(exc) for s in oom):
            text = f"out of memory under the {a.memory_limit_mb:g} MB limit ({text})"
        result = {"ok": False, "error": text}
        code = 1
    text = json.dumps(result, indent=2)
    if a.output == "-":
        print(text)
    else:
        with open(a.output + ".tmp", "w") as fh:
            fh.write(text + "\n")
        os.replace(a.output + ".tmp", a.output)
    if not result["ok"]:
        print(f"Error: {result['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

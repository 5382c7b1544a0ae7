"""Will this .tflite model fit on a device, and how fast will it be there?

`run(path, device=..., threads=...)` measures on the host (in a child process),
runs the real TensorFlow Lite Micro interpreter for MCU profiles, estimates the
rest under the device profile, and returns a result dict following the `bench`
contract in docs/ARCHITECTURE.md, with `measured` naming the figures that were measured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mobilecv.bench import devices as _devices
from mobilecv.bench import estimate as _estimate
from mobilecv.bench.devices import Device, Runtime
from mobilecv.bench.estimate import Verdict
from mobilecv.bench.harness import (
    RunConfig,
    check_inputs,
    load_result,
    measure,
    parse_benchmark_model,
)
from mobilecv.errors import InputError, RunFailed
from mobilecv.tflite_graph import Graph, load

__all__ = [
    "run",
    "from_import",
    "load",
    "load_result",
    "parse_benchmark_model",
    "Device",
    "Graph",
    "RunConfig",
    "Verdict",
]

_LATENCY_KEYS = ("mean", "p50", "p90", "p99", "min", "max", "std")


def measured_latency(latency_ms: dict | None) -> tuple[float | None, str | None]:
    """The measured figure a latency budget is judged by, and its label: the median when
    the measurement has one, else the mean (benchmark_model prints no percentiles)."""
    latency_ms = latency_ms or {}
    for key in ("p50", "mean"):
        if latency_ms.get(key) is not None:
            return float(latency_ms[key]), f"measured {key}"
    return None, None


def check_runnable(graph: Graph) -> None:
    """Refuse what no runtime here can run, with one clear line, before any child starts."""
    if graph.dynamic_inputs:
        raise InputError(
            f"{graph.path}: dynamic input shape on {', '.join(graph.dynamic_inputs)} "
            "(only a dynamic batch axis is supported); convert with a fixed input shape"
        )


def run(
    path: str | os.PathLike,
    device: str | Device = "host",
    threads: int = 1,
    runs: int | None = 50,
    warmup: int = 5,
    *,
    cores: Sequence[int] = (),
    memory_limit_mb: float | None = None,
    time_budget_s: float | None = None,
    inputs: Sequence[str] = (),
    max_latency_ms: float | None = None,
    timeout_s: float = 120.0,
    imported: dict | None = None,
    measure_host: bool = True,
) -> dict:
    """Benchmark one model under one device profile; see the `bench` contract in docs/ARCHITECTURE.md.

    On `host` it measures; on other profiles it estimates (and, for MCU profiles, runs
    the real TFLM interpreter for the arena). `imported` is a result measured on the
    real device (ondevice.py JSON or parsed benchmark_model output) to merge in.
    """
    graph = load(path)
    check_runnable(graph)
    check_inputs(graph, inputs)
    dev = device if isinstance(device, Device) else _devices.get(device)
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    est = _estimate.estimate(graph, dev, threads)

    measured_names = ["model_bytes"]
    result: dict = {
        "model": os.fspath(path),
        "device": dev.name,
        "threads": threads,
        "runs": 0,
        "latency_ms": dict.fromkeys(_LATENCY_KEYS),
        "init_ms": None,
        "first_inference_ms": None,
        "peak_rss_mb": None,
        "model_bytes": graph.model_bytes,
        "arena_bytes": None,
        "estimate": est.summary(),
        "measured": measured_names,
    }
    measured = None
    if imported is not None:
        measured = imported
        result["source"] = imported.get("source", "ondevice.py")
    elif dev.measurable and measure_host:
        if graph.custom_ops:
            raise RunFailed(
                f"{graph.path}: uses custom op(s) {', '.join(graph.custom_ops)} that LiteRT's "
                "builtin resolver cannot run; register them or convert without custom ops"
            )
        cfg = RunConfig(
            threads=threads, runs=runs, warmup=warmup, time_budget_s=time_budget_s,
            cores=tuple(cores), memory_limit_mb=memory_limit_mb, inputs=tuple(inputs),
            timeout_s=timeout_s,
        )  # fmt: skip
        measured = measure(path, cfg, device=dev.name)
        if not measured.get("ok"):
            raise RunFailed(f"{os.fspath(path)}: measured run failed: {measured['error']}")
    if measured is not None:
        for key in ("runs", "init_ms", "first_inference_ms", "peak_rss_mb"):
            result[key] = measured.get(key)
        result["threads"] = measured.get("threads") or threads
        lat = measured.get("latency_ms") or {}
        result["latency_ms"] = {k: lat.get(k) for k in _LATENCY_KEYS}
        result["samples_ms"] = measured.get("samples_ms", [])
        result["loop_overhead_us"] = measured.get("loop_overhead_us")
        if measured_latency(lat)[0] is not None:  # a table of Nones measured nothing
            measured_names.append("latency_ms")
        measured_names += [
            k for k in ("init_ms", "first_inference_ms", "peak_rss_mb") if measured.get(k) is not None
        ]  # fmt: skip

    measured_ram = None
    if dev.runtime is Runtime.TFLM:
        from mobilecv.bench import micro

        tflm = micro.run(path, timeout_s=timeout_s)
        result["tflm"] = {k: v for k, v in tflm.items() if k != "allocations"}
        result["tflm"]["allocations"] = tflm.get("allocations", [])
        if tflm.get("ok"):
            result["arena_bytes"] = tflm.get("min_arena_bytes", tflm.get("arena_bytes"))
            measured_names.append("arena_bytes")
            measured_ram = result["arena_bytes"] + dev.runtime_ram_bytes
        for op in tflm.get("unresolved_ops", []):
            if op not in est.unsupported_ops:
                est.unsupported_ops.append(op)
    else:
        result["arena_bytes"] = est.arena_bytes if dev.runtime is Runtime.TFLM else None

    latency, source = measured_latency(result["latency_ms"])
    fits, word, reasons = _estimate.verdict(
        est, dev, max_latency_ms, latency, measured_ram, latency_source=source
    )
    judged_ms, judged_source = _estimate.judged_latency(est, latency, source)
    result["judged_latency"] = {"ms": judged_ms, "source": judged_source}
    if dev.runtime is Runtime.TFLM and not result["tflm"].get("ok"):
        # The real runtime could not run it: that decides, whatever the estimate says.
        fits["ops"] = False
        word = Verdict.DOES_NOT_FIT
        reasons.append(f"tflm: {result['tflm'].get('error', 'failed')}")
    result.update(fits=fits, verdict=word, reasons=reasons)
    result["estimate_per_op"] = est.per_op()
    result["live_bytes"] = est.live_bytes
    result["macs"] = graph.macs
    notes = [f"tflm: {result['tflm']['note']}"] if result.get("tflm", {}).get("note") else []
    if len(graph.subgraphs) > 1:
        notes.append("control flow: estimates cover the main subgraph only")
    if notes:
        result["notes"] = notes
    return result


def from_import(imported: dict, max_latency_ms: float | None = None) -> dict:
    """A result made only from a device's own measurement (no model file at hand, so
    no estimates): the latency budget is the one thing it can be judged on, and without
    a measured latency the verdict on a budget is unknown."""
    lat = imported.get("latency_ms") or {}
    latency, source = measured_latency(lat)  # no estimate without the model file
    fits_latency, reason = _estimate.judge_latency(latency, source, max_latency_ms)
    fits = {"flash": None, "ram": None, "latency": fits_latency, "ops": None}
    measured = [k for k in ("init_ms", "first_inference_ms", "peak_rss_mb", "model_bytes")
                if imported.get(k) is not None]  # fmt: skip
    if latency is not None:
        measured.insert(0, "latency_ms")
    return {
        "model": imported.get("model", ""),
        "device": imported.get("device", ""),
        "threads": imported.get("threads"),
        "runs": imported.get("runs"),
        "latency_ms": {k: lat.get(k) for k in _LATENCY_KEYS},
        "init_ms": imported.get("init_ms"),
        "first_inference_ms": imported.get("first_inference_ms"),
        "peak_rss_mb": imported.get("peak_rss_mb"),
        "model_bytes": imported.get("model_bytes"),
        "arena_bytes": None,
        "estimate": None,
        "measured": measured,
        "judged_latency": {"ms": latency, "source": source},
        "fits": fits,
        "verdict": _estimate.overall(fits),
        "reasons": ([reason] if reason else [])
        + ["flash, ram, ops: not judged (pass the .tflite to estimate them)"],
        "samples_ms": imported.get("samples_ms", []),
        "source": imported.get("source", "ondevice.py"),
    }

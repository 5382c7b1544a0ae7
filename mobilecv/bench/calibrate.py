"""Calibrate the `host` profile with microbenchmarks on this machine.

Single-op LiteRT models (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED in float32 and
int8, and a chain of 64 tiny 1x1 convs for the per-op overhead) are timed with the same
child-process harness as user models; memory bandwidth comes from a numpy copy.
Results are cached in ~/.cache/mobilecv (or $MOBILECV_CACHE_DIR) per machine and
runtime version, so this runs once (about half a minute; it needs TensorFlow to
build the probe models).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mobilecv.bench.devices import Device
from mobilecv.errors import RunFailed, one_line
from mobilecv.fileio import write_json
from mobilecv.progress import Progress

CACHE_VERSION = 3


def cache_dir() -> Path:
    return Path(os.environ.get("MOBILECV_CACHE_DIR") or Path.home() / ".cache" / "mobilecv")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_mhz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return 1000.0


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def _key() -> str:
    import ai_edge_litert

    return f"{platform.node()}|{_cpu_model()}|litert {ai_edge_litert.__version__}|v{CACHE_VERSION}"


def _probe_models(tmp: Path) -> dict[str, tuple[Path, int]]:
    """Build the single-op probe models; returns name -> (path, MACs)."""
    from mobilecv._tf import get_keras
    from mobilecv.bench.samples import random_calibration
    from mobilecv.converters.tflite import convert

    keras = get_keras("tf_keras")
    L = keras.layers
    keras.utils.set_random_seed(0)

    def single(shape, layer):
        x = keras.Input(shape)
        return keras.Model(x, layer(x))

    # Per-op overhead: 64 chained 1x1 convs on a 4x4x8 map (1 K MACs each), since
    # conv-like ops dominate real models and cost more to dispatch than an ADD.
    x = keras.Input((4, 4, 8))
    y = x
    for _ in range(64):
        y = L.Conv2D(8, 1)(y)
    chain = keras.Model(x, y)
    specs = {
        "conv": (single((28, 28, 64), L.Conv2D(64, 3, padding="same")), 28 * 28 * 64 * 576),
        "dw": (single((56, 56, 128), L.DepthwiseConv2D(3, padding="same")), 56 * 56 * 128 * 9),
        "fc": (single((1024,), L.Dense(1024)), 1024 * 1024),
    }
    out = {}
    for name, (model, macs) in specs.items():
        for q in ("none", "int8"):
            p = tmp / f"{name}_{q}.tflite"
            calibration = random_calibration(model, 4)
            result = convert(model, q, calibration, samples=4, verify=False, progress=False)
            p.write_bytes(result.tflite)
            out[f"{name}_{'fp32' if q == 'none' else 'int8'}"] = (p, macs)
    p = tmp / "chain.tflite"
    p.write_bytes(convert(chain, verify=False, progress=False).tflite)
    out["chain"] = (p, 64)
    return out


def _bandwidth_gbs() -> float:
    a = np.ones(64 << 18, dtype=np.float32)  # 64 MB
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9  # read + write


def run_calibration(progress: bool = True) -> dict:
    """Time the probes and derive the host figures (threads=1, one core)."""
    from mobilecv.bench.harness import RunConfig, measure
    from mobilecv.tflite_graph import load

    with tempfile.TemporaryDirectory(prefix="mobilecv-calib-") as tmp:
        probes = _probe_models(Path(tmp))
        times = {}
        cores = (
            tuple(sorted(os.sched_getaffinity(0)))[:1] if hasattr(os, "sched_getaffinity") else ()
        )
        with Progress("calibrating host", len(probes), "probe", enabled=progress) as bar:
            for name, (path, _) in probes.items():
                bar.note(name)
                r = measure(path, RunConfig(threads=1, runs=40, warmup=5, cores=cores))
                if not r.get("ok"):
                    raise RunFailed(f"host calibration probe {name} failed: {r.get('error')}")
                times[name] = r["latency_ms"]["p50"] / 1e3
                bar.update()
        bytes_moved = {
            n: sum(load(p).op_bytes(op) for op in load(p).ops) for n, (p, _) in probes.items()
        }
    overhead = times["chain"] / 64
    bw = _bandwidth_gbs()
    rates = {}
    for dt in ("fp32", "int8"):
        p, macs = probes[f"conv_{dt}"]
        rates[dt] = macs / max(times[f"conv_{dt}"] - overhead, 1e-7)
    eff = {}
    for op, probe in (("DEPTHWISE_CONV_2D", "dw"), ("FULLY_CONNECTED", "fc")):
        for dt, dtype in (("fp32", "float32"), ("int8", "int8")):
            macs = probes[f"{probe}_{dt}"][1]
            compute_s = max(times[f"{probe}_{dt}"] - overhead, 1e-7)
            # If the roofline's memory term already explains the time, the op is
            # memory bound and its compute efficiency does not matter: keep 1.
            mem_s = bytes_moved[f"{probe}_{dt}"] / (bw * 1e9)
            e = 1.0 if mem_s >= compute_s else macs / compute_s / rates[dt]
            eff[f"{op}:{dtype}"] = float(min(max(e, 0.02), 1.0))
    lib = Path(sys.modules["ai_edge_litert"].__file__).parent
    runtime_flash = sum(
        f.stat().st_size
        for pattern in ("_pywrap_litert_interpreter_wrapper*.so", "libpywrap_litert_common*.so")
        for f in lib.glob(pattern)
    )
    return {
        "key": _key(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "clock_mhz": _cpu_mhz(),
        "macs_per_s": {"fp32": rates["fp32"], "fp16": rates["fp32"], "int8": rates["int8"]},
        "memory_bandwidth_gbs": bw,
        "ram_bytes": _mem_available(),
        "flash_bytes": shutil.disk_usage(Path.home()).free,
        "runtime_flash_bytes": runtime_flash or 6_000_000,
        "per_op_overhead_us": overhead * 1e6,
        "op_efficiency": eff,
        "probe_seconds": times,
    }


def load_or_run(force: bool = False, progress: bool = True) -> dict:
    path = cache_dir() / "host_calibration.json"
    key = _key()
    if path.exists() and not force:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("key") == key:
                return data
        except (OSError, ValueError):  # unreadable or corrupt: calibrate again
            pass
    data = run_calibration(progress)
    try:
        write_json(path, data, force=True)
    except (OSError, RunFailed) as exc:  # a read-only home must not stop a benchmark
        print(f"warning: host calibration not cached: {one_line(exc)}", file=sys.stderr)
    return data


def calibrated(device: Device, force: bool = False) -> Device:
    """The host profile with its figures replaced by this machine's calibration."""
    c = load_or_run(force)
    return dataclasses.replace(
        device,
        cores=int(c["cores"]),
        clock_mhz=float(c["clock_mhz"]),
        macs_per_s=dict(c["macs_per_s"]),
        memory_bandwidth_gbs=float(c["memory_bandwidth_gbs"]),
        ram_bytes=int(c["ram_bytes"]),
        flash_bytes=int(c["flash_bytes"]),
        runtime_flash_bytes=int(c["runtime_flash_bytes"]),
        per_op_overhead_us=float(c["per_op_overhead_us"]),
        op_efficiency=dict(c["op_efficiency"]),
    )

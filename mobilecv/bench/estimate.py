"""Estimates under a device profile: roofline latency per op, a greedy arena planner
over tensor lifetimes (the way TFLite Micro plans its arena), and flash footprint."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from mobilecv.bench.devices import Device, Runtime
from mobilecv.tflite_graph import WEIGHT_OPS, Graph

# TFLM aligns every arena buffer to 16 bytes (MicroArenaBufferAlignment()).
ARENA_ALIGN = 16
# Ops whose kernels spread over several threads in XNNPACK / LiteRT: the
# multiply-accumulate kernels (conv, dense, matmul).
PARALLEL_OPS = WEIGHT_OPS
CHANNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _align(n: int, a: int = ARENA_ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class OpTime:
    index: int
    opcode: str
    macs: int
    bytes: int
    ms: float
    bound: str  # "compute", "memory" or "overhead": what sets this op's time


@dataclass(frozen=True)
class Plan:
    """Arena layout: offset of each planned tensor, the peak, and bytes live per op."""

    offsets: dict[int, int]
    peak_bytes: int
    live_bytes: list[int]  # sum of live activation bytes while each op runs


def lifetimes(graph: Graph) -> dict[int, tuple[int, int]]:
    """First op that needs each activation tensor and the last op that reads it.
    Graph inputs live from op 0; graph outputs stay live to the end (as in TFLM)."""
    last = len(graph.ops) - 1
    life: dict[int, list[int]] = {}

    def planned(t: int) -> bool:
        tensor = graph.tensors[t]
        return t >= 0 and not tensor.constant and not tensor.variable

    for t in graph.inputs:
        if planned(t):
            life[t] = [0, 0]
    for op in graph.ops:
        for t in op.outputs:
            if planned(t):
                life.setdefault(t, [op.index, op.index])
        for t in op.inputs:
            if planned(t):
                life.setdefault(t, [op.index, op.index])[1] = op.index
    for t in graph.outputs:
        if planned(t):
            life.setdefault(t, [last, last])[1] = last
    return {t: (a, b) for t, (a, b) in life.items()}


def plan_arena(graph: Graph) -> Plan:
    """Greedy by size, like TFLM's GreedyMemoryPlanner: place the largest buffers first,
    each at the lowest 16-byte aligned offset that no time-overlapping buffer uses."""
    life = lifetimes(graph)
    order = sorted(life, key=lambda t: (-graph.tensors[t].nbytes, life[t][0]))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    for t in order:
        size = _align(graph.tensors[t].nbytes)
        first, last = life[t]
        clashes = sorted((off, sz) for off, sz, f, ll in placed if not (ll < first or f > last))
        offset = 0
        for off, sz in clashes:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        offsets[t] = offset
        placed.append((offset, size, first, last))
    peak = max((off + sz for off, sz, _, _ in placed), default=0)
    live = []
    for op in graph.ops:
        live.append(
            sum(graph.tensors[t].nbytes for t, (f, ll) in life.items() if f <= op.index <= ll)
        )
    return Plan(offsets=offsets, peak_bytes=peak, live_bytes=live)


def tflm_persistent_bytes(graph: Graph) -> int:
    """The arena's tail in TFLM: structs and kernel data that live as long as the
    interpreter. Struct sizes are those TFLM's RecordingMicroAllocator reports (24 B per
    TfLiteEvalTensor, 64 B per NodeAndRegistration and per persistent TfLiteTensor);
    kernel op data (80 B + per-output-channel multiplier and shift for conv/FC, 96 B
    otherwise) and the ~500 B + 28 B/op of graph bookkeeping were fitted on two int8
    models and are checked against the real runtime in benchmarks/estimate_accuracy.py."""
    n_io = len(graph.inputs) + len(graph.outputs)
    quant_io = sum(1 for t in (*graph.inputs, *graph.outputs) if graph.tensors[t].scale)
    op_data = 0
    for op in graph.ops:
        out = graph.tensors[op.outputs[0]] if op.outputs else None
        if op.opcode in CHANNEL_OPS and out is not None and out.shape:
            op_data += 80 + _align(8 * out.shape[-1])
        else:
            op_data += 96
    return (
        _align(24 * len(graph.tensors))
        + 64 * n_io
        + 32 * quant_io
        + 64 * len(graph.ops)
        + op_data
        + 492
        + 28 * len(graph.ops)
    )


def op_times(graph: Graph, device: Device, threads: int = 1) -> list[OpTime]:
    """Roofline per op: max(MACs / MAC-rate, bytes / bandwidth) + per-op overhead."""
    threads = max(1, min(threads, device.cores))
    bw = device.memory_bandwidth_gbs * 1e9
    overhead = device.per_op_overhead_us * 1e-6
    result = []
    for op in graph.ops:
        out = graph.tensors[op.outputs[0]] if op.outputs else None
        dtype = out.dtype if out is not None else "float32"
        rate = device.rate(dtype) or device.rate("float32")
        eff = device.op_efficiency
        rate *= eff.get(f"{op.opcode}:{dtype}", eff.get(op.opcode, 1.0))
        if op.opcode in PARALLEL_OPS:
            rate *= 1 + (threads - 1) * device.thread_scaling
        nbytes = graph.op_bytes(op)
        compute = op.macs / rate if rate > 0 else 0.0
        memory = nbytes / bw
        core = max(compute, memory)
        bound = "overhead" if overhead > core else ("compute" if compute >= memory else "memory")
        result.append(OpTime(op.index, op.opcode, op.macs, nbytes, (core + overhead) * 1e3, bound))
    return result


@dataclass(frozen=True)
class Estimate:
    latency_ms: float
    peak_activation_bytes: int
    arena_bytes: int  # TFLM: planned head + estimated persistent tail
    ram_bytes: int  # what the model needs in RAM on this device's runtime
    flash_bytes: int
    unsupported_ops: list[str]
    unsupported_dtypes: list[str]
    ops: list[OpTime]
    live_bytes: list[int]

    def summary(self) -> dict:
        return {
            "latency_ms": self.latency_ms,
            "peak_activation_bytes": self.peak_activation_bytes,
            "flash_bytes": self.flash_bytes,
            "arena_bytes": self.arena_bytes,
            "ram_bytes": self.ram_bytes,
        }

    def per_op(self) -> list[dict]:
        return [asdict(o) for o in self.ops]


def estimate(graph: Graph, device: Device, threads: int = 1) -> Estimate:
    times = op_times(graph, device, threads)
    plan = plan_arena(graph)
    arena = plan.peak_bytes + tflm_persistent_bytes(graph)
    if device.runtime is Runtime.TFLM:
        # Weights stay in flash (memory-mapped); only the arena and the runtime use RAM.
        ram = arena + device.runtime_ram_bytes
        flash = graph.model_bytes + device.runtime_flash_bytes
    elif device.runtime is Runtime.EDGETPU:
        ram = graph.weight_bytes  # parameters cached in on-chip SRAM
        flash = graph.model_bytes
    else:
        ram = plan.peak_bytes + graph.model_bytes + device.runtime_ram_bytes
        flash = graph.model_bytes + device.runtime_flash_bytes
    allowed = set(device.ops) if device.ops is not None else None
    unsupported = sorted(
        {
            op.opcode
            for op in graph.ops
            if not op.builtin or (allowed is not None and op.opcode not in allowed)
        }
    )
    bad_dtypes = sorted(graph.dtypes - set(device.dtypes))
    return Estimate(
        latency_ms=sum(o.ms for o in times),
        peak_activation_bytes=plan.peak_bytes,
        arena_bytes=arena,
        ram_bytes=ram,
        flash_bytes=flash,
        unsupported_ops=unsupported,
        unsupported_dtypes=bad_dtypes,
        ops=times,
        live_bytes=plan.live_bytes,
    )


class Verdict(enum.StrEnum):
    """The overall answer of `bench`: a resource that does not fit decides; a latency
    budget with no figure to judge it by leaves the answer unknown (never a fit)."""

    FITS = "fits"
    DOES_NOT_FIT = "does not fit"
    UNKNOWN = "unknown"


def overall(fits: dict[str, bool | None]) -> Verdict:
    """`fits` maps each resource to True, False, or None (not judged). Only an unjudged
    latency budget makes the answer unknown: flash, ram and ops are None only where no
    model file was given, and the reasons say so."""
    if any(v is False for v in fits.values()):
        return Verdict.DOES_NOT_FIT
    if fits.get("latency") is None:
        return Verdict.UNKNOWN
    return Verdict.FITS


def judge_latency(
    latency_ms: float | None, source: str | None, budget_ms: float | None
) -> tuple[bool | None, str | None]:
    """Does `latency_ms` (labelled by `source`, e.g. "measured p50") meet the budget?
    True without a budget; None (with a reason) when a budget has no figure to meet."""
    if budget_ms is None:
        return True, None
    if latency_ms is None:
        return (
            None,
            f"latency: unknown, no measured or estimated figure for the {budget_ms:g} ms budget",
        )
    if latency_ms <= budget_ms:
        return True, None
    return False, f"latency: {source} {latency_ms:.2f} ms exceeds the {budget_ms:g} ms budget"


def judged_latency(
    est: Estimate | None, measured_ms: float | None, measured_source: str | None = None
) -> tuple[float | None, str | None]:
    """The latency figure a budget is judged by, and its label: a measurement decides;
    without one, the estimate; without either, (None, None)."""
    if measured_ms is not None:
        return measured_ms, measured_source or "measured"
    if est is not None and est.latency_ms is not None:
        return est.latency_ms, "estimated"
    return None, None


def verdict(
    est: Estimate,
    device: Device,
    max_latency_ms: float | None = None,
    measured_latency_ms: float | None = None,
    measured_ram_bytes: int | None = None,
    latency_source: str | None = None,
) -> tuple[dict, Verdict, list[str]]:
    """fits per resource, the overall verdict, and one reason per failed resource.
    Measured figures, when given, take precedence over estimates; `latency_source` names
    the measured latency ("measured p50", "measured mean") in the reason."""
    ram_need = measured_ram_bytes if measured_ram_bytes is not None else est.ram_bytes
    latency, source = judged_latency(est, measured_latency_ms, latency_source)
    fits_latency, latency_reason = judge_latency(latency, source, max_latency_ms)
    fits = {
        "flash": est.flash_bytes <= device.flash_bytes,
        "ram": ram_need <= device.ram_bytes,
        "latency": fits_latency,
        "ops": not est.unsupported_ops and not est.unsupported_dtypes,
    }
    reasons = []
    if not fits["flash"]:
        reasons.append(
            f"flash: needs {est.flash_bytes / 1024:.0f} KiB (model + {device.runtime.value} runtime), "
            f"{device.name} has {device.flash_bytes / 1024:.0f} KiB"
        )
    if not fits["ram"]:
        reasons.append(
            f"ram: needs {ram_need / 1024:.0f} KiB, {device.name} has {device.ram_bytes / 1024:.0f} KiB"
        )
    if latency_reason:
        reasons.append(latency_reason)
    if est.unsupported_ops:
        reasons.append(
            f"ops: {device.runtime.value} on {device.name} cannot run {', '.join(est.unsupported_ops)}"
        )
    if est.unsupported_dtypes:
        reasons.append(
            f"dtypes: {device.name} runs {'/'.join(device.dtypes)} only; model uses "
            f"{', '.join(est.unsupported_dtypes)} activations"
        )
    return fits, overall(fits), reasons

"""Describe what is in a .tflite model: the report `mobilecv inspect` prints.

`read_tflite(path_or_bytes)` reads the file with `mobilecv.tflite_graph` (the one
TF-free .tflite reader, shared with `mobilecv.bench`) and adds the analysis on top:
weights and their sparsity, the quantisation mode, ops left in float inside an
integer model, custom and unknown ops, the size breakdown, the metadata entries and
mobilecv's model info (the declared input range, task and source; mobilecv.modelinfo).
The result is a tree of plain dataclasses (the `--json` schema); `format_report` turns
it into text.

MACs here are the multiply-accumulates of the weight ops (conv, dense, matmul), the
convention `mobilecv profile` uses; the benchmark's estimator also counts elementwise
work (`tflite_graph.Op.macs` of every op).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilecv import tflite_graph
from mobilecv.errors import InputError
from mobilecv.modelinfo import METADATA_NAME, ModelInfo, range_name
from mobilecv.tflite_graph import WEIGHT_OPS, Graph, Op, Tensor

_FLOAT_TYPES = {"float32", "float16", "bfloat16", "float64"}
_INTEGER_ACTIVATION_TYPES = {"int8", "uint8", "int16"}
# Ops that only move values between float and integer at the model's edges.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Ops that unpack a stored constant (float16, sparse or fake-quant weights) at run time.
_UNPACK_OPS = {"DEQUANTIZE", "DENSIFY", "QUANTIZE"}


@dataclass
class QuantParams:
    scale: list[float]
    zero_point: list[int]
    quantized_dimension: int = 0


@dataclass
class TensorInfo:
    index: int
    subgraph: int
    name: str
    shape: list[int]
    shape_signature: list[int]
    dtype: str
    buffer: int
    is_constant: bool
    buffer_bytes: int
    quant: QuantParams | None = None
    sparse_encoded: bool = False


@dataclass
class OpInfo:
    index: int
    subgraph: int
    op: str
    custom: bool
    known: bool
    inputs: list[int]
    outputs: list[int]
    macs: int = 0


@dataclass
class WeightInfo:
    tensor: str
    op: str
    op_index: int
    dtype: str
    shape: list[int]
    bytes: int
    zeros: float  # fraction of weight values that are exactly zero
    sparse_encoded: bool


@dataclass
class TfliteGraph:
    size_bytes: int
    version: int
    description: str
    subgraphs: int
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    weights: list[WeightInfo]
    weight_bytes: int
    graph_bytes: int
    op_counts: dict[str, int]
    macs: int
    quantization: str  # float32 | float16 | dynamic | int8 | int16x8
    float_ops: list[str] = field(default_factory=list)
    custom_ops: list[str] = field(default_factory=list)
    unknown_ops: list[str] = field(default_factory=list)
    weight_dtypes: dict[str, int] = field(default_factory=dict)
    tensor_dtypes: dict[str, int] = field(default_factory=dict)
    macs_by_op: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, int] = field(default_factory=dict)  # entry name -> payload bytes
    # mobilecv's model info (ModelInfo.to_dict()), {"error": ...} if unreadable, None if absent
    model_info: dict[str, Any] | None = None

    @property
    def weight_sparsity(self) -> float:
        """Zero fraction over all weight values of conv/dense-type ops."""
        total = sum(int(np.prod(w.shape)) for w in self.weights)
        if not total:
            return 0.0
        zeros = sum(w.zeros * int(np.prod(w.shape)) for w in self.weights)
        return zeros / total

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        """JSON-ready summary; `tensors=True` adds the full tensor and op lists."""
        out = {
            "size_bytes": self.size_bytes,
            "weight_bytes": self.weight_bytes,
            "graph_bytes": self.graph_bytes,
            "version": self.version,
            "subgraphs": self.subgraphs,
            "quantization": self.quantization,
            "op_counts": self.op_counts,
            "macs": self.macs,
            "macs_by_op": self.macs_by_op,
            "inputs": [_tensor_summary(t) for t in self.inputs],
            "outputs": [_tensor_summary(t) for t in self.outputs],
            "tensor_dtypes": self.tensor_dtypes,
            "weight_dtypes": self.weight_dtypes,
            "weight_sparsity": round(self.weight_sparsity, 4),
            "weights": [asdict(w) for w in self.weights],
            "float_ops": self.float_ops,
            "custom_ops": self.custom_ops,
            "unknown_ops": self.unknown_ops,
            "metadata": self.metadata,
            "mobilecv": self.model_info,
        }
        if tensors:
            out["tensors"] = [asdict(t) for t in self.tensors]
            out["ops"] = [asdict(o) for o in self.ops]
        return out


def _tensor_summary(t: TensorInfo) -> dict[str, Any]:
    quant = None
    if t.quant is not None:
        quant = {"scale": t.quant.scale[0], "zero_point": t.quant.zero_point[0]}
        if len(t.quant.scale) > 1:
            quant["channels"] = len(t.quant.scale)
    return {"name": t.name, "shape": t.shape_signature or t.shape, "dtype": t.dtype, "quant": quant}


def read_tflite(source: str | os.PathLike | bytes | bytearray | memoryview) -> TfliteGraph:
    """Parse and analyse a .tflite model (path or bytes). Raises InputError for a file
    that is missing, truncated, or not a TFLite flatbuffer."""
    return analyse(tflite_graph.load(source))


def _tensor_info(t: Tensor) -> TensorInfo:
    quant = None
    if t.scale:
        quant = QuantParams(list(t.scale), list(t.zero_point), t.quantized_dimension)
    return TensorInfo(
        index=t.index,
        subgraph=t.subgraph,
        name=t.name,
        shape=list(t.shape),
        shape_signature=list(t.shape_signature),
        dtype=t.dtype.upper(),
        buffer=t.buffer,
        is_constant=t.constant,
        buffer_bytes=t.buffer_bytes,
        quant=quant,
        sparse_encoded=t.sparse_encoded,
    )


def _op_info(op: Op) -> OpInfo:
    # Only the weight ops' multiply-accumulates, as `mobilecv profile` counts them.
    macs = op.macs if op.opcode in WEIGHT_OPS else 0
    ops_in, ops_out = list(op.inputs), list(op.outputs)
    return OpInfo(op.index, op.subgraph, op.opcode, op.custom, op.known, ops_in, ops_out, macs)


def analyse(graph: Graph) -> TfliteGraph:
    """The inspection report of a graph `tflite_graph.load` read."""
    all_tensors = [t for sg in graph.subgraphs for t in sg.tensors]
    tensors = [_tensor_info(t) for t in all_tensors]
    ops = [_op_info(op) for op in graph.all_ops]
    main = graph.subgraphs[0]
    weights = _weights(graph)

    weight_dtypes: Counter[str] = Counter()
    seen: set[int] = set()
    for t in all_tensors:
        if t.constant and t.buffer not in seen:  # a shared buffer counts once
            seen.add(t.buffer)
            weight_dtypes[t.dtype.upper()] += t.buffer_bytes
    tensor_dtypes = Counter(t.dtype for t in tensors)
    op_counts = Counter(o.op for o in ops)
    macs_by_op: Counter[str] = Counter()
    for o in ops:
        if o.macs:
            macs_by_op[o.op] += o.macs

    quantization = _quantization_kind(all_tensors, weights)
    float_ops = _float_ops(graph) if quantization in ("int8", "int16x8") else []
    return TfliteGraph(
        size_bytes=graph.model_bytes,
        version=graph.version,
        description=graph.description,
        subgraphs=len(graph.subgraphs),
        tensors=tensors,
        ops=ops,
        inputs=[_tensor_info(main.tensors[i]) for i in main.inputs],
        outputs=[_tensor_info(main.tensors[i]) for i in main.outputs],
        weights=weights,
        weight_bytes=graph.weight_bytes,
        graph_bytes=graph.model_bytes - graph.weight_bytes,
        op_counts=dict(op_counts.most_common()),
        macs=int(sum(o.macs for o in ops)),
        quantization=quantization,
        float_ops=float_ops,
        custom_ops=graph.custom_ops,
        unknown_ops=sorted({o.op for o in ops if not o.known}),
        weight_dtypes=dict(weight_dtypes.most_common()),
        tensor_dtypes=dict(tensor_dtypes.most_common()),
        macs_by_op=dict(macs_by_op.most_common()),
        metadata={name: len(payload) for name, payload in graph.metadata.items()},
        model_info=_model_info(graph),
    )


def _model_info(graph: Graph) -> dict[str, Any] | None:
    payload = graph.metadata.get(METADATA_NAME)
    if payload is None:
        return None
    try:
        return ModelInfo.from_json(payload).to_dict()
    except InputError as exc:
        return {"error": str(exc)}


def _numel(shape) -> int:
    return int(np.prod([max(d, 1) for d in shape])) if shape else 1


def _source_constant(idx: int, producers: dict[int, Op], tensors: tuple[Tensor, ...]) -> int:
    """Follow DEQUANTIZE/DENSIFY/QUANTIZE back to the stored constant they unpack."""
    start = idx
    for _ in range(3):
        if tensors[idx].constant:
            return idx
        op = producers.get(idx)
        if op is None or op.opcode not in _UNPACK_OPS or not op.inputs:
            break
        idx = op.inputs[0]
    return idx if tensors[idx].constant else start


def _weights(graph: Graph) -> list[WeightInfo]:
    out = []
    for sg in graph.subgraphs:
        producers = {o: op for op in sg.ops for o in op.outputs}
        for op in sg.ops:
            if op.opcode not in WEIGHT_OPS or len(op.inputs) <= 1 or op.inputs[1] < 0:
                continue
            t = sg.tensors[_source_constant(op.inputs[1], producers, sg.tensors)]
            if not t.constant:
                continue
            zeros = _zero_fraction(t, graph.data(t), _numel(t.shape))
            out.append(
                WeightInfo(
                    t.name,
                    op.opcode,
                    op.index,
                    t.dtype.upper(),
                    list(t.shape),
                    t.buffer_bytes,
                    zeros,
                    t.sparse_encoded,
                )
            )
    return out


def _zero_fraction(t: Tensor, payload: np.ndarray | None, numel: int) -> float:
    dtype = t.numpy_dtype
    if payload is None or dtype is None or numel == 0:
        return 0.0
    usable = payload.size - payload.size % np.dtype(dtype).itemsize
    values = np.frombuffer(payload[:usable].tobytes(), dtype=dtype)
    zero = t.zero_point[0] if len(t.zero_point) == 1 else 0
    nonzero = int(np.count_nonzero(values != zero))
    # A sparse-encoded tensor stores only (blocks of) non-zeros; the rest are implicit.
    return float(max(0.0, 1.0 - nonzero / numel))


def _quantization_kind(tensors: list[Tensor], weights: list[WeightInfo]) -> str:
    activations = [t for t in tensors if not t.constant]
    int_acts = [t for t in activations if t.dtype in _INTEGER_ACTIVATION_TYPES and t.scale]
    weight_types = {w.dtype for w in weights}
    if int_acts:
        return "int16x8" if any(t.dtype == "int16" for t in int_acts) else "int8"
    if weight_types & {"INT8", "UINT8"}:
        return "dynamic"
    if "FLOAT16" in weight_types:
        return "float16"
    return "float32"


def _float_ops(graph: Graph) -> list[str]:
    """Ops that compute in float inside a model meant to be integer."""
    found = []
    for sg in graph.subgraphs:
        for op in sg.ops:
            if op.opcode in _BOUNDARY_OPS:
                continue
            ids = [i for i in (*op.inputs, *op.outputs) if i >= 0]
            live = [sg.tensors[i] for i in ids if not sg.tensors[i].constant]
            if any(t.dtype in _FLOAT_TYPES for t in live):
                found.append(f"{op.opcode}#{op.index}" + (f"@{op.subgraph}" if op.subgraph else ""))
    return found


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fmt_macs(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_quant(t: TensorInfo) -> str:
    if t.quant is None:
        return ""
    if len(t.quant.scale) > 1:
        return f" (per-channel, {len(t.quant.scale)} scales)"
    return f" (scale={t.quant.scale[0]:.6g}, zero_point={t.quant.zero_point[0]})"


def format_report(graph: TfliteGraph, title: str = "") -> str:
    """Human-readable summary of `read_tflite`'s result."""
    lines = []
    if title:
        lines.append(title)
    weight_share = graph.weight_bytes / graph.size_bytes if graph.size_bytes else 0.0
    lines.append(
        f"size: {graph.size_bytes} bytes ({_fmt_bytes(graph.size_bytes)}); "
        f"weights {graph.weight_bytes} ({weight_share:.1%}), graph {graph.graph_bytes}"
    )
    lines.append(f"quantization: {graph.quantization}; subgraphs: {graph.subgraphs}")
    for label, group in (("input", graph.inputs), ("output", graph.outputs)):
        for t in group:
            shape = t.shape_signature or t.shape
            lines.append(f"{label}: {t.name} {shape} {t.dtype}{_fmt_quant(t)}")
    lines.append(f"MACs: {graph.macs} ({_fmt_macs(graph.macs)})")
    lines.append("ops:")
    for name, count in graph.op_counts.items():
        macs = graph.macs_by_op.get(name, 0)
        extra = f"  MACs {_fmt_macs(macs)}" if macs else ""
        lines.append(f"  {name:<24} {count:>4}{extra}")
    lines.append("tensor dtypes: " + ", ".join(f"{k} x{v}" for k, v in graph.tensor_dtypes.items()))
    lines.append(
        "weight bytes by dtype: "
        + (", ".join(f"{k} {v}" for k, v in graph.weight_dtypes.items()) or "none")
    )
    lines.append(f"weight sparsity (conv/dense weights): {graph.weight_sparsity:.1%}")
    encoded = [w for w in graph.weights if w.sparse_encoded]
    if encoded:
        lines.append(f"sparse-encoded weight tensors: {len(encoded)}")
    if graph.quantization in ("int8", "int16x8"):
        if graph.float_ops:
            lines.append(
                f"float ops left in an integer model ({len(graph.float_ops)}): "
                + ", ".join(graph.float_ops)
            )
        else:
            lines.append("float ops left: none (fully integer)")
    if graph.custom_ops:
        lines.append("custom ops: " + ", ".join(graph.custom_ops))
    if graph.unknown_ops:
        lines.append("unknown ops (newer schema?): " + ", ".join(graph.unknown_ops))
    if graph.metadata:
        entries = ", ".join(f"{name} ({size} B)" for name, size in graph.metadata.items())
        lines.append(f"metadata: {entries}")
    lines.append(_format_model_info(graph.model_info))
    return "\n".join(lines)


def _format_model_info(info: dict[str, Any] | None) -> str:
    if info is None:
        return "mobilecv info: none (input range not declared; feeders assume [0, 1])"
    if "error" in info:
        return f"mobilecv info: unreadable ({info['error']})"
    named = range_name(tuple(info["input_range"]))
    lo, hi = info["input_range"]
    text = f"mobilecv info: input range [{lo:g}, {hi:g}]"
    text += "" if named.startswith("[") else f" ({named})"
    text += f", task {info['task']}"
    source = dict(info.get("source") or {})
    if source:
        knobs = ", ".join(f"{k}={v}" for k, v in source.items() if k != "model")
        text += f", from {source.get('model', '?')}" + (f" ({knobs})" if knobs else "")
    return text

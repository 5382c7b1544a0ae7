"""Read a .tflite flatbuffer without TensorFlow and describe what is in it.

`read_tflite(path_or_bytes)` parses the file with the flatbuffers schema module
that ships with LiteRT (`ai_edge_litert.schema_py_generated`), so inspecting a
model costs a fraction of a second and no TensorFlow import. The result is a
tree of plain dataclasses that other tools (the benchmark's estimator, the
converter's notes) reuse; `format_report` turns it into the text that
`mobilecv inspect` prints.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilecv.errors import InputError

# Bytes per element of each TFLite tensor type; sub-byte types count as fractions.
_ITEMSIZE = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "BFLOAT16": 2,
    "FLOAT64": 8,
    "INT32": 4,
    "UINT32": 4,
    "INT64": 8,
    "UINT64": 8,
    "INT16": 2,
    "UINT16": 2,
    "INT8": 1,
    "UINT8": 1,
    "BOOL": 1,
    "INT4": 0.5,
    "INT2": 0.25,
    "COMPLEX64": 8,
    "COMPLEX128": 16,
}
_NUMPY_DTYPE = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "FLOAT64": np.float64,
    "INT32": np.int32,
    "UINT32": np.uint32,
    "INT64": np.int64,
    "UINT64": np.uint64,
    "INT16": np.int16,
    "UINT16": np.uint16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64"}
_INTEGER_ACTIVATION_TYPES = {"INT8", "UINT8", "INT16"}
# Ops that only move values between float and integer at the model's edges.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Ops whose input 1 is the weight tensor (the one pruning/quantisation acts on).
_WEIGHT_INPUT = {
    "CONV_2D": 1,
    "DEPTHWISE_CONV_2D": 1,
    "FULLY_CONNECTED": 1,
    "TRANSPOSE_CONV": 1,
    "CONV_3D": 1,
    "BATCH_MATMUL": 1,
}
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


def _schema() -> ModuleType:
    """The flatbuffers-generated TFLite schema; LiteRT's copy needs no TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the installed runtime
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
        except ImportError:
            from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _enum_names(enum_class) -> dict[int, str]:
    return {
        v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)
    }


def read_tflite(source: str | os.PathLike | bytes | bytearray | memoryview) -> TfliteGraph:
    """Parse a .tflite model (path or bytes). Raises InputError for a file that is
    missing, truncated, or not a TFLite flatbuffer."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        data = path.read_bytes()
    label = "model" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise InputError(f"{label}: not a TFLite flatbuffer (missing TFL3 identifier)")
    try:
        return _build_graph(data)
    except InputError:
        raise
    except Exception as exc:  # flatbuffers raises whatever a bad offset produces
        raise InputError(
            f"{label}: corrupt or truncated TFLite file ({type(exc).__name__}: {exc})"
        ) from None


def _buffer_bytes(buf, data: bytes) -> np.ndarray | None:
    if buf is None:
        return None
    if buf.offset and buf.offset > 1:  # large models keep buffers after the flatbuffer
        end = buf.offset + buf.size
        if end > len(data):
            raise InputError(f"buffer points past the end of the file ({end} > {len(data)})")
        return np.frombuffer(data, dtype=np.uint8, count=buf.size, offset=buf.offset)
    if buf.data is None or len(buf.data) == 0:
        return None
    return np.asarray(buf.data, dtype=np.uint8)


def _build_graph(data: bytes) -> TfliteGraph:
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    type_names = _enum_names(schema.TensorType)
    op_names = _enum_names(schema.BuiltinOperator)
    buffers = model.buffers or []
    raw = [_buffer_bytes(b, data) for b in buffers]

    codes = []
    for oc in model.operatorCodes or []:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if code == schema.BuiltinOperator.CUSTOM:
            name = (oc.customCode or b"").decode(errors="replace") or "CUSTOM"
            codes.append((name, True, True))
        elif code in op_names:
            codes.append((op_names[code], False, True))
        else:
            codes.append((f"UNKNOWN_{code}", False, False))

    tensors: list[TensorInfo] = []
    ops: list[OpInfo] = []
    per_sub: list[list[TensorInfo]] = []
    for s, sub in enumerate(model.subgraphs or []):
        sub_tensors = []
        for i, t in enumerate(sub.tensors or []):
            if t.buffer < 0 or t.buffer >= max(len(buffers), 1):
                raise InputError(f"tensor {i} refers to buffer {t.buffer} of {len(buffers)}")
            dtype = type_names.get(t.type, f"TYPE_{t.type}")
            payload = raw[t.buffer] if buffers else None
            quant = None
            q = t.quantization
            if q is not None and q.scale is not None and len(q.scale) > 0:
                zps = list(q.zeroPoint) if q.zeroPoint is not None else [0] * len(q.scale)
                quant = QuantParams(
                    [float(v) for v in q.scale], [int(v) for v in zps], int(q.quantizedDimension)
                )
            name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else (t.name or "")
            info = TensorInfo(
                index=i,
                subgraph=s,
                name=name,
                shape=[int(d) for d in (t.shape if t.shape is not None else [])],
                shape_signature=[
                    int(d) for d in (t.shapeSignature if t.shapeSignature is not None else [])
                ],
                dtype=dtype,
                buffer=int(t.buffer),
                is_constant=payload is not None,
                buffer_bytes=0 if payload is None else int(payload.size),
                quant=quant,
                sparse_encoded=t.sparsity is not None,
            )
            sub_tensors.append(info)
        per_sub.append(sub_tensors)
        tensors.extend(sub_tensors)
        for j, op in enumerate(sub.operators or []):
            if op.opcodeIndex >= len(codes):
                raise InputError(f"operator {j} uses opcode {op.opcodeIndex} of {len(codes)}")
            ins = [int(x) for x in (op.inputs if op.inputs is not None else [])]
            outs = [int(x) for x in (op.outputs if op.outputs is not None else [])]
            for x in ins + outs:
                if x >= len(sub_tensors):
                    raise InputError(f"operator {j} refers to tensor {x} of {len(sub_tensors)}")
            name, custom, known = codes[op.opcodeIndex]
            ops.append(OpInfo(j, s, name, custom, known, ins, outs))

    if not per_sub:
        raise InputError("the model has no subgraphs")
    for op in ops:
        op.macs = _macs(op, per_sub[op.subgraph])

    weights = _weights(ops, per_sub, raw)
    main = per_sub[0]
    sub0 = model.subgraphs[0]
    inputs = [main[i] for i in (sub0.inputs if sub0.inputs is not None else [])]
    outputs = [main[i] for i in (sub0.outputs if sub0.outputs is not None else [])]

    # Weight bytes: every constant buffer once (buffers can be shared by tensors).
    weight_bytes = int(sum(r.size for r in raw if r is not None))
    weight_dtypes: Counter[str] = Counter()
    seen: set[int] = set()
    for sub, st in zip(model.subgraphs, per_sub, strict=True):
        for t_raw, t in zip(sub.tensors or [], st, strict=True):
            if t.is_constant and t_raw.buffer not in seen:
                seen.add(t_raw.buffer)
                weight_dtypes[t.dtype] += t.buffer_bytes
    tensor_dtypes = Counter(t.dtype for t in tensors)
    op_counts = Counter(o.op for o in ops)
    macs_by_op: Counter[str] = Counter()
    for o in ops:
        if o.macs:
            macs_by_op[o.op] += o.macs

    quantization = _quantization_kind(tensors, weights)
    float_ops = _float_ops(ops, per_sub) if quantization in ("int8", "int16x8") else []
    description = model.description or b""
    if isinstance(description, bytes):
        description = description.decode(errors="replace")
    return TfliteGraph(
        size_bytes=len(data),
        version=int(model.version),
        description=description,
        subgraphs=len(per_sub),
        tensors=tensors,
        ops=ops,
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        weight_bytes=weight_bytes,
        graph_bytes=len(data) - weight_bytes,
        op_counts=dict(op_counts.most_common()),
        macs=int(sum(o.macs for o in ops)),
        quantization=quantization,
        float_ops=float_ops,
        custom_ops=sorted({o.op for o in ops if o.custom}),
        unknown_ops=sorted({o.op for o in ops if not o.known}),
        weight_dtypes=dict(weight_dtypes.most_common()),
        tensor_dtypes=dict(tensor_dtypes.most_common()),
        macs_by_op=dict(macs_by_op.most_common()),
    )


def _numel(shape: list[int]) -> int:
    return int(np.prod([max(d, 1) for d in shape])) if shape else 1


def _macs(op: OpInfo, tensors: list[TensorInfo]) -> int:
    """Multiply-accumulates of one op from its static shapes (batch taken as stored)."""
    try:
        if op.op in ("CONV_2D", "CONV_3D"):
            w = tensors[op.inputs[1]].shape  # [out, kh, kw, in] (3D: [kd, kh, kw, in, out])
            per_out = _numel(w[1:]) if op.op == "CONV_2D" else _numel(w[:-1])
            return _numel(tensors[op.outputs[0]].shape) * per_out
        if op.op == "DEPTHWISE_CONV_2D":
            w = tensors[op.inputs[1]].shape  # [1, kh, kw, out]
            return _numel(tensors[op.outputs[0]].shape) * w[1] * w[2]
        if op.op == "FULLY_CONNECTED":
            # [units, in]; a fake-quant graph leaves the weight shape unset, so fall back
            # to the input's last dimension.
            w = tensors[op.inputs[1]].shape or tensors[op.inputs[0]].shape
            return _numel(tensors[op.outputs[0]].shape) * w[-1]
        if op.op == "TRANSPOSE_CONV":
            w = tensors[op.inputs[1]].shape  # [out, kh, kw, in]; input 2 is the data
            return _numel(tensors[op.inputs[2]].shape) * w[0] * w[1] * w[2]
        if op.op == "BATCH_MATMUL":
            a = tensors[op.inputs[0]].shape
            return _numel(tensors[op.outputs[0]].shape) * (a[-1] if a else 1)
    except (IndexError, TypeError):
        return 0  # a malformed op still gets listed, just without an estimate
    return 0


def _source_constant(idx: int, producers: dict[int, OpInfo], tensors: list[TensorInfo]) -> int:
    """Follow DEQUANTIZE/DENSIFY/QUANTIZE back to the stored constant they unpack."""
    start = idx
    for _ in range(3):
        if tensors[idx].is_constant:
            return idx
        op = producers.get(idx)
        if op is None or op.op not in _UNPACK_OPS or not op.inputs:
            break
        idx = op.inputs[0]
    return idx if tensors[idx].is_constant else start


def _weights(ops, per_sub, raw) -> list[WeightInfo]:
    out = []
    producers_by_sub: list[dict[int, OpInfo]] = [{} for _ in per_sub]
    for op in ops:
        for o in op.outputs:
            producers_by_sub[op.subgraph][o] = op
    for op in ops:
        pos = _WEIGHT_INPUT.get(op.op)
        if pos is None or len(op.inputs) <= pos or op.inputs[pos] < 0:
            continue
        tensors = per_sub[op.subgraph]
        idx = _source_constant(op.inputs[pos], producers_by_sub[op.subgraph], tensors)
        t = tensors[idx]
        if not t.is_constant:
            continue
        numel = _numel(t.shape)
        zeros = _zero_fraction(t, raw[t.buffer], numel)
        out.append(
            WeightInfo(
                t.name, op.op, op.index, t.dtype, t.shape, t.buffer_bytes, zeros, t.sparse_encoded
            )
        )
    return out


def _zero_fraction(t: TensorInfo, payload: np.ndarray | None, numel: int) -> float:
    dtype = _NUMPY_DTYPE.get(t.dtype)
    if payload is None or dtype is None or numel == 0:
        return 0.0
    usable = payload.size - payload.size % np.dtype(dtype).itemsize
    values = np.frombuffer(payload[:usable].tobytes(), dtype=dtype)
    zero = 0
    if t.quant is not None and len(t.quant.zero_point) == 1:
        zero = t.quant.zero_point[0]
    nonzero = int(np.count_nonzero(values != zero))
    # A sparse-encoded tensor stores only (blocks of) non-zeros; the rest are implicit.
    return float(max(0.0, 1.0 - nonzero / numel))


def _quantization_kind(tensors: list[TensorInfo], weights: list[WeightInfo]) -> str:
    activations = [t for t in tensors if not t.is_constant]
    int_acts = [t for t in activations if t.dtype in _INTEGER_ACTIVATION_TYPES and t.quant]
    weight_types = {w.dtype for w in weights}
    if int_acts:
        return "int16x8" if any(t.dtype == "INT16" for t in int_acts) else "int8"
    if weight_types & {"INT8", "UINT8"}:
        return "dynamic"
    if "FLOAT16" in weight_types:
        return "float16"
    return "float32"


def _float_ops(ops: list[OpInfo], per_sub: list[list[TensorInfo]]) -> list[str]:
    """Ops that compute in float inside a model meant to be integer."""
    found = []
    for op in ops:
        if op.op in _BOUNDARY_OPS:
            continue
        tensors = per_sub[op.subgraph]
        live = [tensors[i] for i in op.inputs + op.outputs if i >= 0 and not tensors[i].is_constant]
        if any(t.dtype in _FLOAT_TYPES for t in live):
            found.append(f"{op.op}#{op.index}" + (f"@{op.subgraph}" if op.subgraph else ""))
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
    return "\n".join(lines)

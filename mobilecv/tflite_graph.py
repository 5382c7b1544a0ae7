"""Read a .tflite flatbuffer without TensorFlow: tensors, ops, buffers, per-op MACs.

This is mobilecv's one .tflite reader. `mobilecv.inspection` (what `mobilecv inspect`
prints: weights, sparsity, float ops, size breakdown) and `mobilecv.bench` (arena
planner, roofline estimate, verdict) both build on `load()`. The schema module ships
inside ai-edge-litert (and tflite-micro) and needs only the `flatbuffers` package, so
reading a model costs a fraction of a second and no TensorFlow import.

Every count and offset read from the file is checked before it is used: a truncated,
corrupt or garbage file raises InputError instead of looping or crashing.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from mobilecv.errors import InputError


@cache
def schema() -> ModuleType:
    """The flatbuffers-generated TFLite schema; LiteRT's copy needs no TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:  # pragma: no cover - depends on the installed runtime
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
        except ImportError:
            from tensorflow.lite.python import schema_py_generated as fb
    return fb


@cache
def enum_names(cls_name: str) -> dict[int, str]:
    """value -> name of one of the schema's enums (BuiltinOperator, TensorType, ...)."""
    cls = getattr(schema(), cls_name)
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


# Bytes per element of each TensorType (sub-byte types count as fractions) and the
# numpy dtype its stored values can be read as (None: no plain numpy equivalent).
_DTYPES: dict[str, tuple[float, type | None]] = {
    "float32": (4, np.float32),
    "float16": (2, np.float16),
    "float64": (8, np.float64),
    "bfloat16": (2, None),
    "int32": (4, np.int32),
    "uint32": (4, np.uint32),
    "int64": (8, np.int64),
    "uint64": (8, np.uint64),
    "int16": (2, np.int16),
    "uint16": (2, np.uint16),
    "int8": (1, np.int8),
    "uint8": (1, np.uint8),
    "bool": (1, np.bool_),
    "int4": (0.5, None),
    "int2": (0.25, None),
    "complex64": (8, None),
    "complex128": (16, None),
    "string": (1, None),
}

# Ops whose input 1 is a weight tensor: the multiply-accumulate kernels. Their MACs are
# the ones `mobilecv profile` counts; everything else is elementwise work or data movement.
WEIGHT_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL"}
)
_POOL_OPS = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D")


@dataclass(frozen=True)
class Tensor:
    index: int  # position in its subgraph's tensor list
    name: str
    dtype: str  # lower-case TensorType name: float32, int8, ...
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # as stored (-1 = unknown); empty when absent
    buffer: int
    constant: bool  # has data in the file (weights, biases, shape constants)
    variable: bool
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0
    subgraph: int = 0
    buffer_bytes: int = 0  # bytes of stored data (sparse-encoded: the encoded size)
    sparse_encoded: bool = False

    @property
    def elements(self) -> int:
        # Dynamic dimensions are stored as -1 in some files; count them as 1 (batch 1).
        return int(np.prod([d if d >= 0 else 1 for d in self.shape], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(np.ceil(self.elements * _DTYPES.get(self.dtype, (4, None))[0]))

    @property
    def numpy_dtype(self) -> type | None:
        return _DTYPES.get(self.dtype, (0, None))[1]

    @property
    def dynamic(self) -> bool:
        # A -1 in the batch position is how every Keras conversion looks; runtimes
        # run it as batch 1. Any other -1 means the shapes are only known at run time.
        return any(d < 0 for d in self.shape_signature[1:])


@dataclass(frozen=True)
class Op:
    index: int  # position in its subgraph's execution order
    opcode: str  # BuiltinOperator name, the custom code for CUSTOM ops, UNKNOWN_<n>
    builtin: bool  # False for CUSTOM ops
    version: int
    inputs: tuple[int, ...]  # tensor indices in the op's subgraph; -1 = optional, absent
    outputs: tuple[int, ...]
    macs: int  # multiply-accumulates, or element operations for elementwise ops
    options: dict = field(default_factory=dict, hash=False, compare=False)
    subgraph: int = 0
    known: bool = True  # False: a builtin code newer than this schema

    @property
    def custom(self) -> bool:
        return not self.builtin


@dataclass(frozen=True)
class Subgraph:
    index: int
    name: str
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]  # in execution order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """A parsed model. `tensors`, `ops`, `inputs`, `outputs` are the main subgraph's
    (what runs on invoke); control-flow bodies are in `subgraphs[1:]`."""

    path: str
    model_bytes: int
    version: int
    description: str
    subgraphs: tuple[Subgraph, ...]
    weight_bytes: int  # every non-empty buffer once (shared by tensors), metadata excluded
    buffers: tuple[np.ndarray | None, ...] = field(default=(), repr=False, compare=False)
    # Named metadata entries (name -> payload): the converter's own, and mobilecv's
    # "mobilecv" entry (see mobilecv.modelinfo).
    metadata: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # The main subgraph's outputs by signature name, in output order (what LiteRT's
    # get_output_details lists); () when the file has no signature.
    output_names: tuple[str, ...] = ()

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return self.subgraphs[0].tensors

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.subgraphs[0].ops

    @property
    def inputs(self) -> tuple[int, ...]:
        return self.subgraphs[0].inputs

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.subgraphs[0].outputs

    @property
    def all_ops(self) -> list[Op]:
        return [op for sg in self.subgraphs for op in sg.ops]

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def custom_ops(self) -> list[str]:
        return sorted({op.opcode for op in self.all_ops if not op.builtin})

    @property
    def dtypes(self) -> set[str]:
        """Dtypes of the activations (non-constant tensors) the runtime must handle."""
        return {t.dtype for t in self.tensors if not t.constant}

    @property
    def dynamic_inputs(self) -> list[str]:
        return [self.tensors[i].name for i in self.inputs if self.tensors[i].dynamic]

    def op_bytes(self, op: Op) -> int:
        """Bytes an op reads and writes once: all its inputs (weights too) and outputs."""
        tensors = self.subgraphs[op.subgraph].tensors
        return sum(tensors[i].nbytes for i in (*op.inputs, *op.outputs) if i >= 0)

    def data(self, tensor: Tensor) -> np.ndarray | None:
        """The stored bytes of a constant tensor (a read-only uint8 view), else None."""
        return self.buffers[tensor.buffer] if tensor.constant else None


def op_macs(opcode: str, ins: list[Tensor | None], outs: list[Tensor], options: dict) -> int:
    """Multiply-accumulates (or element operations for elementwise ops) of one op."""
    out = outs[0] if outs else None
    if out is None:
        return 0
    n_out = out.elements
    w = ins[1] if len(ins) > 1 else None
    if opcode == "CONV_2D" and w is not None and len(w.shape) == 4:  # [out, kh, kw, in]
        return n_out * w.shape[1] * w.shape[2] * w.shape[3]
    if opcode == "DEPTHWISE_CONV_2D" and w is not None and len(w.shape) == 4:  # [1, kh, kw, out]
        return n_out * w.shape[1] * w.shape[2]
    if opcode == "CONV_3D" and w is not None and len(w.shape) == 5:  # [kd, kh, kw, in, out]
        return n_out * int(np.prod(w.shape[:4]))
    if opcode == "FULLY_CONNECTED" and w is not None:
        # [units, in]; a fake-quant graph leaves the weight shape unset, so fall back
        # to the input's last dimension.
        shape = w.shape or (ins[0].shape if ins[0] is not None else ())
        return n_out * shape[-1] if shape else 0
    if opcode == "TRANSPOSE_CONV" and len(ins) > 2 and ins[1] is not None and ins[2] is not None:
        wt, x = ins[1], ins[2]  # weights [out, kh, kw, in]; input 2 is the data
        if len(wt.shape) == 4:
            return x.elements * wt.shape[0] * wt.shape[1] * wt.shape[2]
    if opcode == "BATCH_MATMUL" and ins and ins[0] is not None and len(ins[0].shape) >= 2:
        return n_out * ins[0].shape[-1]
    if opcode in _POOL_OPS and "filter" in options:
        fh, fw = options["filter"]
        return n_out * fh * fw
    if opcode in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        return ins[0].elements if ins and ins[0] is not None else n_out
    if opcode in ("SOFTMAX", "LOGISTIC", "TANH", "EXP", "LOG_SOFTMAX", "HARD_SWISH"):
        return 4 * n_out  # transcendental: a few multiply-adds per element
    # Elementwise arithmetic and activations: one operation per output element;
    # pure data movement (RESHAPE, CONCATENATION, PAD, QUANTIZE) counts zero MACs.
    if opcode in ("ADD", "SUB", "MUL", "DIV", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU",
                  "PRELU", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "RSQRT", "SQRT"):  # fmt: skip
        return n_out
    return 0


def load(source: str | os.PathLike | bytes | bytearray | memoryview) -> Graph:
    """Parse a .tflite model (path or bytes). Raises InputError for a missing, truncated,
    corrupt or non-TFLite file."""
    if isinstance(source, bytes | bytearray | memoryview):
        return parse(bytes(source), "model")
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .tflite file")
    return parse(path.read_bytes(), str(path))


def parse(data: bytes, name: str = "model") -> Graph:
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise InputError(f"{name}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
    try:
        return _parse(data, name)
    except InputError:
        raise
    except Exception as exc:  # flatbuffers raises whatever a bad offset produces
        raise InputError(
            f"{name}: corrupt or truncated .tflite file ({type(exc).__name__}: {exc})"
        ) from None


def _ints(getter, n: int) -> tuple[int, ...]:
    return tuple(int(getter(j)) for j in range(n))


def _options(op, fb, opcode: str) -> dict:
    """Decode the few builtin options the MAC count needs (pool filter size, strides)."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if opcode in _POOL_OPS:
        o = fb.Pool2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {"filter": (o.FilterHeight(), o.FilterWidth()), "stride": (o.StrideH(), o.StrideW())}
    if opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = fb.Conv2DOptions if opcode == "CONV_2D" else fb.DepthwiseConv2DOptions
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return {"stride": (o.StrideH(), o.StrideW())}
    return {}


def _parse(data: bytes, name: str) -> Graph:
    fb = schema()
    op_names = enum_names("BuiltinOperator")
    type_names = enum_names("TensorType")
    size = len(data)

    def corrupt(what: str) -> InputError:
        return InputError(f"{name}: corrupt or truncated .tflite file ({what})")

    def count(n: int, what: str) -> int:
        # Every vector element takes at least 4 bytes: a larger count is garbage, and
        # looping over it would take forever instead of failing.
        if n < 0 or n * 4 > size:
            raise corrupt(f"{what} count {n}")
        return n

    if struct.unpack_from("<I", data, 0)[0] >= size:
        raise corrupt("root offset past the end")
    model = fb.Model.GetRootAs(data, 0)
    if count(model.SubgraphsLength(), "subgraph") < 1:
        raise corrupt("model has no subgraphs")

    buffers: list[np.ndarray | None] = []
    for b in range(count(model.BuffersLength(), "buffer")):
        buf = model.Buffers(b)
        if buf.Offset() > 1:  # models over 2 GB keep weights after the flatbuffer
            start, n = int(buf.Offset()), int(buf.Size())
        else:
            n = buf.DataLength()
            start = buf._tab.Vector(buf._tab.Offset(4)) if n else 0
        # Check the payload's last byte: a truncated file fails here, not later.
        if start + n > size:
            raise corrupt(f"buffer {b} ends past the end of the file")
        buffers.append(np.frombuffer(data, np.uint8, count=n, offset=start) if n else None)

    codes = []
    for c in range(count(model.OperatorCodesLength(), "opcode")):
        oc = model.OperatorCodes(c)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == fb.BuiltinOperator.CUSTOM:
            custom = (oc.CustomCode() or b"").decode(errors="replace") or "CUSTOM"
            codes.append((custom, False, True, oc.Version()))
        elif code in op_names:
            codes.append((op_names[code], True, True, oc.Version()))
        else:
            codes.append((f"UNKNOWN_{code}", True, False, oc.Version()))

    subgraphs = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = []
        for t in range(count(sg.TensorsLength(), "tensor")):
            tt = sg.Tensors(t)
            q = tt.Quantization()
            scale: tuple[float, ...] = ()
            zp: tuple[int, ...] = ()
            qdim = 0
            if q is not None and q.ScaleLength():
                scale = tuple(float(q.Scale(j)) for j in range(count(q.ScaleLength(), "scale")))
                zp = _ints(q.ZeroPoint, count(q.ZeroPointLength(), "zero point")) or (0,) * len(
                    scale
                )
                qdim = int(q.QuantizedDimension())
            buf = tt.Buffer()
            if buf >= max(len(buffers), 1):
                raise corrupt(f"tensor {t} names buffer {buf} of {len(buffers)}")
            payload = buffers[buf] if buffers else None
            dtype = type_names.get(tt.Type(), f"TYPE_{tt.Type()}").lower()
            tensors.append(
                Tensor(
                    index=t,
                    name=(tt.Name() or b"").decode(errors="replace"),
                    dtype=dtype,
                    shape=_ints(tt.Shape, count(tt.ShapeLength(), "shape")),
                    shape_signature=_ints(
                        tt.ShapeSignature, count(tt.ShapeSignatureLength(), "shape signature")
                    ),
                    buffer=buf,
                    constant=payload is not None,
                    variable=bool(tt.IsVariable()),
                    scale=scale,
                    zero_point=zp,
                    quantized_dimension=qdim,
                    subgraph=s,
                    buffer_bytes=0 if payload is None else payload.size,
                    sparse_encoded=tt.Sparsity() is not None,
                )
            )

        n_t = len(tensors)
        ops = []
        for i in range(count(sg.OperatorsLength(), "operator")):
            o = sg.Operators(i)
            idx = o.OpcodeIndex()
            if idx >= len(codes):
                raise corrupt(f"op {i} has opcode index {idx} of {len(codes)}")
            opcode, builtin, known, version = codes[idx]
            ins = _ints(o.Inputs, count(o.InputsLength(), "input"))
            outs = _ints(o.Outputs, count(o.OutputsLength(), "output"))
            if any(j >= n_t for j in (*ins, *outs)):
                raise corrupt(f"op {i} names a missing tensor")
            options = _options(o, fb, opcode) if builtin and known else {}
            macs = op_macs(
                opcode,
                [tensors[j] if j >= 0 else None for j in ins],
                [tensors[j] for j in outs if j >= 0],
                options,
            )
            ops.append(Op(i, opcode, builtin, version, ins, outs, macs, options, s, known))

        inputs = _ints(sg.Inputs, count(sg.InputsLength(), "subgraph input"))
        outputs = _ints(sg.Outputs, count(sg.OutputsLength(), "subgraph output"))
        if any(not 0 <= j < n_t for j in (*inputs, *outputs)):
            raise corrupt(f"subgraph {s} input/output names a missing tensor")
        sg_name = (sg.Name() or b"").decode(errors="replace")
        subgraphs.append(Subgraph(s, sg_name, tuple(tensors), tuple(ops), inputs, outputs))

    metadata, metadata_buffers = {}, set()
    for m in range(count(model.MetadataLength(), "metadata")):
        entry = model.Metadata(m)
        if entry.Buffer() >= len(buffers):
            raise corrupt(f"metadata {m} names buffer {entry.Buffer()} of {len(buffers)}")
        payload = buffers[entry.Buffer()]
        key = (entry.Name() or b"").decode(errors="replace")
        metadata[key] = b"" if payload is None else payload.tobytes()
        metadata_buffers.add(entry.Buffer())

    return Graph(
        output_names=_output_names(model, subgraphs[0].outputs, count),
        path=name,
        model_bytes=size,
        version=int(model.Version()),
        description=(model.Description() or b"").decode(errors="replace"),
        subgraphs=tuple(subgraphs),
        weight_bytes=sum(
            b.size for i, b in enumerate(buffers) if b is not None and i not in metadata_buffers
        ),
        buffers=tuple(buffers),
        metadata=metadata,
    )


def _output_names(model, outputs: tuple[int, ...], count) -> tuple[str, ...]:
    """Names of the main subgraph's outputs from its signature (Keras output names)."""
    for i in range(count(model.SignatureDefsLength(), "signature")):
        signature = model.SignatureDefs(i)
        if signature.SubgraphIndex() != 0:
            continue
        by_tensor = {}
        for j in range(count(signature.OutputsLength(), "signature output")):
            entry = signature.Outputs(j)
            by_tensor[entry.TensorIndex()] = (entry.Name() or b"").decode(errors="replace")
        if set(by_tensor) == set(outputs):
            return tuple(by_tensor[t] for t in outputs)
    return ()


def rewrite(data: bytes, edit) -> bytes:
    """Unpack a model into the schema's object API, let `edit(model_t)` change it, repack.

    Used to add mobilecv's metadata entry (`mobilecv.modelinfo.add_to_tflite`) and to
    make test fixtures (custom ops, dynamic shapes) without TensorFlow.
    """
    import flatbuffers

    fb = schema()
    obj = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    edit(obj)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

"""Read a .tflite flatbuffer without TensorFlow: tensors, ops, buffers, per-op MACs.

The schema module ships inside ai-edge-litert (and tflite-micro); it only needs the
`flatbuffers` package. Everything the estimator and the verdict need comes from here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError


@cache
def schema():
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:  # pragma: no cover - fallback when only tflite-micro is installed
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    return fb


@cache
def _enum_names(cls_name: str) -> dict[int, str]:
    cls = getattr(schema(), cls_name)
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


# numpy dtype and byte size of each TensorType (INT4 packs two per byte: 0.5).
_DTYPES = {
    "FLOAT32": ("float32", 4),
    "FLOAT16": ("float16", 2),
    "FLOAT64": ("float64", 8),
    "BFLOAT16": ("bfloat16", 2),
    "INT32": ("int32", 4),
    "UINT32": ("uint32", 4),
    "INT64": ("int64", 8),
    "UINT64": ("uint64", 8),
    "INT16": ("int16", 2),
    "UINT16": ("uint16", 2),
    "INT8": ("int8", 1),
    "UINT8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "INT4": ("int4", 0.5),
    "COMPLEX64": ("complex64", 8),
    "STRING": ("string", 1),
}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str  # lower-case TensorType name: float32, int8, ...
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    buffer: int
    constant: bool  # has data in the flatbuffer (weights, biases)
    variable: bool
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return int(np.ceil(self.elements * _DTYPES.get(self.dtype.upper(), ("", 4))[1]))

    @property
    def dynamic(self) -> bool:
        # A -1 in the batch position is how every Keras conversion looks; runtimes
        # run it as batch 1. Any other -1 means the shapes are only known at run time.
        return any(d < 0 for d in self.shape_signature[1:])


@dataclass(frozen=True)
class Op:
    index: int
    opcode: str  # BuiltinOperator name, or the custom code for CUSTOM ops
    builtin: bool
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    macs: int
    options: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Graph:
    path: str
    model_bytes: int
    version: int
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]  # subgraph 0 in execution order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    weight_bytes: int

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def custom_ops(self) -> list[str]:
        return sorted({op.opcode for op in self.ops if not op.builtin})

    @property
    def dtypes(self) -> set[str]:
        """Dtypes of the activations (non-constant tensors) the runtime must handle."""
        return {t.dtype for t in self.tensors if not t.constant}

    @property
    def dynamic_inputs(self) -> list[str]:
        return [self.tensors[i].name for i in self.inputs if self.tensors[i].dynamic]

    def op_bytes(self, op: Op) -> int:
        """Bytes an op reads and writes once: all its inputs (weights too) and outputs."""
        ids = [i for i in (*op.inputs, *op.outputs) if i >= 0]
        return sum(self.tensors[i].nbytes for i in ids)


def _ints(getter, n: int) -> tuple[int, ...]:
    return tuple(int(getter(j)) for j in range(n))


def _options(op, fb, opcode: str) -> dict:
    """Decode the few builtin options the MAC count needs (pool filter size, strides)."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"):
        o = fb.Pool2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {"filter": (o.FilterHeight(), o.FilterWidth()), "stride": (o.StrideH(), o.StrideW())}
    if opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = fb.Conv2DOptions if opcode == "CONV_2D" else fb.DepthwiseConv2DOptions
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return {"stride": (o.StrideH(), o.StrideW())}
    return {}


def op_macs(opcode: str, ins: list[Tensor | None], outs: list[Tensor], options: dict) -> int:
    """Multiply-accumulates (or element operations for elementwise ops) of one op."""
    out = outs[0] if outs else None
    if out is None:
        return 0
    n_out = out.elements
    w = ins[1] if len(ins) > 1 else None
    if opcode == "CONV_2D" and w is not None and len(w.shape) == 4:
        return n_out * w.shape[1] * w.shape[2] * w.shape[3]
    if opcode == "DEPTHWISE_CONV_2D" and w is not None and len(w.shape) == 4:
        return n_out * w.shape[1] * w.shape[2]
    if opcode == "CONV_3D" and w is not None and len(w.shape) == 5:
        return n_out * int(np.prod(w.shape[:4]))
    if opcode == "FULLY_CONNECTED" and w is not None and len(w.shape) == 2:
        return n_out * w.shape[1]
    if opcode == "TRANSPOSE_CONV" and len(ins) > 2 and ins[1] is not None and ins[2] is not None:
        wt, x = ins[1], ins[2]
        if len(wt.shape) == 4:
            return x.elements * wt.shape[0] * wt.shape[1] * wt.shape[2]
    if opcode == "BATCH_MATMUL" and ins and ins[0] is not None and len(ins[0].shape) >= 2:
        return n_out * ins[0].shape[-1]
    if opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D") and "filter" in options:
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


def load(path: str | os.PathLike) -> Graph:
    """Parse a .tflite file. Raises InputError for a missing, truncated or non-TFLite file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .tflite file")
    data = path.read_bytes()
    return parse(data, str(path))


def parse(data: bytes, name: str = "<bytes>") -> Graph:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InputError(f"{name}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
    try:
        return _parse(data, name)
    except InputError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{name}: corrupt or truncated .tflite file ({exc})") from None


def _parse(data: bytes, name: str) -> Graph:
    fb = schema()
    ops_names = _enum_names("BuiltinOperator")
    type_names = _enum_names("TensorType")
    size = len(data)
    root = struct.unpack_from("<I", data, 0)[0]
    if root >= size:
        raise InputError(f"{name}: corrupt or truncated .tflite file (root offset past the end)")
    model = fb.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise InputError(f"{name}: corrupt .tflite file (model has no subgraphs)")

    def count(n: int, what: str) -> int:
        # Every vector element takes at least 4 bytes: a larger count is garbage, and
        # looping over it would take forever instead of failing.
        if n < 0 or n * 4 > size:
            raise InputError(f"{name}: corrupt .tflite file ({what} count {n})")
        return n

    count(model.SubgraphsLength(), "subgraph")

    buffer_bytes: list[int] = []
    for b in range(count(model.BuffersLength(), "buffer")):
        buf = model.Buffers(b)
        n = buf.DataLength()
        if n == 0 and buf.Size() > 0:  # weights stored after the flatbuffer (>2 GB models)
            n = int(buf.Size())
            if buf.Offset() + n > size:
                raise InputError(f"{name}: corrupt or truncated .tflite file (buffer {b})")
        elif n:
            # Touch the vector's last byte: a truncated file fails here, not later.
            start = buf._tab.Vector(buf._tab.Offset(4))
            if start + n > size:
                raise InputError(f"{name}: corrupt or truncated .tflite file (buffer {b})")
        buffer_bytes.append(n)

    codes = []
    for c in range(count(model.OperatorCodesLength(), "opcode")):
        oc = model.OperatorCodes(c)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == fb.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(((custom or b"?").decode(errors="replace"), False, oc.Version()))
        else:
            codes.append((ops_names.get(code, f"BUILTIN_{code}"), True, oc.Version()))

    sg = model.Subgraphs(0)
    tensors = []
    for t in range(count(sg.TensorsLength(), "tensor")):
        tt = sg.Tensors(t)
        shape = _ints(tt.Shape, count(tt.ShapeLength(), "shape"))
        sig = _ints(tt.ShapeSignature, tt.ShapeSignatureLength()) or shape
        q = tt.Quantization()
        scale: tuple[float, ...] = ()
        zp: tuple[int, ...] = ()
        if q is not None and q.ScaleLength():
            scale = tuple(float(q.Scale(j)) for j in range(q.ScaleLength()))
            zp = _ints(q.ZeroPoint, q.ZeroPointLength())
        buf = tt.Buffer()
        if buf >= len(buffer_bytes):
            raise InputError(f"{name}: corrupt .tflite file (tensor {t} names buffer {buf})")
        tensors.append(
            Tensor(
                index=t,
                name=(tt.Name() or b"").decode(errors="replace"),
                dtype=type_names.get(tt.Type(), f"type{tt.Type()}").lower(),
                shape=shape,
                shape_signature=sig,
                buffer=buf,
                constant=buffer_bytes[buf] > 0,
                variable=bool(tt.IsVariable()),
                scale=scale,
                zero_point=zp,
            )
        )

    ops = []
    n_t = len(tensors)
    for i in range(count(sg.OperatorsLength(), "operator")):
        o = sg.Operators(i)
        idx = o.OpcodeIndex()
        if idx >= len(codes):
            raise InputError(f"{name}: corrupt .tflite file (op {i} has opcode index {idx})")
        opcode, builtin, version = codes[idx]
        ins = _ints(o.Inputs, count(o.InputsLength(), "input"))
        outs = _ints(o.Outputs, count(o.OutputsLength(), "output"))
        if any(j >= n_t for j in (*ins, *outs)):
            raise InputError(f"{name}: corrupt .tflite file (op {i} names a missing tensor)")
        options = _options(o, fb, opcode) if builtin else {}
        macs = op_macs(
            opcode,
            [tensors[j] if j >= 0 else None for j in ins],
            [tensors[j] for j in outs if j >= 0],
            options,
        )
        ops.append(Op(i, opcode, builtin, version, ins, outs, macs, options))

    weight_bytes = sum(buffer_bytes[t.buffer] for t in tensors if t.constant)
    return Graph(
        path=name,
        model_bytes=size,
        version=model.Version(),
        tensors=tuple(tensors),
        ops=tuple(ops),
        inputs=_ints(sg.Inputs, sg.InputsLength()),
        outputs=_ints(sg.Outputs, sg.OutputsLength()),
        subgraphs=model.SubgraphsLength(),
        weight_bytes=weight_bytes,
    )


def rewrite(data: bytes, edit) -> bytes:
    """Unpack a model into the schema's object API, let `edit(model_t)` change it, repack.

    Used to make test fixtures (custom ops, dynamic shapes) without TensorFlow.
    """
    import flatbuffers

    fb = schema()
    obj = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    edit(obj)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

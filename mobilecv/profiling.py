"""Per-layer cost of a Keras model: parameters, MACs, activation memory.

MACs are multiply-accumulates of convolution (1D/2D/3D, grouped, depthwise, separable,
transposed) and Dense layers at batch 1; every other layer counts zero, the convention of
the MobileNet and EfficientNet papers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

BYTES_PER_ELEMENT = {"float32": 4, "int8": 1}


@dataclass(frozen=True)
class LayerProfile:
    name: str
    type: str
    output_shape: list
    params: int
    macs: int


@dataclass(frozen=True)
class Profile:
    name: str
    input_shape: list
    params: int
    trainable_params: int
    macs: int
    activation_bytes: int
    activation_bytes_int8: int
    layers: list[LayerProfile] = field(default_factory=list)
    width: float | None = None
    depth: float | None = None
    resolution: int | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        order = [
            "name",
            "width",
            "depth",
            "resolution",
            "input_shape",
            "params",
            "trainable_params",
            "macs",
            "activation_bytes",
            "activation_bytes_int8",
            "layers",
        ]
        return {key: data[key] for key in order}


def _unwrap(layer):
    # tfmot wrappers (prune, cluster, quantize) hold the real layer in .layer
    while hasattr(layer, "layer") and type(layer).__name__.endswith(
        ("Wrapper", "WrapperV2", "LowMagnitude", "ClusterWeights")
    ):
        layer = layer.layer
    return layer


def _shape(tensor) -> list:
    return [None if d is None else int(d) for d in tensor.shape]


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _as_list(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _as_list(v)]
    return [value]


def _elements(shape: list) -> int:
    return math.prod(d for d in shape[1:] if d is not None)


def layer_macs(layer) -> int:
    """MACs of one layer at batch 1 (0 for layers that do no multiply-accumulates)."""
    layer = _unwrap(layer)
    kind = type(layer).__name__
    if hasattr(layer, "layers") and layer.layers and hasattr(layer, "inputs"):
        return sum(layer_macs(sub) for sub in layer.layers)
    try:
        out_shape = _shape(layer.output)
        in_shape = _shape(_as_list(layer.input)[0])
    except (AttributeError, ValueError, IndexError):
        return 0
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        kernel = math.prod(layer.kernel_size)
        cin = in_shape[-1] // getattr(layer, "groups", 1)
        return _elements(out_shape) * kernel * cin
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return _elements(out_shape) * math.prod(layer.kernel_size)
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        depthwise_out = _elements(out_shape[:-1] + [in_shape[-1] * layer.depth_multiplier])
        pointwise = _elements(out_shape) * in_shape[-1] * layer.depth_multiplier
        return depthwise_out * math.prod(layer.kernel_size) + pointwise
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return _elements(in_shape) * math.prod(layer.kernel_size) * out_shape[-1]
    if kind == "Dense":
        return _elements(out_shape) * in_shape[-1]
    return 0


def _peak_activation_elements(model) -> int:
    """Largest total of tensors alive at once, walking layers in topological order.

    A tensor is alive from the layer that produces it to its last consumer; model
    outputs stay alive to the end.
    """
    layers = model.layers
    produced_at: dict[int, int] = {}
    size: dict[int, int] = {}
    last_use: dict[int, int] = {}
    keep = []  # hold the tensors so their ids stay unique
    for index, layer in enumerate(layers):
        for tensor in _as_list(getattr(layer, "output", None)):
            keep.append(tensor)
            produced_at.setdefault(id(tensor), index)
            size[id(tensor)] = _elements(_shape(tensor))
            last_use.setdefault(id(tensor), index)
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            inputs = _as_list(layer.input)
        except (AttributeError, ValueError):
            inputs = []
        for tensor in inputs:
            keep.append(tensor)
            last_use[id(tensor)] = max(last_use.get(id(tensor), index), index)
    end = len(layers)
    for tensor in _as_list(model.outputs):
        last_use[id(tensor)] = end
    peak = 0
    for step in range(len(layers)):
        live = sum(
            size[t] for t in size if produced_at[t] <= step <= last_use.get(t, produced_at[t])
        )
        peak = max(peak, live)
    return peak


def _count(weights) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def profile(
    model, *, name: str | None = None, width: float | None = None, depth: float | None = None
) -> Profile:
    """Profile any Keras functional or sequential model (tf_keras or Keras 3)."""
    rows = []
    for layer in model.layers:
        try:
            out_shape = _shape(_as_list(layer.output)[0])
        except (AttributeError, ValueError, IndexError):
            out_shape = []
        rows.append(
            LayerProfile(
                name=layer.name,
                type=type(_unwrap(layer)).__name__,
                output_shape=out_shape,
                params=_count(layer.weights),
                macs=layer_macs(layer),
            )
        )
    input_shape = _shape(_as_list(model.inputs)[0]) if model.inputs else []
    peak = _peak_activation_elements(model)
    spatial = input_shape[1] if len(input_shape) > 2 else None
    return Profile(
        name=name or model.name,
        width=width,
        depth=depth,
        resolution=spatial,
        input_shape=input_shape,
        params=_count(model.weights),
        trainable_params=_count(model.trainable_weights),
        macs=sum(row.macs for row in rows),
        activation_bytes=peak * BYTES_PER_ELEMENT["float32"],
        activation_bytes_int8=peak * BYTES_PER_ELEMENT["int8"],
        layers=rows,
    )


def format_table(prof: Profile, top: int | None = None) -> str:
    """A readable per-layer table with totals."""
    rows = prof.layers if top is None else sorted(prof.layers, key=lambda r: -r.macs)[:top]
    name_w = max([len(r.name) for r in rows] + [5])
    type_w = max([len(r.type) for r in rows] + [4])
    lines = [f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output':<18} {'params':>12} {'MACs':>15}"]
    for r in rows:
        shape = "x".join("?" if d is None else str(d) for d in r.output_shape[1:])
        lines.append(
            f"{r.name:<{name_w}}  {r.type:<{type_w}}  {shape:<18} {r.params:>12,} {r.macs:>15,}"
        )
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{'total':<{name_w}}  {'':<{type_w}}  {'':<18} {prof.params:>12,} {prof.macs:>15,}"
    )
    lines.append(
        f"trainable params {prof.trainable_params:,}; peak activations "
        f"{prof.activation_bytes:,} B float32, {prof.activation_bytes_int8:,} B int8 (batch 1)"
    )
    return "\n".join(lines)

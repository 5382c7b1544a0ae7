"""Per-layer cost of a Keras model: parameters, MACs, activation memory.

MACs are multiply-accumulates of convolution (1D/2D/3D, grouped, depthwise, separable,
transposed) and Dense layers at batch 1; every other layer counts zero, the convention of
the MobileNet and EfficientNet papers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mobilecv.arch import output_size

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


TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
# Layers with a sliding window: their output size is arch.output_size of the input's.
WINDOWED = (
    *(f"{kind}{d}D" for kind in ("Conv", "DepthwiseConv", "SeparableConv") for d in (1, 2, 3)),
    *TRANSPOSED,
    *(f"{kind}{d}D" for kind in ("MaxPooling", "AveragePooling") for d in (1, 2, 3)),
)


def _tuple(value, rank: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * rank


def windowed_shape(layer, in_shape: list, keras_shape: list) -> list:
    """A sliding-window layer's output shape by arch.output_size (the one formula for
    convolutions, transposed convolutions and pooling), channels from Keras; any other
    layer, or a size Keras leaves open, keeps ``keras_shape``."""
    layer = _unwrap(layer)
    padding = str(getattr(layer, "padding", "")).lower()
    spatial = in_shape[1:-1]
    if type(layer).__name__ not in WINDOWED or padding not in ("same", "valid"):
        return keras_shape
    if None in spatial or len(keras_shape) != len(in_shape):
        return keras_shape
    rank = len(spatial)
    kernel = _tuple(getattr(layer, "kernel_size", None) or layer.pool_size, rank)
    strides = _tuple(layer.strides, rank)
    dilation = _tuple(getattr(layer, "dilation_rate", 1), rank)
    transposed = type(layer).__name__ in TRANSPOSED
    extra = _tuple(getattr(layer, "output_padding", None), rank) if transposed else (None,) * rank
    sizes = [
        output_size(n, k, s, padding, transposed=transposed, output_padding=p, dilation=d)
        for n, k, s, p, d in zip(spatial, kernel, strides, extra, dilation, strict=True)
    ]
    return [keras_shape[0], *sizes, keras_shape[-1]]


def layer_macs(layer) -> int:
    """MACs of one layer at batch 1 (0 for layers that do no multiply-accumulates).

    A transposed convolution counts as the convolution it transposes (the gradient of a
    convolution from its output to its input): every input value times every kernel tap
    and output channel, in_h * in_w * cin * kh * kw * cout, as fvcore and ptflops count it.
    Taps that land in the cropped border ("same", or explicit padding) count too, as a
    convolution's taps on its zero padding do.
    """
    layer = _unwrap(layer)
    kind = type(layer).__name__
    if hasattr(layer, "layers") and layer.layers and hasattr(layer, "inputs"):
        return sum(layer_macs(sub) for sub in layer.layers)
    try:
        in_shape = _shape(_as_list(layer.input)[0])
        out_shape = windowed_shape(layer, in_shape, _shape(layer.output))
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
    if kind in TRANSPOSED:
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
            out_shape = windowed_shape(layer, _shape(_as_list(layer.input)[0]), out_shape)
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

"""Per-layer cost of a Keras model: parameters, MACs, activation memory, receptive fields.

MACs are multiply-accumulates of convolution (1D/2D/3D, grouped, depthwise, separable,
transposed) and Dense layers at batch 1; every other layer counts zero, the convention of
the MobileNet and EfficientNet papers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mobilecv.arch import Field, merge_fields, output_size, same_pad_before, window_field

BYTES_PER_ELEMENT = {"float32": 4, "int8": 1}


@dataclass(frozen=True)
class LayerProfile:
    name: str
    type: str
    output_shape: list
    params: int
    macs: int
    # Per spatial input axis (H, W, ...), in input pixels; None where the field is not one
    # grid (see receptive_fields).
    receptive_field: list | None = None
    jump: list | None = None
    start: list | None = None


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


# Receptive fields (Araujo et al., "Computing receptive fields of convolutional neural
# networks", Distill 2019): each layer's own window chained from the input by Field.then.
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
COLLAPSE = ("Flatten", *(f"Global{k}Pooling{d}D" for k in ("Average", "Max") for d in (1, 2, 3)))
Fields = tuple[Field, ...] | None  # one Field per spatial input axis, None: not one grid


def _pairs(value, rank: int) -> list[tuple[int, int]]:
    """ZeroPadding's / Cropping's amounts as (before, after) per axis."""
    if isinstance(value, int):
        return [(value, value)] * rank
    if rank == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [tuple(value)]
    return [(v, v) if isinstance(v, int) else tuple(v) for v in value]


def _pad_before(layer, padding: str, size, kernel: int, stride: int, dilation: int, out_size):
    if padding == "causal":
        return (kernel - 1) * dilation
    if padding != "same":
        return 0
    if type(layer).__name__ in TRANSPOSED:  # the zeros of the convolution it transposes
        return same_pad_before(out_size, kernel, stride, dilation)
    return same_pad_before(size, kernel, stride, dilation)


def _window_fields(layer, in_shape: list, out_shape: list) -> list[Field]:
    rank = len(in_shape) - 2
    kernel = _tuple(getattr(layer, "kernel_size", None) or layer.pool_size, rank)
    strides = _tuple(layer.strides, rank)
    dilation = _tuple(getattr(layer, "dilation_rate", 1), rank)
    padding = str(layer.padding).lower()
    transposed = type(layer).__name__ in TRANSPOSED
    return [
        window_field(
            k,
            s,
            _pad_before(layer, padding, n, k, s, d, m),
            dilation=d,
            transposed=transposed,
        )
        for k, s, d, n, m in zip(
            kernel, strides, dilation, in_shape[1:-1], out_shape[1:-1], strict=True
        )
    ]


def _upsampling_fields(layer, rank: int) -> list[Field]:
    """Nearest: output unit i copies input i // u; bilinear (half-pixel centres) mixes two
    neighbours. The first output unit's centre is 0.5 / u - 0.5 input units."""
    taps = 2 if getattr(layer, "interpolation", "nearest") != "nearest" else 1
    return [Field(taps, 1 / u, 0.5 / u - 0.5) for u in _tuple(layer.size, rank)]


def _own_fields(layer, in_shape: list, out_shape: list) -> list[Field] | None:
    """A single-input layer's own field per axis; [] for a layer that keeps its input's
    (elementwise, normalisation, Dense on a flat input); None for an unknown size."""
    kind = type(layer).__name__
    rank = len(in_shape) - 2
    if kind in WINDOWED:
        return _window_fields(layer, in_shape, out_shape)
    if kind.startswith("ZeroPadding"):
        return [window_field(1, 1, before) for before, _ in _pairs(layer.padding, rank)]
    if kind.startswith("Cropping"):
        return [window_field(1, 1, -before) for before, _ in _pairs(layer.cropping, rank)]
    if kind.startswith("UpSampling"):
        return _upsampling_fields(layer, rank)
    if kind in COLLAPSE and rank > 0:  # one unit sees every position left
        if None in in_shape[1:-1]:
            return None
        return [window_field(n, n) for n in in_shape[1:-1]]
    return []


def _is_gate(tensor, out_shape: list) -> bool:
    """A merge input broadcast over space (squeeze-excite's 1x1 gate): it rescales
    channels; counting it would make every field the whole image."""
    shape = _shape(tensor)
    return len(shape) < len(out_shape) or (
        all(d == 1 for d in shape[1:-1]) and any(d != 1 for d in out_shape[1:-1])
    )


def _merge(inputs: list, fields: list[Fields], out_shape: list) -> Fields:
    chosen = [f for t, f in zip(inputs, fields, strict=True) if not _is_gate(t, out_shape)]
    if not chosen or None in chosen:
        return None
    merged = tuple(merge_fields(axis) for axis in zip(*chosen, strict=True))
    return None if None in merged else merged


def _layer_fields(layer, inputs: list, fields: list[Fields], out_shape: list) -> Fields:
    layer = _unwrap(layer)
    if type(layer).__name__ in MERGES:
        return _merge(inputs, fields, out_shape)
    before = fields[0] if fields else None
    if before is None:
        return None
    if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested model
        own = _output_fields(layer)
    else:
        own = _own_fields(layer, _shape(inputs[0]), out_shape)
    if own is None or (own and len(own) != len(before)):
        return None
    return tuple(f.then(o) for f, o in zip(before, own, strict=True)) if own else before


def _walk(model) -> tuple[dict[str, Fields], dict[int, Fields], list]:
    """Fields by layer name and by tensor id (and the tensors, to keep their ids unique)."""
    by_tensor: dict[int, Fields] = {}
    keep = list(_as_list(model.inputs))
    for tensor in keep:
        by_tensor[id(tensor)] = (Field(),) * len(_shape(tensor)[2:])
    by_layer: dict[str, Fields] = {}
    for layer in model.layers:
        try:
            inputs, outputs = _as_list(layer.input), _as_list(layer.output)
        except (AttributeError, ValueError):
            by_layer[layer.name] = None
            continue
        keep += inputs + outputs
        if type(layer).__name__ == "InputLayer":
            fields = by_tensor.get(id(outputs[0]), (Field(),) * len(_shape(outputs[0])[2:]))
        else:
            in_fields = [by_tensor.get(id(t)) for t in inputs]
            fields = _layer_fields(layer, inputs, in_fields, _shape(outputs[0]))
        for tensor in outputs:
            by_tensor[id(tensor)] = fields
        by_layer[layer.name] = fields
    return by_layer, by_tensor, keep


def _output_fields(model) -> list[Field] | None:
    """A nested model's own field: its (first) output's, from a fresh grid at its input."""
    _, by_tensor, _keep = _walk(model)
    fields = by_tensor.get(id(_as_list(model.outputs)[0]))
    return None if fields is None else list(fields)


def receptive_fields(model) -> dict[str, Fields]:
    """Each layer's receptive field (size, jump, start per spatial input axis) by name.

    Convolutions (1D/2D/3D, dilated, depthwise, separable), pooling, ZeroPadding, Cropping
    and nested models chain their window (:func:`mobilecv.arch.window_field`); transposed
    convolutions and UpSampling divide the jump (the largest field of their output units);
    Flatten and global pooling take every position left; merges take the union of their
    inputs' fields, skipping squeeze-excite gates broadcast over space. None where the
    inputs' jumps differ, or a size the field needs is unknown. Other layers keep their
    input's field.
    """
    return _walk(model)[0]


def _count(weights) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 4)


def _field_columns(fields: Fields) -> dict:
    if fields is None:
        return {}
    return {
        "receptive_field": [_number(f.size) for f in fields],
        "jump": [_number(f.jump) for f in fields],
        "start": [_number(f.start) for f in fields],
    }


def profile(
    model, *, name: str | None = None, width: float | None = None, depth: float | None = None
) -> Profile:
    """Profile any Keras functional or sequential model (tf_keras or Keras 3)."""
    rows = []
    fields = receptive_fields(model)
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
                **_field_columns(fields.get(layer.name)),
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


def _axes(values: list | None) -> str:
    """One figure when every axis agrees (square fields), else H x W (x D)."""
    if not values:
        return "-"
    text = [f"{v:g}" for v in values]
    return text[0] if len(set(text)) == 1 else "x".join(text)


def format_table(prof: Profile, top: int | None = None) -> str:
    """A readable per-layer table with totals; RF, jump and start are the receptive field
    in input pixels (see receptive_fields)."""
    rows = prof.layers if top is None else sorted(prof.layers, key=lambda r: -r.macs)[:top]
    name_w = max([len(r.name) for r in rows] + [5])
    type_w = max([len(r.type) for r in rows] + [4])
    lines = [
        f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output':<18} {'params':>12} {'MACs':>15}"
        f" {'RF':>9} {'jump':>7} {'start':>9}"
    ]
    for r in rows:
        shape = "x".join("?" if d is None else str(d) for d in r.output_shape[1:])
        lines.append(
            f"{r.name:<{name_w}}  {r.type:<{type_w}}  {shape:<18} {r.params:>12,} {r.macs:>15,}"
            f" {_axes(r.receptive_field):>9} {_axes(r.jump):>7} {_axes(r.start):>9}"
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

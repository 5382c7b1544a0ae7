"""Sliding windows made convolutional (Sermanet et al., "OverFeat: Integrated Recognition,
Localization and Detection using Convolutional Networks", ICLR 2014; the course's
"convolutional implementation of sliding windows").

A classifier trained on W x W windows, whose conv trunk ends in Flatten + Dense (or global
pooling + Dense), is rewritten with the same weights as an all-convolutional model:

- the first Dense after Flatten becomes a Conv2D whose kernel covers the whole f x f
  feature map it saw (Keras' Flatten is row-major over h, w, c, so the (f*f*c, units)
  kernel reshapes to (f, f, c, units));
- later Dense layers become 1x1 Conv2Ds; activations (softmax over the last axis),
  Dropout and BatchNormalization carry over;
- GlobalAveragePooling2D / GlobalMaxPooling2D becomes an f x f pooling at stride 1.

On a larger image the model returns the whole grid of window results in one pass: cell
(i, j) is the window network run on the crop whose top-left corner is (i * S, j * S),
where S is the product of the trunk's strides. The trunk computes every overlapping
region once instead of once per window; that is where the saving comes from. The result
is exact (to float rounding) when no trunk layer pads (valid convolutions and pooling):
padding sees the image's border, not each crop's, so cells next to a crop border differ.
`WindowGeometry.exact` says which case a model is in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mobilecv import arch
from mobilecv._tf import get_keras, is_keras3_model
from mobilecv.errors import InputError

# Trunk layers with a kernel, a stride and a padding mode (the window geometry).
SPATIAL = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D")
# Trunk layers that add (ZeroPadding2D) or remove (Cropping2D) border pixels.
BORDER = ("ZeroPadding2D", "Cropping2D")
# Layers that act on each value alone, or on the channels at one position (both kinds of
# layer run on a feature map of any size, and on the last axis of a head's vector).
ACTIVATIONS = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")
NOISE = ("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout")
POSITIONWISE = (
    *ACTIVATIONS,
    *NOISE,
    "SpatialDropout2D",
    "BatchNormalization",
    "Normalization",
    "Rescaling",
    "LocalResponseNorm",
    "ChannelZeroPad",
)
MERGES = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average", "Concatenate")
TRUNK = SPATIAL + BORDER + POSITIONWISE + MERGES
# Trunk layers with an axis, which must be the channels for the layer to slide.
CHANNEL_AXIS = ("BatchNormalization", "Normalization", "Softmax", "Concatenate")
# Where the fully connected head starts, and what the start becomes.
HEAD_STARTS = {
    "Flatten": None,
    "GlobalAveragePooling2D": "AveragePooling2D",
    "GlobalMaxPooling2D": "MaxPooling2D",
}
# Head layers that act on the last axis only (besides Dense).
HEAD_PASS = (*ACTIVATIONS, *NOISE, "BatchNormalization")
NO_FLATTEN_HINT = "the head must be Flatten or GlobalAveragePooling2D followed by Dense layers"


Pair = tuple[int, int]


@dataclass(frozen=True)
class _SizeStep:
    """How one trunk layer maps a spatial size: valid/same kernel + stride, or a border."""

    kernel: Pair = (1, 1)  # effective (dilated) kernel
    stride: Pair = (1, 1)
    padding: str = "valid"
    border: Pair = (0, 0)  # pixels added (zero padding) or removed (< 0, cropping) per axis

    def apply(self, size: Pair) -> Pair:
        out = []
        for n, k, s, b in zip(size, self.kernel, self.stride, self.border, strict=True):
            try:
                out.append(arch.output_size(n + b, k, s, self.padding))
            except InputError:
                out.append(0)  # grid() names the image that is smaller than a window
        return (out[0], out[1])


@dataclass(frozen=True)
class WindowGeometry:
    """Where the windows of a window classifier fall on a larger image.

    window: the classifier's input size (h, w); stride: the product of the trunk's
    strides, the step between neighbouring windows; feature: the trunk's output size at the
    window, the kernel of the head's first convolution; exact: every cell equals the
    classifier run on its crop (no trunk layer pads).
    """

    window: Pair
    stride: Pair
    feature: Pair
    exact: bool
    steps: tuple[_SizeStep, ...] = field(default=(), repr=False)

    def feature_size(self, image: int | Pair) -> Pair:
        size = as_size(image)
        for step in self.steps:
            size = step.apply(size)
        return size

    def grid(self, image: int | Pair) -> Pair:
        """Rows and columns of window results the convolutional model gives on `image`."""
        fh, fw = self.feature_size(image)
        rows, cols = fh - self.feature[0] + 1, fw - self.feature[1] + 1
        if rows < 1 or cols < 1:
            h, w = as_size(image)
            raise InputError(
                f"a {h}x{w} image is smaller than one {self.window[0]}x{self.window[1]} window"
            )
        return rows, cols

    def origin(self, row: int, col: int) -> Pair:
        """Top-left pixel of the crop that grid cell (row, col) stands for."""
        return row * self.stride[0], col * self.stride[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "stride": list(self.stride),
            "feature": list(self.feature),
            "exact": self.exact,
        }


def as_size(image: int | Pair | str) -> Pair:
    """An image size from 28, (28, 40) or "28x40"."""
    if isinstance(image, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", image)
        if not match:
            raise InputError(f"image size must be N or HxW, e.g. 28 or 28x40; got {image!r}")
        image = (int(match[1]), int(match[2] or match[1]))
    if isinstance(image, int):
        image = (image, image)
    if len(image) != 2 or not all(isinstance(d, int) and d > 0 for d in image):
        raise InputError(f"image size must be two positive integers, got {image!r}")
    return (image[0], image[1])


# --------------------------------------------------------------------------- the graph


def _kind(layer) -> str:
    return type(layer).__name__


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _node_io(layer) -> tuple[list, list]:
    """(inputs, outputs) of the layer's first call, in either Keras."""
    if hasattr(layer, "get_input_at"):  # tf_keras
        return _as_list(layer.get_input_at(0)), _as_list(layer.get_output_at(0))
    node = layer._inbound_nodes[0]  # Keras 3
    return list(node.input_tensors), list(node.output_tensors)


@dataclass
class _Graph:
    """A model's layers with the tensors of their first call, and who produces what."""

    model: Any
    io: dict[int, tuple[list, list]]  # id(layer) -> (inputs, outputs)
    producer: dict[int, Any]  # id(tensor) -> layer
    consumers: dict[int, int]  # id(tensor) -> number of consuming layers

    @classmethod
    def of(cls, model) -> _Graph:
        io, producer, consumers = {}, {}, {}
        for layer in model.layers:
            if _kind(layer) == "InputLayer":
                continue
            try:
                inputs, outputs = _node_io(layer)
            except (AttributeError, IndexError, ValueError, RuntimeError):
                raise InputError(f"layer {layer.name!r} has not been called on an input") from None
            io[id(layer)] = (inputs, outputs)
            for tensor in outputs:
                producer[id(tensor)] = layer
            for tensor in inputs:
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
        return cls(model, io, producer, consumers)

    def inputs(self, layer) -> list:
        return self.io[id(layer)][0]

    def output(self, layer):
        return self.io[id(layer)][1][0]

    def ancestors(self, tensor) -> set[int]:
        """ids of every layer that `tensor` depends on."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            layer = self.producer.get(id(stack.pop()))
            if layer is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            stack.extend(self.inputs(layer))
        return seen


@dataclass
class _Plan:
    """A window classifier split into its trunk and its fully connected head."""

    graph: _Graph
    input: Any
    feature: Any  # the trunk's output tensor, the head's input
    trunk: list
    head_start: Any
    head: list
    geometry: WindowGeometry


def _single(tensors, what: str):
    tensors = _as_list(tensors)
    if len(tensors) != 1:
        raise InputError(
            f"sliding windows need a model with one {what}, this one has {len(tensors)}"
        )
    return tensors[0]


def _model_io(model) -> tuple[Any, Any]:
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise InputError("the model has no input shape yet: build or call it first")
    image = _single(inputs, "input")
    shape = tuple(image.shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise InputError(
            f"sliding windows need a fixed (height, width, channels) input, got {shape[1:]}"
        )
    return image, _single(outputs, "output")


def _head_chain(graph: _Graph, output) -> tuple[Any, list]:
    """Walk back from the output through Dense and last-axis layers to Flatten/global pooling."""
    head = []
    tensor = output
    while True:
        layer = graph.producer.get(id(tensor))
        if layer is None:
            raise InputError(
                f"found no Flatten or global pooling before the output: {NO_FLATTEN_HINT}"
            )
        kind = _kind(layer)
        inputs = graph.inputs(layer)
        if len(inputs) != 1:
            raise InputError(
                f"layer {layer.name!r} ({kind}) joins branches in the classifier head; "
                "only a chain of layers can become convolutions"
            )
        if tensor is not output and graph.consumers.get(id(tensor), 0) > 1:
            raise InputError(
                f"the output of layer {layer.name!r} ({kind}) feeds more than one layer: "
                "branches in the classifier head cannot become convolutions"
            )
        if kind in HEAD_STARTS:
            return layer, head[::-1]
        if kind != "Dense" and kind not in HEAD_PASS:
            raise InputError(
                f"layer {layer.name!r} ({kind}) in the classifier head acts on the whole "
                f"vector and has no convolutional form; {NO_FLATTEN_HINT}"
            )
        head.append(layer)
        tensor = inputs[0]


def _axis(layer):
    """The axis a layer acts on (-1 when it has none); [3] and (3,) read as 3."""
    axis = getattr(layer, "axis", -1)
    return axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis


def _check_head(head_start, head: list) -> None:
    if _kind(head_start) == "Flatten":
        if not any(_kind(layer) == "Dense" for layer in head):
            raise InputError(
                f"Flatten layer {head_start.name!r} is not followed by a Dense layer; "
                "nothing to turn into a convolution"
            )
        for layer in head:
            if _kind(layer) == "Dense":
                break
            if _kind(layer) == "BatchNormalization":
                raise InputError(
                    f"layer {layer.name!r} (BatchNormalization) normalises each flattened "
                    "position separately and has no convolutional form; move it after the Dense"
                )
    for layer in head:
        axis = _axis(layer)
        if axis not in (-1, 1):
            raise InputError(
                f"layer {layer.name!r} ({_kind(layer)}) acts on axis {axis}, not the last"
            )


def _check_trunk_layer(layer) -> None:
    kind = _kind(layer)
    if kind == "Dense":
        raise InputError(
            f"layer {layer.name!r} (Dense) is not after Flatten or global pooling; {NO_FLATTEN_HINT}"
        )
    if kind not in TRUNK:
        raise InputError(
            f"layer {layer.name!r} ({kind}) cannot slide over a larger image: sliding-window "
            f"trunks are built from {', '.join(SPATIAL + BORDER)}, merges and per-position layers"
        )
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise InputError(f"layer {layer.name!r} ({kind}) is channels_first; use channels_last")
    axis = _axis(layer)
    if kind in CHANNEL_AXIS and axis not in (-1, 3):
        raise InputError(f"layer {layer.name!r} ({kind}) acts on axis {axis}, not the channels")


def _pair(value) -> Pair:
    value = _as_list(value) if not isinstance(value, int) else [value, value]
    return (int(value[0]), int(value[1]))


def _size_step(layer) -> _SizeStep | None:
    kind = _kind(layer)
    if kind in SPATIAL:
        kernel = _pair(getattr(layer, "kernel_size", None) or layer.pool_size)
        dilation = _pair(getattr(layer, "dilation_rate", 1))
        kernel = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        return _SizeStep(kernel, _pair(layer.strides), layer.padding.lower())
    if kind in BORDER:
        pairs = layer.padding if kind == "ZeroPadding2D" else layer.cropping
        (top, bottom), (left, right) = (_pair(p) for p in pairs)
        sign = 1 if kind == "ZeroPadding2D" else -1
        return _SizeStep(border=(sign * (top + bottom), sign * (left + right)))
    return None


def _pads(step: _SizeStep) -> bool:
    return (
        step.border[0] > 0
        or step.border[1] > 0
        or (step.padding == "same" and step.kernel != (1, 1))
    )


def _geometry(graph: _Graph, image, feature, trunk: list) -> WindowGeometry:
    """Strides multiplied along every path; the size steps along the first-input path."""
    strides: dict[int, Pair] = {id(image): (1, 1)}
    steps: dict[int, _SizeStep | None] = {}
    for layer in trunk:
        step = _size_step(layer)
        steps[id(layer)] = step
        incoming = {strides[id(t)] for t in graph.inputs(layer)}
        if len(incoming) != 1:
            raise InputError(
                f"layer {layer.name!r} ({_kind(layer)}) joins branches at different strides "
                f"{sorted(incoming)}; their windows do not line up"
            )
        (sh, sw) = incoming.pop()
        if step is not None:
            sh, sw = sh * step.stride[0], sw * step.stride[1]
        strides[id(graph.output(layer))] = (sh, sw)
    path = []
    tensor = feature
    while tensor is not image:
        layer = graph.producer[id(tensor)]
        if steps[id(layer)] is not None:
            path.append(steps[id(layer)])
        tensor = graph.inputs(layer)[0]
    ordered = tuple(path[::-1])
    window = (int(image.shape[1]), int(image.shape[2]))
    return WindowGeometry(
        window=window,
        stride=strides[id(feature)],
        feature=(int(feature.shape[1]), int(feature.shape[2])),
        exact=not any(_pads(step) for step in steps.values() if step is not None),
        steps=ordered,
    )


def _plan(model) -> _Plan:
    image, output = _model_io(model)
    graph = _Graph.of(model)
    head_start, head = _head_chain(graph, output)
    _check_head(head_start, head)
    feature = graph.inputs(head_start)[0]
    if len(tuple(feature.shape)) != 4:
        raise InputError(
            f"layer {head_start.name!r} ({_kind(head_start)}) does not see a feature map: "
            f"its input is {tuple(feature.shape)}"
        )
    trunk_ids = graph.ancestors(feature)
    placed = trunk_ids | {id(head_start)} | {id(layer) for layer in head}
    trunk = []
    for layer in model.layers:
        if _kind(layer) == "InputLayer":
            continue
        if id(layer) not in placed:
            raise InputError(
                f"layer {layer.name!r} ({_kind(layer)}) is neither in the convolutional trunk "
                "nor in the classifier head chain"
            )
        if id(layer) in trunk_ids:
            _check_trunk_layer(layer)
            trunk.append(layer)
    geometry = _geometry(graph, image, feature, trunk)
    return _Plan(graph, image, feature, trunk, head_start, head, geometry)


def window_geometry(model) -> WindowGeometry:
    """Window size, window stride and feature size of a window classifier (builds nothing)."""
    return _plan(model).geometry


# --------------------------------------------------------------------------- rebuilding


def _copy(layer, tensors: list, last_axis: bool = False):
    """A fresh layer with `layer`'s config called on `tensors`, holding copied weights.

    last_axis: the layer acted on a (N, units) vector; make it act on a grid's last axis.
    """
    config = layer.get_config()
    if last_axis and "axis" in config:
        config["axis"] = -1
    fresh = type(layer).from_config(config)
    out = fresh(tensors[0] if len(tensors) == 1 else tensors)
    fresh.set_weights(layer.get_weights())
    return out


def _dense_as_conv(K, dense, x, kernel: Pair):
    """Dense(units) on a flattened (kh, kw, c) map == Conv2D(units, (kh, kw)) on the map."""
    weights = dense.get_weights()
    channels = int(x.shape[-1])
    units = int(dense.units)
    weights[0] = weights[0].reshape(kernel[0], kernel[1], channels, units)
    config = dense.get_config()
    conv = K.layers.Conv2D(
        units,
        kernel,
        activation=config["activation"],
        use_bias=config["use_bias"],
        name=dense.name,
    )
    out = conv(x)
    conv.set_weights(weights)
    return out


def _head_start_as_conv(K, layer, x, feature: Pair):
    target = HEAD_STARTS[_kind(layer)]
    if target is None:  # Flatten: the next Dense takes the whole map as its kernel
        return x, feature
    pool = getattr(K.layers, target)(pool_size=feature, strides=1, name=layer.name)
    return pool(x), (1, 1)


def _rebuild(plan: _Plan, input_shape) -> Any:
    K = get_keras("keras3" if is_keras3_model(plan.graph.model) else "tf_keras")
    image = K.Input(shape=input_shape)
    new = {id(plan.input): image}
    for layer in plan.trunk:
        ins = [new[id(t)] for t in plan.graph.inputs(layer)]
        new[id(plan.graph.output(layer))] = _copy(layer, ins)
    x, kernel = _head_start_as_conv(
        K, plan.head_start, new[id(plan.feature)], plan.geometry.feature
    )
    for layer in plan.head:
        if _kind(layer) == "Dense":
            x = _dense_as_conv(K, layer, x, kernel)
            kernel = (1, 1)
        else:
            x = _copy(layer, [x], last_axis=True)
    return K.Model(image, x, name=f"{plan.graph.model.name}_fully_conv")


def to_fully_convolutional(model, input_shape: tuple | None = None):
    """The all-convolutional twin of a window classifier, with the same weights.

    `model`: a tf_keras or Keras 3 model (sequential or functional) whose conv trunk ends
    in Flatten + Dense or global pooling + Dense. `input_shape`: (height, width,
    channels) to build for, or None for any size, (None, None, channels). On an H x W
    image the output is (N, rows, cols, units), rows x cols = `window_geometry(model).grid`.
    Anything that has no convolutional form is an InputError naming the layer.
    """
    plan = _plan(model)
    channels = int(plan.input.shape[-1])
    if input_shape is None:
        input_shape = (None, None, channels)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != channels:
        raise InputError(
            f"input_shape must be (height, width, {channels}) like the model's input, got {input_shape}"
        )
    if input_shape[0] is not None and input_shape[1] is not None:
        plan.geometry.grid((int(input_shape[0]), int(input_shape[1])))  # raises if too small
    return _rebuild(plan, input_shape)


def course_example(keras: str | ModuleType | None = None, functional: bool = False):
    """The course's sliding-window example with fresh (random) weights: a 14x14x3 window
    classifier, conv 5x5 with 16 filters, 2x2 max pool, FC 400, FC 400, softmax over 4."""
    K = get_keras(keras)
    layers = [
        K.layers.Conv2D(16, 5, activation="relu", name="conv"),
        K.layers.MaxPooling2D(2, name="pool"),
        K.layers.Flatten(name="flatten"),
        K.layers.Dense(400, activation="relu", name="fc1"),
        K.layers.Dense(400, activation="relu", name="fc2"),
        K.layers.Dense(4, activation="softmax", name="softmax"),
    ]
    if not functional:
        return K.Sequential([K.Input((14, 14, 3)), *layers], name="course_window_net")
    x = image = K.Input((14, 14, 3))
    for layer in layers:
        x = layer(x)
    return K.Model(image, x, name="course_window_net")


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class SlidingWindowCost:
    """MACs of both ways to classify every window of an image (batch 1, profiling's rules).

    naive: each of the grid's windows cropped and run through the window classifier
    separately (windows x window_macs); convolutional: one pass of the fully
    convolutional model over the image.
    """

    image: Pair
    geometry: WindowGeometry
    grid: Pair
    window_macs: int
    convolutional_macs: int

    @property
    def windows(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def naive_macs(self) -> int:
        return self.windows * self.window_macs

    @property
    def ratio(self) -> float:
        return self.naive_macs / self.convolutional_macs if self.convolutional_macs else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "image": list(self.image),
            **self.geometry.to_json(),
            "grid": list(self.grid),
            "windows": self.windows,
            "window_macs": self.window_macs,
            "naive_macs": self.naive_macs,
            "convolutional_macs": self.convolutional_macs,
            "naive_over_convolutional": round(self.ratio, 4),
        }

    def text(self) -> str:
        g, (h, w) = self.geometry, self.image
        lines = [
            f"sliding windows of {g.window[0]}x{g.window[1]} at stride {g.stride[0]}x{g.stride[1]} "
            f"over {h}x{w}: grid {self.grid[0]}x{self.grid[1]}, {self.windows:,} windows"
            + ("" if g.exact else " (the trunk pads: border cells differ from their crops)"),
            f"  naive, every crop separately: {self.windows:,} x {self.window_macs:,} = "
            f"{self.naive_macs:,} MACs",
            f"  convolutional, one pass:      {self.convolutional_macs:,} MACs "
            f"({self.ratio:.2f}x fewer)",
        ]
        return "\n".join(lines)


def sliding_window_cost(model, image: int | Pair | str) -> SlidingWindowCost:
    """The MACs of the naive and the convolutional sliding-window runs over `image`."""
    from mobilecv.profiling import profile

    size = as_size(image)
    geometry = window_geometry(model)
    grid = geometry.grid(size)
    channels = int(_model_io(model)[0].shape[-1])
    convolutional = to_fully_convolutional(model, (*size, channels))
    return SlidingWindowCost(
        image=size,
        geometry=geometry,
        grid=grid,
        window_macs=profile(model).macs,
        convolutional_macs=profile(convolutional).macs,
    )

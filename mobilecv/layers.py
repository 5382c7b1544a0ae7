"""Reusable blocks, written once against a keras module ``K`` (tf_keras or Keras 3).

Layer names are public API: they follow keras.applications where a twin exists so that
its weight files load by name. Stride-2 convolutions use ``padding="same"``, which TF
computes exactly like keras.applications' ZeroPadding2D + ``valid`` pair for these kernel
sizes, and which converts to TFLite without an extra PAD op.
"""

from __future__ import annotations

import enum
from types import ModuleType

from mobilecv.errors import InputError

BN_EPSILON = 1e-3


def activation(K: ModuleType, kind: str | None, name: str | None):
    """``relu6`` becomes a ReLU(6) layer (a TFLite RELU6 op); ``hard_swish`` see
    :func:`hard_swish`; others are Activation."""
    if kind is None:
        return lambda x: x
    if kind == "relu6":
        return K.layers.ReLU(6.0, name=name)
    if kind == "relu":
        return K.layers.ReLU(name=name)
    if kind == "hard_swish":
        return hard_swish(K, name)
    return K.layers.Activation(kind, name=name)


def hard_swish(K: ModuleType, name: str | None):
    """Howard et al. 2019 (MobileNetV3) h-swish, x * ReLU6(x + 3) / 6.

    Keras 3 has it built in (``hard_silu``); tf_keras has none, so it is spelt as
    keras.applications.MobileNetV3 spells it, the pattern the TFLite converter fuses
    into one HARD_SWISH op."""
    if hasattr(K.activations, "hard_silu"):
        return K.layers.Activation("hard_silu", name=name)

    def apply(x):
        gate = K.layers.ReLU(6.0, name=f"{name}_relu6" if name else None)(x + 3.0)
        return K.layers.Multiply(name=name)([x, gate * (1.0 / 6.0)])

    return apply


def batch_norm(K: ModuleType, name: str, momentum: float = 0.99):
    return K.layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=momentum, name=name)


def conv_bn_act(
    K: ModuleType,
    x,
    filters: int,
    kernel: int = 1,
    stride: int = 1,
    act: str | None = "relu6",
    names: tuple[str, str, str | None] = ("conv", "conv_bn", "conv_act"),
    bn_momentum: float = 0.99,
    depthwise: bool = False,
):
    """Conv (or depthwise conv when ``depthwise``) without bias, BatchNorm, activation."""
    conv_name, bn_name, act_name = names
    if depthwise:
        x = K.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=conv_name
        )(x)
    else:
        x = K.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=conv_name
        )(x)
    x = batch_norm(K, bn_name, bn_momentum)(x)
    return activation(K, act, act_name)(x)


def depthwise_separable(K: ModuleType, x, filters: int, stride: int, block_id: int, act="relu6"):
    """MobileNetV1 block: 3x3 depthwise then 1x1 pointwise, each with BN and ReLU6."""
    x = conv_bn_act(
        K,
        x,
        0,
        3,
        stride,
        act,
        (f"conv_dw_{block_id}", f"conv_dw_{block_id}_bn", f"conv_dw_{block_id}_relu"),
        depthwise=True,
    )
    return conv_bn_act(
        K,
        x,
        filters,
        1,
        1,
        act,
        (f"conv_pw_{block_id}", f"conv_pw_{block_id}_bn", f"conv_pw_{block_id}_relu"),
    )


def squeeze_excite(K: ModuleType, x, channels: int, squeezed: int, act: str, prefix: str):
    """Hu et al. squeeze-and-excitation, as EfficientNet uses it (1x1 convs, sigmoid gate)."""
    se = K.layers.GlobalAveragePooling2D(name=prefix + "se_squeeze")(x)
    se = K.layers.Reshape((1, 1, channels), name=prefix + "se_reshape")(se)
    se = K.layers.Conv2D(squeezed, 1, padding="same", activation=act, name=prefix + "se_reduce")(se)
    se = K.layers.Conv2D(
        channels, 1, padding="same", activation="sigmoid", name=prefix + "se_expand"
    )(se)
    return K.layers.Multiply(name=prefix + "se_excite")([x, se])


# Layer-name styles of the two inverted-residual twins in keras.applications.
IR_NAMES = {
    "mobilenet_v2": {
        "expand": ("{p}expand", "{p}expand_BN", "{p}expand_relu"),
        "depthwise": ("{p}depthwise", "{p}depthwise_BN", "{p}depthwise_relu"),
        "project": ("{p}project", "{p}project_BN", None),
        "drop": "{p}drop",
        "add": "{p}add",
    },
    "efficientnet": {
        "expand": ("{p}expand_conv", "{p}expand_bn", "{p}expand_activation"),
        "depthwise": ("{p}dwconv", "{p}bn", "{p}activation"),
        "project": ("{p}project_conv", "{p}project_bn", None),
        "drop": "{p}drop",
        "add": "{p}add",
    },
}


def inverted_residual(
    K: ModuleType,
    x,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int,
    expand: int,
    act: str,
    prefix: str,
    se_ratio: float = 0.0,
    drop_rate: float = 0.0,
    style: str = "mobilenet_v2",
    bn_momentum: float = 0.99,
    se_act: str | None = None,
):
    """MobileNetV2 inverted residual / EfficientNet MBConv: 1x1 expand, kxk depthwise,
    optional squeeze-excite (its reduce conv activated by ``se_act``, by default ``act``),
    linear 1x1 projection, identity shortcut when shapes match."""
    names = {
        key: tuple(n.format(p=prefix) if n else None for n in value)
        if isinstance(value, tuple)
        else value.format(p=prefix)
        for key, value in IR_NAMES[style].items()
    }
    inputs = x
    channels = in_channels * expand
    if expand != 1:
        x = conv_bn_act(K, x, channels, 1, 1, act, names["expand"], bn_momentum)
    x = conv_bn_act(K, x, 0, kernel, stride, act, names["depthwise"], bn_momentum, depthwise=True)
    if se_ratio > 0:
        squeezed = max(1, int(in_channels * se_ratio))
        x = squeeze_excite(K, x, channels, squeezed, se_act or act, prefix)
    x = conv_bn_act(K, x, out_channels, 1, 1, None, names["project"], bn_momentum)
    if stride == 1 and in_channels == out_channels:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = K.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=names["drop"])(x)
        x = K.layers.Add(name=names["add"])([x, inputs] if style == "efficientnet" else [inputs, x])
    return x


def classifier_head(K: ModuleType, x, classes: int, dropout: float, pool_name: str | None = None):
    """Global average pool, optional dropout, softmax Dense named ``predictions``."""
    x = K.layers.GlobalAveragePooling2D(name=pool_name or "avg_pool")(x)
    if dropout > 0:
        x = K.layers.Dropout(dropout, name="top_dropout")(x)
    return K.layers.Dense(classes, activation="softmax", name="predictions")(x)


# ---------------------------------------------------------------------------
# Classic networks (LeNet, AlexNet, VGG, ResNet, NIN, Inception): N-dimensional helpers.

DIMS = (1, 2, 3)


def check_dims(dims: int) -> int:
    """Spatial dimensions: 1 (signals such as ECG), 2 (images), 3 (volumes, video)."""
    if dims not in DIMS:
        raise InputError(f"dims must be 1, 2 or 3, got {dims!r}")
    return int(dims)


def nd(K: ModuleType, kind: str, dims: int):
    """The Keras layer class ``kind`` in ``dims`` dimensions, e.g. ``nd(K, "Conv", 3)`` is
    Conv3D; kinds: Conv, MaxPooling, AveragePooling, GlobalAveragePooling, ZeroPadding,
    UpSampling."""
    return getattr(K.layers, f"{kind}{check_dims(dims)}D")


def spatial_input(K: ModuleType, resolution: int, input_channels: int, dims: int = 2):
    return K.layers.Input(shape=(resolution,) * check_dims(dims) + (input_channels,), name="input")


def adaptive_avg_pool(K: ModuleType, x, target: int, dims: int, name: str):
    """Average-pool every spatial axis to ``target`` cells whatever the input size.

    Like torchvision's AdaptiveAvgPool before the VGG/AlexNet classifier, this keeps the
    parameter count of a Flatten + Dense head independent of resolution. It is built from
    standard layers that convert to TFLite: nearest upsampling by ``target/g`` then average
    pooling by ``size/g`` (g = gcd), i.e. area resampling. Identity when the size matches,
    so full-size builds keep keras.applications' layer list unchanged.
    """
    import math

    size = int(x.shape[1])
    if size == target:
        return x
    g = math.gcd(size, target)
    if target // g > 1:
        x = nd(K, "UpSampling", dims)(target // g, name=f"{name}_up")(x)
    if size // g > 1:
        x = nd(K, "AveragePooling", dims)(size // g, name=name)(x)
    return x


def bottleneck_1x1(
    K: ModuleType,
    x,
    filters: int,
    name: str,
    act: str | None = "relu",
    use_bias: bool = True,
    batch_norm_after: bool = False,
    dims: int = 2,
):
    """A 1x1 convolution that changes the channel count (Lin et al. "Network in Network";
    Szegedy et al. use it to shrink channels before costly 3x3/5x5 convs). Costs
    H*W*C_in*filters MACs: cheap enough to save more than it spends."""
    x = nd(K, "Conv", dims)(filters, 1, use_bias=use_bias, name=name)(x)
    if batch_norm_after:
        x = K.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if act is not None:
        x = K.layers.Activation(act, name=f"{name}_{act}")(x)
    return x


def inception_module(
    K: ModuleType,
    x,
    f1: int,
    f3_reduce: int,
    f3: int,
    f5_reduce: int,
    f5: int,
    pool_proj: int,
    name: str,
):
    """GoogLeNet inception module (Szegedy et al., "Going Deeper with Convolutions", 2015):
    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated on channels.
    A reduce width of 0 drops that 1x1 bottleneck (to show what it saves)."""

    def conv(t, filters, kernel, suffix):
        return K.layers.Conv2D(
            filters, kernel, padding="same", activation="relu", name=f"{name}_{suffix}"
        )(t)

    b1 = conv(x, f1, 1, "1x1")
    b3 = conv(x, f3_reduce, 1, "3x3_reduce") if f3_reduce else x
    b3 = conv(b3, f3, 3, "3x3")
    b5 = conv(x, f5_reduce, 1, "5x5_reduce") if f5_reduce else x
    b5 = conv(b5, f5, 5, "5x5")
    bp = K.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = conv(bp, pool_proj, 1, "pool_proj")
    return K.layers.Concatenate(name=f"{name}_concat")([b1, b3, b5, bp])


def _custom_layer(K: ModuleType, name: str) -> type:
    from mobilecv.custom_layers import layer_class  # imports TF and registers the classes

    return layer_class(K, name)


def local_response_norm(
    K: ModuleType, x, name: str, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1e-4
):
    """AlexNet's local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75)."""
    return _custom_layer(K, "LocalResponseNorm")(depth_radius, bias, alpha, name=name)(x)


def residual_block(
    K: ModuleType,
    x,
    kind: str,
    filters: int,
    stride: int,
    name: str,
    shortcut: str = "projection",
    expansion: int = 4,
    use_bias: bool = True,
    residual: bool = True,
    dims: int = 2,
    bn_epsilon: float = 1.001e-5,
):
    """ResNet v1 block (He et al., CVPR 2016) with keras.applications layer names.

    ``kind`` "basic": 3x3 -> 3x3 (ResNet-18/34); "bottleneck": 1x1 (stride) -> 3x3 -> 1x1
    x ``expansion`` (ResNet-50/101/152). Where the shape changes the shortcut is a
    projection (1x1 conv + BN, ``<name>_0_conv``) or, with ``shortcut="pad"``, strided
    subsampling plus zero channels. ``residual=False`` drops the shortcut (plain nets).
    """
    Conv = nd(K, "Conv", dims)
    in_channels = int(x.shape[-1])
    out_channels = filters * expansion if kind == "bottleneck" else filters

    def bn(t, suffix):
        return K.layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_{suffix}_bn")(t)

    def relu(t, suffix):
        return K.layers.Activation("relu", name=f"{name}_{suffix}")(t)

    inputs = x
    if kind == "bottleneck":
        x = Conv(filters, 1, strides=stride, use_bias=use_bias, name=f"{name}_1_conv")(x)
        x = relu(bn(x, "1"), "1_relu")
        x = Conv(filters, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(x)
        x = relu(bn(x, "2"), "2_relu")
        x = Conv(out_channels, 1, use_bias=use_bias, name=f"{name}_3_conv")(x)
        x = bn(x, "3")
    elif kind == "basic":
        x = Conv(
            filters, 3, strides=stride, padding="same", use_bias=use_bias, name=f"{name}_1_conv"
        )(x)
        x = relu(bn(x, "1"), "1_relu")
        x = Conv(filters, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(x)
        x = bn(x, "2")
    else:
        raise ValueError(f"unknown residual block kind {kind!r}; known: basic, bottleneck")
    if residual:
        short = inputs
        if stride != 1 or in_channels != out_channels:
            if shortcut == "projection":
                short = Conv(
                    out_channels, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv"
                )(inputs)
                short = bn(short, "0")
            elif shortcut == "pad":
                if stride != 1:
                    short = nd(K, "MaxPooling", dims)(
                        1, strides=stride, name=f"{name}_0_subsample"
                    )(short)
                if out_channels < in_channels:
                    raise InputError("shortcut='pad' cannot shrink channels")
                if out_channels > in_channels:
                    short = _custom_layer(K, "ChannelZeroPad")(
                        out_channels - in_channels, name=f"{name}_0_pad"
                    )(short)
            else:
                raise InputError(f"shortcut must be 'projection' or 'pad', got {shortcut!r}")
        x = K.layers.Add(name=f"{name}_add")([short, x])
    return relu(x, "out")


class EdgeKind(enum.StrEnum):
    VERTICAL = "vertical"
    HORIZONTAL = "horizontal"
    SOBEL_X = "sobel_x"
    SOBEL_Y = "sobel_y"
    SCHARR_X = "scharr_x"
    SCHARR_Y = "scharr_y"


# Kernels as written for cross-correlation (what Conv2D computes): a positive response
# where intensity increases to the right (x) or downwards (y).
EDGE_KERNELS = {
    EdgeKind.VERTICAL: [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    EdgeKind.HORIZONTAL: [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    EdgeKind.SOBEL_X: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    EdgeKind.SOBEL_Y: [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    EdgeKind.SCHARR_X: [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]],
    EdgeKind.SCHARR_Y: [[-3, -10, -3], [0, 0, 0], [3, 10, 3]],
}


def edge_filter(
    kind: str | EdgeKind, *, keras: str | ModuleType | None = None, name: str | None = None
):
    """A frozen 3x3 Conv2D (one output channel, no bias) holding a classic edge kernel.

    Kinds: vertical, horizontal, sobel_x, sobel_y, scharr_x, scharr_y. Like every deep
    learning framework, Conv2D computes cross-correlation: out[i, j] = sum k[u, v] *
    x[i + u, j + v], without flipping the kernel. True convolution flips it (k[-u, -v]),
    which for these antisymmetric kernels only negates the response (sobel_x as a true
    convolution gives minus this layer's output). With several input channels the kernel
    is applied to their mean. Padding is "same".
    """
    from mobilecv._tf import get_keras

    try:
        kind = EdgeKind(kind)
    except ValueError:
        raise InputError(
            f"unknown edge filter {kind!r}; kinds: {', '.join(k.value for k in EdgeKind)}"
        ) from None
    K = keras if isinstance(keras, ModuleType) else get_keras(keras)
    import numpy as np

    base = np.asarray(EDGE_KERNELS[kind], dtype="float32")

    def init(shape, dtype=None, **_):
        cin = shape[2]
        return np.repeat(base[:, :, None, None] / cin, cin, axis=2).astype("float32")

    return K.layers.Conv2D(
        1,
        3,
        padding="same",
        use_bias=False,
        trainable=False,
        kernel_initializer=init,
        name=name or f"edge_{kind.value}",
    )


def pooled_grid_features(
    K: ModuleType,
    x,
    prefix: str,
    reduce: int = 64,
    grid: int = 3,
    hidden: int = 128,
    dropout: float = 0.2,
):
    """Where-aware features for regression heads (boxes, points): a 1x1 conv to ``reduce``
    channels, average-pooled to a fixed ``grid`` x ``grid`` (so the parameter count does not
    depend on resolution), flattened into a ReLU Dense of ``hidden`` units. Global pooling
    would throw away the position the head has to regress."""
    x = K.layers.Conv2D(reduce, 1, activation="relu", name=f"{prefix}_reduce")(x)
    x = adaptive_avg_pool(K, x, grid, 2, f"{prefix}_grid")
    x = K.layers.Flatten(name=f"{prefix}_flatten")(x)
    x = K.layers.Dense(hidden, activation="relu", name=f"{prefix}_hidden")(x)
    if dropout > 0:
        x = K.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x

"""Reusable blocks, written once against a keras module ``K`` (tf_keras or Keras 3).

Layer names are public API: they follow keras.applications where a twin exists so that
its weight files load by name. Stride-2 convolutions use ``padding="same"``, which TF
computes exactly like keras.applications' ZeroPadding2D + ``valid`` pair for these kernel
sizes, and which converts to TFLite without an extra PAD op.
"""

from __future__ import annotations

from types import ModuleType

BN_EPSILON = 1e-3


def activation(K: ModuleType, kind: str | None, name: str | None):
    """``relu6`` becomes a ReLU(6) layer (a TFLite RELU6 op); others are Activation."""
    if kind is None:
        return lambda x: x
    if kind == "relu6":
        return K.layers.ReLU(6.0, name=name)
    if kind == "relu":
        return K.layers.ReLU(name=name)
    return K.layers.Activation(kind, name=name)


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
):
    """MobileNetV2 inverted residual / EfficientNet MBConv: 1x1 expand, kxk depthwise,
    optional squeeze-excite, linear 1x1 projection, identity shortcut when shapes match."""
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
        x = squeeze_excite(K, x, channels, max(1, int(in_channels * se_ratio)), act, prefix)
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

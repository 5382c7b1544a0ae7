"""ResNet-18/34/50/101/152 and the plain (shortcut-free) 18/34 twins.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
ResNet-50/101/152 are v1 bottleneck networks equal to keras.applications.ResNet50/101/152
(layer names conv1_conv, conv2_block1_1_conv, ..., conv5_block3_out, avg_pool,
predictions; biased convs; BN epsilon 1.001e-5). ResNet-18/34 use basic blocks without
conv biases, as torchvision does. ``shortcut="projection"`` (default) learns W_s where the
shape changes; ``shortcut="pad"`` is the paper's parameter-free option A (subsample +
zero channels). plain18/plain34 are the same stacks without shortcuts (paper, Fig. 3).
``dims=1|3`` builds the 1D (signals) or 3D (volumes, video) network.
"""

from __future__ import annotations

import enum
from types import ModuleType

from mobilecv import arch
from mobilecv.errors import InputError
from mobilecv.layers import check_dims, nd, residual_block, spatial_input
from mobilecv.registry import register_model


class Shortcut(enum.StrEnum):
    PROJECTION = "projection"
    PAD = "pad"


def _stages(kind: str, repeats: tuple[int, ...]):
    expand = "_e4" if kind == "bottleneck" else ""
    return arch.decode_table(
        f"{kind}_r{r}_k3_s{1 if i == 0 else 2}{expand}_c{64 * 2**i}" for i, r in enumerate(repeats)
    )


RESNETS = {
    "resnet18": (_stages("basic", (2, 2, 2, 2)), True),
    "resnet34": (_stages("basic", (3, 4, 6, 3)), True),
    "resnet50": (_stages("bottleneck", (3, 4, 6, 3)), True),
    "resnet101": (_stages("bottleneck", (3, 4, 23, 3)), True),
    "resnet152": (_stages("bottleneck", (3, 8, 36, 3)), True),
    "plain18": (_stages("basic", (2, 2, 2, 2)), False),
    "plain34": (_stages("basic", (3, 4, 6, 3)), False),
}
STEM = 64
BN_EPSILON = 1.001e-5


def _resnet(
    K, name, *, width, depth, resolution, classes, include_top, input_channels, shortcut, dims
):
    table, residual = RESNETS[name]
    shortcut = Shortcut(shortcut) if shortcut in set(Shortcut) else None
    if shortcut is None:
        raise InputError("shortcut must be 'projection' or 'pad'")
    check_dims(dims)
    stages = arch.scale(table, width, depth)
    bottleneck = table[0].kind == "bottleneck"
    # keras.applications uses biased convs in its ResNets; torchvision's 18/34 do not.
    use_bias = bottleneck
    inputs = spatial_input(K, resolution, input_channels, dims)
    x = nd(K, "ZeroPadding", dims)(3, name="conv1_pad")(inputs)
    x = nd(K, "Conv", dims)(
        arch.make_divisible(STEM * width), 7, strides=2, use_bias=use_bias, name="conv1_conv"
    )(x)
    x = K.layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = K.layers.Activation("relu", name="conv1_relu")(x)
    x = nd(K, "ZeroPadding", dims)(1, name="pool1_pad")(x)
    x = nd(K, "MaxPooling", dims)(3, strides=2, name="pool1_pool")(x)
    for s, stage in enumerate(stages, start=2):
        for b in range(1, stage.repeats + 1):
            x = residual_block(
                K,
                x,
                stage.kind,
                stage.channels,
                stage.stride if b == 1 else 1,
                f"conv{s}_block{b}",
                shortcut=shortcut.value,
                expansion=stage.expand,
                use_bias=use_bias,
                residual=residual,
                dims=dims,
                bn_epsilon=BN_EPSILON,
            )
    if include_top:
        x = nd(K, "GlobalAveragePooling", dims)(name="avg_pool")(x)
        x = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"{name}_{width:g}_{resolution}")


def _register(name):
    @register_model(name, family="resnet", default_resolution=224)
    def builder(
        *,
        width: float,
        depth: float,
        resolution: int,
        classes: int,
        include_top: bool,
        input_channels: int,
        keras: ModuleType,
        shortcut: str = "projection",
        dims: int = 2,
    ):
        return _resnet(
            keras,
            name,
            width=width,
            depth=depth,
            resolution=resolution,
            classes=classes,
            include_top=include_top,
            input_channels=input_channels,
            shortcut=shortcut,
            dims=dims,
        )

    builder.__name__ = builder.__qualname__ = name
    kind = "plain (no shortcuts)" if not RESNETS[name][1] else "residual"
    builder.__doc__ = f"{name}: {kind} network of He et al. 2016."
    return builder


for _name in RESNETS:
    globals()[_name] = _register(_name)

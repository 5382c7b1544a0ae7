"""The classic convolutional networks: LeNet-5, AlexNet, VGG-16/19.

- LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE
  1998 (LeNet-5, in the modern form taught today: Flatten + Dense instead of the
  partially connected C3 and the RBF output).
- Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
  Networks", NeurIPS 2012 (AlexNet).
- Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015 (VGG). Layer names and counts equal keras.applications.VGG16/19.

Flatten heads see a fixed grid (5x5 LeNet, 6x6 AlexNet, 7x7 VGG) whatever the
resolution: `layers.adaptive_avg_pool` resamples other sizes (torchvision does the same),
so parameter counts never depend on resolution and the default size is exactly the paper.

AlexNet in LiteRT: grouped convolutions (``groups=2``) convert to a native CONV_2D and run
in LiteRT in float32 and int8, so they are not lowered. Local response normalisation is
not the native LOCAL_RESPONSE_NORMALIZATION op (it has no int8 kernel and would leave the
model part-float); it is `layers.local_response_norm`, built from MUL, a constant 1x1
CONV_2D, RSQRT and SQRT, which quantise to int8.
"""

from __future__ import annotations

import enum
from types import ModuleType

from mobilecv import arch
from mobilecv.errors import InputError
from mobilecv.layers import adaptive_avg_pool, check_dims, local_response_norm, nd, spatial_input
from mobilecv.registry import register_model


class Activation(enum.StrEnum):
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"


class Pooling(enum.StrEnum):
    AVERAGE = "average"
    MAX = "max"


def _enum(cls, value, what):
    try:
        return cls(value)
    except ValueError:
        raise InputError(
            f"{what} must be one of {', '.join(v.value for v in cls)}, got {value!r}"
        ) from None


def _channels(count: int, width: float) -> int:
    # Classic nets have no multiple-of-8 convention: round to the nearest whole channel.
    return arch.make_divisible(count * width, divisor=1, min_value=1)


VGG_STAGES = {
    "vgg16": arch.decode_table(
        [
            "vgg_r2_k3_s2_c64",
            "vgg_r2_k3_s2_c128",
            "vgg_r3_k3_s2_c256",
            "vgg_r3_k3_s2_c512",
            "vgg_r3_k3_s2_c512",
        ]
    ),
    "vgg19": arch.decode_table(
        [
            "vgg_r2_k3_s2_c64",
            "vgg_r2_k3_s2_c128",
            "vgg_r4_k3_s2_c256",
            "vgg_r4_k3_s2_c512",
            "vgg_r4_k3_s2_c512",
        ]
    ),
}
VGG_FC = 4096
VGG_GRID = 7


@register_model(
    "lenet5",
    family="lenet",
    default_resolution=32,
    min_resolution=16,
    defaults={"input_channels": 1},
    unsupported=("depth",),
)
def lenet5(
    *,
    width: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    activation: str = "tanh",
    pooling: str = "average",
    dims: int = 2,
):
    K = keras
    act = _enum(Activation, activation, "activation").value
    pool = nd(
        K,
        "AveragePooling" if _enum(Pooling, pooling, "pooling") == Pooling.AVERAGE else "MaxPooling",
        dims,
    )
    Conv = nd(K, "Conv", check_dims(dims))
    inputs = spatial_input(K, resolution, input_channels, dims)
    x = Conv(_channels(6, width), 5, activation=act, name="conv1")(inputs)
    x = pool(2, name="pool1")(x)
    x = Conv(_channels(16, width), 5, activation=act, name="conv2")(x)
    x = pool(2, name="pool2")(x)
    if include_top:
        x = adaptive_avg_pool(K, x, 5, dims, "grid_pool")
        x = K.layers.Flatten(name="flatten")(x)
        x = K.layers.Dense(_channels(120, width), activation=act, name="fc3")(x)
        x = K.layers.Dense(_channels(84, width), activation=act, name="fc4")(x)
        x = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"lenet5_{width:g}_{resolution}")


# AlexNet: (filters, kernel, stride, groups, LRN after, max pool after).
ALEXNET_CONVS = (
    (96, 11, 4, 1, True, True),
    (256, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (384, 3, 1, 2, False, False),
    (256, 3, 1, 2, False, True),
)
ALEXNET_FC = 4096
ALEXNET_GRID = 6


@register_model(
    "alexnet",
    family="alexnet",
    default_resolution=227,
    # 67 px is the smallest input the valid 11x11/4 stem and three 3x3/2 pools accept; 75
    # keeps the conv trunk, not the fixed 6x6 classifier, dominating cost at tiny sizes.
    min_resolution=75,
    unsupported=("depth",),
)
def alexnet(
    *,
    width: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    groups: bool = True,
    lrn: bool = True,
    dropout: float = 0.5,
):
    """``groups=False`` is the single-tower variant (the paper's two GPUs merged)."""
    K = keras
    inputs = spatial_input(K, resolution, input_channels)
    x = inputs
    for i, (filters, kernel, stride, group, norm, pool) in enumerate(ALEXNET_CONVS, start=1):
        group = group if groups else 1
        x = K.layers.Conv2D(
            arch.make_divisible(filters * width, divisor=8),
            kernel,
            strides=stride,
            padding="valid" if i == 1 else "same",
            groups=group,
            activation="relu",
            name=f"conv{i}",
        )(x)
        if norm and lrn:
            x = local_response_norm(K, x, name=f"norm{i}")
        if pool:
            x = K.layers.MaxPooling2D(3, strides=2, name=f"pool{i}")(x)
    if include_top:
        x = adaptive_avg_pool(K, x, ALEXNET_GRID, 2, "grid_pool")
        x = K.layers.Flatten(name="flatten")(x)
        for j in (6, 7):
            x = K.layers.Dropout(dropout, name=f"drop{j}")(x)
            x = K.layers.Dense(_channels(ALEXNET_FC, width), activation="relu", name=f"fc{j}")(x)
        x = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"alexnet_{width:g}_{resolution}")


def _vgg(K, table, *, width, depth, resolution, classes, include_top, input_channels, dims, name):
    stages = arch.scale(table, width, depth)
    Conv, Pool = nd(K, "Conv", check_dims(dims)), nd(K, "MaxPooling", dims)
    inputs = spatial_input(K, resolution, input_channels, dims)
    x = inputs
    for b, stage in enumerate(stages, start=1):
        for i in range(1, stage.repeats + 1):
            x = Conv(
                stage.channels,
                stage.kernel,
                padding="same",
                activation="relu",
                name=f"block{b}_conv{i}",
            )(x)
        x = Pool(stage.stride, strides=stage.stride, name=f"block{b}_pool")(x)
    if include_top:
        x = adaptive_avg_pool(K, x, VGG_GRID, dims, "grid_pool")
        x = K.layers.Flatten(name="flatten")(x)
        fc = arch.make_divisible(VGG_FC * width)
        x = K.layers.Dense(fc, activation="relu", name="fc1")(x)
        x = K.layers.Dense(fc, activation="relu", name="fc2")(x)
        x = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"{name}_{width:g}_{resolution}")


def _register_vgg(name):
    @register_model(name, family="vgg", default_resolution=224)
    def builder(
        *,
        width: float,
        depth: float,
        resolution: int,
        classes: int,
        include_top: bool,
        input_channels: int,
        keras: ModuleType,
        dims: int = 2,
    ):
        return _vgg(
            keras,
            VGG_STAGES[name],
            width=width,
            depth=depth,
            resolution=resolution,
            classes=classes,
            include_top=include_top,
            input_channels=input_channels,
            dims=dims,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name.upper()}, the keras.applications twin (Simonyan & Zisserman 2015)."
    return builder


vgg16 = _register_vgg("vgg16")
vgg19 = _register_vgg("vgg19")

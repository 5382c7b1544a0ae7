"""The fast style-transfer network of Johnson, Alahi & Fei-Fei, "Perceptual Losses for
Real-Time Style Transfer and Super-Resolution", ECCV 2016 (supplementary, Table 1).

A feed-forward image transform: a 9x9 conv (32), two 3x3 stride-2 convs (64, 128), five
residual blocks of two 3x3 convs (128), two x2 upsampling steps (64, 32) and a 9x9 conv
to RGB. Every conv but the last is followed by a normalisation and a ReLU; the output is
an image in [0, 1] named "image" (the paper's scaled tanh, here a sigmoid: the range
every mobilecv model takes). It is trained for one style against the perceptual loss of
mobilecv.style by mobilecv.fast_style.

Variants, chosen for int8 phones (``norm``, ``upsample``):

- ``norm="batch"`` (the default; the paper's own choice): BatchNorm, which the converter
  folds into the preceding conv, so int8 sees only CONV_2D (with its ReLU fused).
  ``"none"``: convs with biases only. Instance normalisation (Ulyanov et al. 2016, the
  later standard) is not offered: as Keras' GroupNormalization with one group per channel
  it converts, but its BROADCAST_TO fails in LiteRT ("Output shape must be broadcastable
  from input shape", float16) and already in int8 calibration (TF 2.21, LiteRT 2.3).
- ``upsample="resize"`` (the default): nearest-neighbour x2 then a 3x3 conv
  (resize-convolution, Odena, Dumoulin & Olah 2016), which has no checkerboard artefacts
  and converts to RESIZE_NEAREST_NEIGHBOR + CONV_2D; ``"transposed"``: the paper's 3x3
  stride-2 transposed convolution (TRANSPOSE_CONV).

``width`` scales every channel count through arch.make_divisible; ``depth`` the five
residual blocks (ceil(5 depth)); ``edge_kernel`` the 9x9 first and last convs, which at
width 0.25 are a third of the MACs. The input side must be a multiple of 4.
"""

from __future__ import annotations

import enum
from types import ModuleType

from mobilecv import arch
from mobilecv.errors import InputError, parse_choice
from mobilecv.layers import spatial_input
from mobilecv.registry import register_model

OUTPUT_NAME = "image"
# Johnson et al. 2016, supplementary Table 1: channels of the down path, residual blocks.
STEM_CHANNELS = 32
DOWN_CHANNELS = (64, 128)
RESIDUAL_BLOCKS = 5
EDGE_KERNEL = 9
# BatchNorm statistics settle within a few hundred steps (short trainings; Keras' 0.99
# would still carry the initial ones).
BN_MOMENTUM = 0.9


class Norm(enum.StrEnum):
    BATCH = "batch"
    NONE = "none"


class Upsample(enum.StrEnum):
    RESIZE = "resize"
    TRANSPOSED = "transposed"


def _normalise(K: ModuleType, x, norm: Norm, name: str):
    if norm is Norm.BATCH:
        return K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return x


def _conv(K, x, filters: int, kernel: int, stride: int, norm: Norm, name: str, act=True):
    x = K.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=norm is Norm.NONE, name=name
    )(x)
    x = _normalise(K, x, norm, name)
    return K.layers.ReLU(name=f"{name}_relu")(x) if act else x


def _residual(K, x, norm: Norm, name: str):
    """Two 3x3 convs, the second without ReLU, added to the input (the paper's block)."""
    channels = int(x.shape[-1])
    y = _conv(K, x, channels, 3, 1, norm, f"{name}_conv1")
    y = _conv(K, y, channels, 3, 1, norm, f"{name}_conv2", act=False)
    return K.layers.Add(name=f"{name}_add")([x, y])


def _up(K, x, filters: int, norm: Norm, upsample: Upsample, name: str):
    if upsample is Upsample.RESIZE:
        x = K.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_resize")(x)
        return _conv(K, x, filters, 3, 1, norm, f"{name}_conv")
    x = K.layers.Conv2DTranspose(
        filters, 3, strides=2, padding="same", use_bias=norm is Norm.NONE, name=f"{name}_upconv"
    )(x)
    x = _normalise(K, x, norm, f"{name}_upconv")
    return K.layers.ReLU(name=f"{name}_relu")(x)


@register_model(
    "stylizer",
    family="stylizer",
    default_resolution=256,
    min_resolution=4,  # it halves its input twice
    task="stylization",
    unsupported=("classes", "include_top"),
)
def stylizer(
    *,
    width: float,
    depth: float,
    resolution: int,
    input_channels: int,
    keras: ModuleType,
    norm: str = Norm.BATCH,
    upsample: str = Upsample.RESIZE,
    edge_kernel: int = EDGE_KERNEL,
):
    """Johnson et al. 2016's transform network; width 1, depth 1, ``norm="batch"``,
    ``upsample="transposed"`` is the paper's (1.68 M parameters)."""
    K = keras
    norm = parse_choice(Norm, norm, "norm")
    upsample = parse_choice(Upsample, upsample, "upsample")
    if resolution % 4:
        raise InputError(
            f"the stylizer halves its input twice: give a multiple of 4, not {resolution}"
        )
    if int(edge_kernel) < 1 or int(edge_kernel) % 2 == 0:
        raise InputError(f"edge_kernel must be an odd number >= 1, got {edge_kernel}")
    stem = arch.make_divisible(STEM_CHANNELS * width)
    down = [arch.make_divisible(c * width) for c in DOWN_CHANNELS]
    inputs = spatial_input(K, resolution, input_channels)
    x = _conv(K, inputs, stem, int(edge_kernel), 1, norm, "stem")
    for i, filters in enumerate(down, start=1):
        x = _conv(K, x, filters, 3, 2, norm, f"down{i}")
    for i in range(1, arch.scale_repeats(RESIDUAL_BLOCKS, depth) + 1):
        x = _residual(K, x, norm, f"res{i}")
    for i, filters in enumerate((down[0], stem), start=1):
        x = _up(K, x, filters, norm, upsample, f"up{i}")
    x = K.layers.Conv2D(3, int(edge_kernel), padding="same", name="to_rgb")(x)
    image = K.layers.Activation("sigmoid", name=OUTPUT_NAME)(x)
    return K.Model(inputs, {OUTPUT_NAME: image}, name=f"stylizer_{width:g}_{resolution}")

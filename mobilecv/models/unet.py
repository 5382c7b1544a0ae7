"""U-Nets: the paper's network and a MobileNetV2-encoder U-Net, for semantic segmentation.

- Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
  Segmentation", MICCAI 2015 (Fig. 1): a contracting path of stages of two 3x3 convs
  (ReLU) and a 2x2 max pool, channels doubling from 64; a bottom of two 3x3 convs at 1024;
  an expanding path of stages of a 2x2 stride-2 transposed conv ("up-convolution") that
  halves the channels, a concatenation with the matching contracting stage (centre-cropped:
  the paper's convs are unpadded, 572 px in -> 388 px out) and two 3x3 convs; a final 1x1
  conv to the classes. ``padding="same"`` (the default, for mobile use) keeps every map the
  size of its stage, so the output is the input's size and nothing is cropped.
- ``unet_mobilenet_v2``: the TensorFlow segmentation tutorial's design (Isola et al.'s
  pix2pix upsample block): the encoder is any registered backbone's feature maps
  (mobilecv.features, MobileNetV2 by default); from the stride-32 map, each decoder step is
  a 3x3 stride-2 transposed conv + BatchNorm + ReLU concatenated with the skip at stride 16,
  8, 4 and 2, and a last 3x3 stride-2 transposed conv gives the classes at full resolution.

Both output per-pixel class probabilities (N, H, W, classes), a softmax named "mask".
Width scales every channel count through the one rounding rule (arch.make_divisible);
depth scales the number of U-Net stages as it scales repeats elsewhere, ceil(4 * depth)
(1.0 is the paper's four; 0.5 two; 1.25 five). For the MobileNetV2 U-Net, width, depth
and resolution scale the backbone and width also the decoder.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from types import ModuleType

from mobilecv import arch
from mobilecv.errors import InputError, parse_choice
from mobilecv.layers import spatial_input
from mobilecv.registry import register_model
from mobilecv.tasks.base import build_on_backbone

# Ronneberger 2015, Fig. 1: four contracting stages (two 3x3 convs, 2x2 max pool) and the
# bottom (two 3x3 convs, no pool: stride 1). The expanding path mirrors the contracting
# stages: its up-conv kernel and stride are the pool's, its channels the stage's.
UNET_STAGES = arch.decode_table(
    [
        "vgg_r2_k3_s2_c64",
        "vgg_r2_k3_s2_c128",
        "vgg_r2_k3_s2_c256",
        "vgg_r2_k3_s2_c512",
        "vgg_r2_k3_s1_c1024",
    ]
)
PAPER_STAGES = len(UNET_STAGES) - 1
OUTPUT_NAME = "mask"

# The TF segmentation tutorial's decoder: pix2pix upsample filters onto each skip stride.
DECODER_FILTERS = {16: 512, 8: 256, 4: 128, 2: 64}
DECODER_KERNEL = 3
DEEPEST_STRIDE = 32


class Padding(enum.StrEnum):
    SAME = "same"
    VALID = "valid"


def stage_table(stages: int) -> tuple[arch.StageSpec, ...]:
    """``stages`` contracting rows of the paper's table, channels doubling, and the bottom."""
    if stages < 1:
        raise InputError(f"a U-Net needs at least one stage, got {stages}")
    first, bottom = UNET_STAGES[0], UNET_STAGES[-1]
    rows = [replace(first, channels=first.channels * 2**i) for i in range(stages)]
    return (*rows, replace(bottom, channels=first.channels * 2**stages))


def plan(resolution: int, stages: tuple[arch.StageSpec, ...], padding: str) -> list[int]:
    """Map sizes through the network: each contracting stage's output (its skip), then the
    output size last. An input that does not tile (an odd map before a pool, a map that
    vanishes) is an InputError naming the nearest sizes that do."""
    try:
        return _sizes(resolution, stages, padding)
    except InputError as error:
        near = _nearest_tiling(resolution, stages, padding)
        raise InputError(f"{resolution} px does not tile this U-Net ({error}); {near}") from None


def _sizes(n: int, stages, padding: str) -> list[int]:
    def convs(n: int, stage) -> int:
        for _ in range(stage.repeats):
            n = arch.output_size(n, stage.kernel, 1, padding)
        return n

    skips = []
    for i, stage in enumerate(stages[:-1], start=1):
        n = convs(n, stage)
        if n % stage.stride:
            raise InputError(f"stage {i} gives {n} px, which a {stage.stride}x pool cannot halve")
        skips.append(n)
        n = arch.output_size(n, stage.stride, stage.stride)
    n = convs(n, stages[-1])
    for stage, skip in zip(reversed(stages[:-1]), reversed(skips), strict=True):
        n = arch.output_size(n, stage.stride, stage.stride, transposed=True)
        if n > skip:
            raise InputError(f"the up-conv gives {n} px, more than its {skip} px skip")
        n = convs(n, stage)
    return [*skips, n]


def _nearest_tiling(resolution: int, stages, padding: str) -> str:
    def tiles(n: int) -> bool:
        try:
            _sizes(n, stages, padding)
        except InputError:
            return False
        return True

    below = next((n for n in range(resolution - 1, 0, -1) if tiles(n)), None)
    above = next((n for n in range(resolution + 1, 4097) if tiles(n)), None)
    sizes = " or ".join(str(n) for n in (below, above) if n is not None)
    return f"try {sizes}" if sizes else "no input size up to 4096 px does"


def _conv_pair(K, x, stage: arch.StageSpec, padding: str, prefix: str, batch_norm: bool):
    """The stage's 3x3 convs, each with ReLU (and BatchNorm before it, when asked)."""
    for r in range(1, stage.repeats + 1):
        name = f"{prefix}_conv{r}"
        x = K.layers.Conv2D(stage.channels, stage.kernel, padding=padding, use_bias=not batch_norm,
                            activation=None if batch_norm else "relu", name=name)(x)  # fmt: skip
        if batch_norm:
            x = K.layers.BatchNormalization(name=f"{name}_bn")(x)
            x = K.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _centre_crop(K, skip, size: int, name: str):
    """The skip's centre ``size`` pixels (the paper's cropping; nothing when same-padded)."""
    extra = int(skip.shape[1]) - size
    if not extra:
        return skip
    before = extra // 2
    return K.layers.Cropping2D(((before, extra - before),) * 2, name=name)(skip)


def class_scores(K, x, classes: int, kernel: int = 1, stride: int = 1):
    """Per-pixel logits (a conv, or a transposed conv when upsampling) and their softmax."""
    if stride == 1:
        logits = K.layers.Conv2D(classes, kernel, name="logits")(x)
    else:
        logits = K.layers.Conv2DTranspose(
            classes, kernel, strides=stride, padding="same", name="logits"
        )(x)
    return K.layers.Softmax(axis=-1, name=OUTPUT_NAME)(logits)


@register_model(
    "unet",
    family="unet",
    default_resolution=128,
    defaults={"classes": 2},
    task="segmentation",
    unsupported=("include_top",),
)
def unet(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    input_channels: int,
    keras: ModuleType,
    padding: str = "same",
    batch_norm: bool = False,
):
    """The U-Net of Ronneberger et al. 2015; width 1, depth 1, 572 px, ``padding="valid"``,
    one input channel and two classes is the paper's network (388 x 388 output).
    ``batch_norm`` puts BatchNorm between each conv and its ReLU (Ioffe & Szegedy 2015,
    after the paper): it folds into the convs in TFLite, and without it a many-class
    U-Net trained on scenes stalled at "all background"."""
    K = keras
    padding = parse_choice(Padding, padding, "padding").value
    stages = arch.scale(stage_table(arch.scale_repeats(PAPER_STAGES, depth)), width)
    sizes = plan(resolution, stages, padding)
    inputs = spatial_input(K, resolution, input_channels)
    x, skips = inputs, []
    for i, stage in enumerate(stages[:-1], start=1):
        x = _conv_pair(K, x, stage, padding, f"down{i}", batch_norm)
        skips.append(x)
        x = K.layers.MaxPooling2D(stage.stride, name=f"down{i}_pool")(x)
    x = _conv_pair(K, x, stages[-1], padding, "bottom", batch_norm)
    for i in range(len(skips), 0, -1):
        stage = stages[i - 1]
        x = K.layers.Conv2DTranspose(
            stage.channels, stage.stride, strides=stage.stride, name=f"up{i}_upconv"
        )(x)
        skip = _centre_crop(K, skips[i - 1], int(x.shape[1]), f"up{i}_crop")
        x = K.layers.Concatenate(name=f"up{i}_concat")([skip, x])
        x = _conv_pair(K, x, stage, padding, f"up{i}", batch_norm)
    mask = class_scores(K, x, classes)
    if int(mask.shape[1]) != sizes[-1]:  # the size plan and Keras must agree
        raise RuntimeError(f"U-Net output {mask.shape[1]} px, planned {sizes[-1]} px")
    return K.Model(inputs, {OUTPUT_NAME: mask}, name=f"unet_{width:g}_{resolution}")


def upsample(K, x, filters: int, name: str):
    """pix2pix's upsample block: 3x3 stride-2 transposed conv (no bias), BatchNorm, ReLU."""
    x = K.layers.Conv2DTranspose(filters, DECODER_KERNEL, strides=2, padding="same",
                                 use_bias=False, name=f"{name}_upconv")(x)  # fmt: skip
    x = K.layers.BatchNormalization(name=f"{name}_bn")(x)
    return K.layers.ReLU(name=f"{name}_relu")(x)


def skip_decoder(K, features, *, classes: int, width: float = 1.0):
    """The tutorial's decoder on named feature maps (stride2 ... stride32): the mask."""
    x = features[f"stride{DEEPEST_STRIDE}"]
    for stride, filters in DECODER_FILTERS.items():
        x = upsample(K, x, arch.make_divisible(filters * width), f"decoder{stride}")
        skip, size = features[f"stride{stride}"], int(x.shape[1])
        if int(skip.shape[1]) < size or int(skip.shape[2]) != int(skip.shape[1]):
            raise InputError(
                f"the stride-{stride} map is {tuple(skip.shape[1:3])}, smaller than the "
                f"decoder's {size} x {size}: the backbone's maps must halve exactly"
            )
        # A map the backbone zero-padded for its next stride (ResNet's pool1_pad) loses
        # its border again, as the paper crops its skips.
        skip = _centre_crop(K, skip, size, f"decoder{stride}_crop")
        x = K.layers.Concatenate(name=f"decoder{stride}_concat")([x, skip])
    return class_scores(K, x, classes, DECODER_KERNEL, 2)


@register_model(
    "unet_mobilenet_v2",
    family="unet",
    default_resolution=128,
    defaults={"classes": 2},
    task="segmentation",
    unsupported=("include_top",),
)
def unet_mobilenet_v2(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
):
    """A U-Net on ``backbone``'s feature maps (any registered network with maps at strides
    2 to 32) and the TF segmentation tutorial's pix2pix decoder, scaled by ``width`` too."""
    if resolution % DEEPEST_STRIDE:
        raise InputError(
            f"resolution must be a multiple of {DEEPEST_STRIDE} (the encoder's deepest "
            f"stride), got {resolution}"
        )
    return build_on_backbone("segmentation", "unet", decoder_width=width, **locals())

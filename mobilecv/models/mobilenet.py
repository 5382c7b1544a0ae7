"""MobileNetV1 and MobileNetV2.

- Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", arXiv:1704.04861, 2017 (depthwise separable convolutions, width
  multiplier alpha, resolution multiplier rho).
- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
- Howard et al., "Searching for MobileNetV3", ICCV 2019 (h-swish, squeeze-excite in the
  inverted residual): the options ``activation`` and ``se_ratio``.

Layer names and parameter counts equal keras.applications.MobileNet / MobileNetV2 with
the options at their defaults. The options (``divisor``, ``expansion``, ``activation``,
``se_ratio``) exist to measure what makes int8 fast in LiteRT
(benchmarks/int8_efficiency.py); they change the network, so weights of the defaults do
not load into them.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from mobilecv import arch
from mobilecv.errors import InputError
from mobilecv.layers import classifier_head, conv_bn_act, depthwise_separable, inverted_residual
from mobilecv.registry import register_model

MOBILENET_V1_STAGES = arch.decode_table(
    [
        "ds_r1_k3_s1_c64",
        "ds_r1_k3_s2_c128",
        "ds_r1_k3_s1_c128",
        "ds_r1_k3_s2_c256",
        "ds_r1_k3_s1_c256",
        "ds_r1_k3_s2_c512",
        "ds_r5_k3_s1_c512",
        "ds_r1_k3_s2_c1024",
        "ds_r1_k3_s1_c1024",
    ]
)
MOBILENET_V1_STEM = 32

MOBILENET_V2_STAGES = arch.decode_table(
    [
        "ir_r1_k3_s1_e1_c16",
        "ir_r2_k3_s2_e6_c24",
        "ir_r3_k3_s2_e6_c32",
        "ir_r4_k3_s2_e6_c64",
        "ir_r3_k3_s1_e6_c96",
        "ir_r3_k3_s2_e6_c160",
        "ir_r1_k3_s1_e6_c320",
    ]
)
MOBILENET_V2_STEM = 32
MOBILENET_V2_HEAD = 1280
# The paper and keras.applications keep the 1280-channel head below width 1.0.
MOBILENET_V2_HEAD_SHRINKS = False
# The expansion ratio of the table that ``expansion`` overrides (the first stage's 1 stays).
MOBILENET_V2_EXPANSION = 6
ACTIVATIONS = ("relu6", "relu", "hard_swish", "swish")


def _check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise InputError(f"divisor must be a positive integer (e.g. 8, 16, 32), got {divisor!r}")
    return divisor


def _check_v2_options(expansion, activation: str, se_ratio) -> None:
    if expansion is not None and (
        isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1
    ):
        raise InputError(f"expansion must be a positive integer, got {expansion!r}")
    if activation not in ACTIVATIONS:
        raise InputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if (
        isinstance(se_ratio, bool)
        or not isinstance(se_ratio, int | float)
        or not 0 <= se_ratio <= 1
    ):
        raise InputError(f"se_ratio must be a number in [0, 1], got {se_ratio!r}")


def _input(K: ModuleType, resolution: int, input_channels: int):
    return K.layers.Input(shape=(resolution, resolution, input_channels), name="input")


@register_model("mobilenet_v1", family="mobilenet", default_resolution=224)
def mobilenet_v1(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    dropout: float = 1e-3,
    divisor: int = 8,
):
    K = keras
    divisor = _check_divisor(divisor)
    stages = arch.scale(MOBILENET_V1_STAGES, width, depth, divisor=divisor)
    inputs = _input(K, resolution, input_channels)
    x = conv_bn_act(
        K,
        inputs,
        arch.make_divisible(MOBILENET_V1_STEM * width, divisor),
        3,
        2,
        "relu6",
        ("conv1", "conv1_bn", "conv1_relu"),
    )
    block_id = 1
    for stage in stages:
        for i in range(stage.repeats):
            x = depthwise_separable(K, x, stage.channels, stage.stride if i == 0 else 1, block_id)
            block_id += 1
    if include_top:
        # keras.applications' head: a 1x1 conv classifier over the pooled features.
        x = K.layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
        x = K.layers.Dropout(dropout, name="dropout")(x)
        x = K.layers.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
        x = K.layers.Reshape((classes,), name="reshape_2")(x)
        x = K.layers.Activation("softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"mobilenet_v1_{width:g}_{resolution}")


@register_model("mobilenet_v2", family="mobilenet", default_resolution=224)
def mobilenet_v2(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    dropout: float = 0.0,
    divisor: int = 8,
    expansion: int | None = None,
    activation: str = "relu6",
    se_ratio: float = 0.0,
):
    """keras.applications.MobileNetV2 by default. ``divisor``: channel counts are
    multiples of it; ``expansion``: replaces the table's expansion ratio 6; ``activation``:
    one of ACTIVATIONS everywhere ReLU6 was; ``se_ratio`` > 0: squeeze-excite in every
    block, squeezing to ``se_ratio`` x the block's input channels (ReLU, sigmoid gate)."""
    K = keras
    divisor = _check_divisor(divisor)
    _check_v2_options(expansion, activation, se_ratio)
    stages = arch.scale(MOBILENET_V2_STAGES, width, depth, divisor=divisor)
    if expansion is not None:
        stages = tuple(
            replace(s, expand=expansion) if s.expand == MOBILENET_V2_EXPANSION else s
            for s in stages
        )
    act = activation
    inputs = _input(K, resolution, input_channels)
    channels = arch.make_divisible(MOBILENET_V2_STEM * width, divisor)
    x = conv_bn_act(
        K, inputs, channels, 3, 2, act, ("Conv1", "bn_Conv1", "Conv1_relu"), bn_momentum=0.999
    )
    block_id = 0
    for stage in stages:
        for i in range(stage.repeats):
            prefix = "expanded_conv_" if block_id == 0 else f"block_{block_id}_"
            x = inverted_residual(
                K,
                x,
                channels,
                stage.channels,
                stage.kernel,
                stage.stride if i == 0 else 1,
                stage.expand,
                act,
                prefix,
                se_ratio=se_ratio,
                bn_momentum=0.999,
                se_act="relu",
            )
            channels = stage.channels
            block_id += 1
    head = (
        arch.make_divisible(MOBILENET_V2_HEAD * width, divisor)
        if MOBILENET_V2_HEAD_SHRINKS or width > 1.0
        else MOBILENET_V2_HEAD
    )
    x = conv_bn_act(K, x, head, 1, 1, act, ("Conv_1", "Conv_1_bn", "out_relu"), 0.999)
    if include_top:
        x = classifier_head(K, x, classes, dropout, pool_name="global_average_pooling2d")
    return K.Model(inputs, x, name=f"mobilenet_v2_{width:g}_{resolution}")

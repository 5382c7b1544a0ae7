"""MobileNetV1 and MobileNetV2.

- Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", arXiv:1704.04861, 2017 (depthwise separable convolutions, width
  multiplier alpha, resolution multiplier rho).
- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.

Layer names and parameter counts equal keras.applications.MobileNet / MobileNetV2.
"""

from __future__ import annotations

from types import ModuleType

from mobilecv import arch
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
):
    K = keras
    stages = arch.scale(MOBILENET_V1_STAGES, width, depth)
    inputs = _input(K, resolution, input_channels)
    x = conv_bn_act(
        K,
        inputs,
        arch.make_divisible(MOBILENET_V1_STEM * width),
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
):
    K = keras
    stages = arch.scale(MOBILENET_V2_STAGES, width, depth)
    inputs = _input(K, resolution, input_channels)
    channels = arch.make_divisible(MOBILENET_V2_STEM * width)
    x = conv_bn_act(
        K, inputs, channels, 3, 2, "relu6", ("Conv1", "bn_Conv1", "Conv1_relu"), bn_momentum=0.999
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
                "relu6",
                prefix,
                bn_momentum=0.999,
            )
            channels = stage.channels
            block_id += 1
    head = (
        arch.make_divisible(MOBILENET_V2_HEAD * width)
        if MOBILENET_V2_HEAD_SHRINKS or width > 1.0
        else MOBILENET_V2_HEAD
    )
    x = conv_bn_act(K, x, head, 1, 1, "relu6", ("Conv_1", "Conv_1_bn", "out_relu"), 0.999)
    if include_top:
        x = classifier_head(K, x, classes, dropout, pool_name="global_average_pooling2d")
    return K.Model(inputs, x, name=f"mobilenet_v2_{width:g}_{resolution}")

"""EfficientNet B0-B7, EfficientNet-Lite0-4 and a generic compound-scaled EfficientNet.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019. The Lite variants follow the TensorFlow TPU EfficientNet-Lite README: ReLU6
instead of swish, no squeeze-excite, and the stem, head, first and last stage kept fixed
while scaling, so that they quantise well on mobile accelerators.

The B-series equals keras.applications.EfficientNetB* parameter for parameter and keeps
its layer names (including the input Normalization, which holds weights).

Input scaling follows the `input_range` knob, the range the model declares (see
mobilecv.modelinfo), so that the stem always sees what keras.applications' stem sees:
B0-B7 normalise p / 255 for pixels p, Lite takes (p - 127) / 128. `pixels` ([0, 255])
therefore reproduces keras.applications exactly (Rescaling(1/255) + Normalization);
`unit` ([0, 1], the default) needs no Rescaling for B0-B7 and one for Lite; `symmetric`
([-1, 1]) is within one int8 step of Lite's stem input, so Lite spends no op on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from mobilecv import arch
from mobilecv.layers import classifier_head, conv_bn_act, inverted_residual
from mobilecv.modelinfo import InputRange
from mobilecv.registry import register_model

EFFICIENTNET_STAGES = arch.decode_table(
    [
        "ir_r1_k3_s1_e1_c16_se0.25",
        "ir_r2_k3_s2_e6_c24_se0.25",
        "ir_r2_k5_s2_e6_c40_se0.25",
        "ir_r3_k3_s2_e6_c80_se0.25",
        "ir_r3_k5_s1_e6_c112_se0.25",
        "ir_r4_k5_s2_e6_c192_se0.25",
        "ir_r1_k3_s1_e6_c320_se0.25",
    ]
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DROP_CONNECT_RATE = 0.2


@dataclass(frozen=True)
class Row:
    width: float
    depth: float
    resolution: int
    dropout: float


EFFICIENTNET_ROWS = {
    "b0": Row(1.0, 1.0, 224, 0.2),
    "b1": Row(1.0, 1.1, 240, 0.2),
    "b2": Row(1.1, 1.2, 260, 0.3),
    "b3": Row(1.2, 1.4, 300, 0.3),
    "b4": Row(1.4, 1.8, 380, 0.4),
    "b5": Row(1.6, 2.2, 456, 0.4),
    "b6": Row(1.8, 2.6, 528, 0.5),
    "b7": Row(2.0, 3.1, 600, 0.5),
}
EFFICIENTNET_LITE_ROWS = {
    "lite0": Row(1.0, 1.0, 224, 0.2),
    "lite1": Row(1.0, 1.1, 240, 0.2),
    "lite2": Row(1.1, 1.2, 260, 0.3),
    "lite3": Row(1.2, 1.4, 280, 0.3),
    "lite4": Row(1.4, 1.8, 300, 0.3),
}
# A Rescaling this close to the identity is left out: one int8 step of [-1, 1] is 2/255.
IDENTITY_TOLERANCE = 1.0 / 128.0


def stem_rescaling(lite: bool, input_range: InputRange) -> tuple[float, float] | None:
    """(scale, offset) taking the declared range to the range keras.applications feeds
    its stem (B0-B7: p / 255 before Normalization; Lite: (p - 127) / 128), or None when
    that is the identity (within IDENTITY_TOLERANCE)."""
    lo, hi = InputRange(input_range).bounds
    # Declared x in [lo, hi] stands for the pixel p = 255 (x - lo) / (hi - lo).
    scale, offset = 1.0 / (hi - lo), -lo / (hi - lo)  # p / 255
    if lite:
        scale, offset = scale * 255.0 / 128.0, offset * 255.0 / 128.0 - 127.0 / 128.0
    if abs(scale - 1.0) <= IDENTITY_TOLERANCE and abs(offset) <= IDENTITY_TOLERANCE:
        return None
    return scale, offset


def _rescale(K: ModuleType, x, scale: float, offset: float):
    """x * scale + offset, written as (x + offset / scale) * scale.

    The converter folds the multiplication into the stem conv, so the one op left is an
    ADD on the input's own int8 scale. A single Rescaling(scale, offset) becomes MUL then
    ADD, and the converter gives the MUL's output a range that also spans the ADD's: Lite's
    stem then sees about 170 of the 256 int8 levels of the image.
    """
    if offset:
        x = K.layers.Rescaling(1.0, offset=offset / scale, name="input_offset")(x)
    return K.layers.Rescaling(scale, name="rescaling")(x)


def _efficientnet(
    K: ModuleType,
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    dropout: float,
    lite: bool,
    name: str,
    input_range: InputRange,
):
    act = "relu6" if lite else "swish"
    stages = arch.scale(
        EFFICIENTNET_STAGES, width, depth, fixed_depth_stages=(0, -1) if lite else ()
    )
    inputs = K.layers.Input(shape=(resolution, resolution, input_channels), name="input")
    x = inputs
    rescaling = stem_rescaling(lite, input_range)
    if rescaling is not None:
        x = _rescale(K, x, *rescaling)
    if not lite:
        x = K.layers.Normalization(axis=-1, name="normalization")(x)
    stem = STEM_CHANNELS if lite else arch.make_divisible(STEM_CHANNELS * width)
    x = conv_bn_act(K, x, stem, 3, 2, act, ("stem_conv", "stem_bn", "stem_activation"))
    total_blocks = float(sum(stage.repeats for stage in stages))
    channels, block = stem, 0
    for stage_index, stage in enumerate(stages):
        for i in range(stage.repeats):
            x = inverted_residual(
                K,
                x,
                channels,
                stage.channels,
                stage.kernel,
                stage.stride if i == 0 else 1,
                stage.expand,
                act,
                f"block{stage_index + 1}{chr(97 + i)}_",
                se_ratio=0.0 if lite else stage.se_ratio,
                drop_rate=DROP_CONNECT_RATE * block / total_blocks,
                style="efficientnet",
            )
            channels = stage.channels
            block += 1
    head = HEAD_CHANNELS if lite else arch.make_divisible(HEAD_CHANNELS * width)
    x = conv_bn_act(K, x, head, 1, 1, act, ("top_conv", "top_bn", "top_activation"))
    if include_top:
        x = classifier_head(K, x, classes, dropout)
    return K.Model(inputs, x, name=name)


def _register_row(variant: str, row: Row, lite: bool) -> None:
    name = f"efficientnet_{variant}"

    def builder(
        *,
        width: float,
        depth: float,
        resolution: int,
        classes: int,
        include_top: bool,
        input_channels: int,
        keras: ModuleType,
        input_range: InputRange = InputRange.UNIT,
        dropout: float = row.dropout,
    ):
        return _efficientnet(
            keras,
            width=width,
            depth=depth,
            resolution=resolution,
            classes=classes,
            include_top=include_top,
            input_channels=input_channels,
            dropout=dropout,
            lite=lite,
            name=name,
            input_range=input_range,
        )

    builder.__name__ = name
    register_model(
        name,
        family="efficientnet",
        default_resolution=row.resolution,
        defaults={"width": row.width, "depth": row.depth},
    )(builder)


for _variant, _row in EFFICIENTNET_ROWS.items():
    _register_row(_variant, _row, lite=False)
for _variant, _row in EFFICIENTNET_LITE_ROWS.items():
    _register_row(_variant, _row, lite=True)


@register_model("efficientnet", family="efficientnet", default_resolution=224)
def efficientnet(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    input_range: InputRange = InputRange.UNIT,
    dropout: float = 0.2,
    phi: float | None = None,
    lite: bool = False,
):
    """Any point of the compound-scaling space; ``phi`` is resolved by ``registry.build``."""
    return _efficientnet(
        keras,
        width=width,
        depth=depth,
        resolution=resolution,
        classes=classes,
        include_top=include_top,
        input_channels=input_channels,
        dropout=dropout,
        lite=lite,
        name=f"efficientnet_w{width:.3g}_d{depth:.3g}_r{resolution}",
        input_range=input_range,
    )

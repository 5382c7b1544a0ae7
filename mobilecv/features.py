"""Backbones: any registered classifier as named feature maps at its strides.

timm's ``features_only`` models return the last feature map at each reduction (stride)
together with ``feature_info`` (channels, reduction, module). mobilecv does the same for
every registered network without per-family code: the trunk (the model built with
``include_top=False``) is walked in topological order, each 4D layer output is put in the
stride bucket ``2 ** round(log2(input_size / output_size))`` (valid padding, as in AlexNet
and LeNet, gives sizes that are not exact powers of two), and the last layer of each
bucket is that stride's feature map. For MobileNetV2 that gives ``block_13_expand_relu`` at
stride 16, the layer SSD-MobileNetV2 taps; for ResNets the stage outputs
(``conv4_block6_out``).

Heads (localisation, landmarks, detection) and decoders (U-Net) attach to these maps by
name: ``"stride8"``, ``"stride16"``, ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import ModuleType

from mobilecv.errors import InputError

DEFAULT_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of a backbone, as timm's ``feature_info`` describes it."""

    name: str  # "stride8": the key of the backbone's output dict
    stride: int  # input pixels per feature-map cell (the reduction)
    channels: int
    size: int  # feature-map height (= width for square inputs)
    layer: str  # the trunk layer whose output it is

    def to_dict(self) -> dict:
        return asdict(self)


def feature_name(stride: int) -> str:
    return f"stride{stride}"


def stride_of(input_size: int, feature_size: int) -> int:
    """The power-of-two stride bucket of a feature map of ``feature_size`` cells."""
    return 2 ** round(math.log2(input_size / feature_size))


def _spatial_size(layer) -> int | None:
    """Height of a layer's 4D (N, H, W, C) output, or None for anything else."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None:
        return None
    return int(shape[1])


def trunk_features(trunk) -> list[FeatureInfo]:
    """Every stride bucket of a trunk (include_top=False model), shallow to deep."""
    shape = tuple(trunk.input_shape)
    if len(shape) != 4 or shape[1] is None:
        raise InputError(
            f"feature maps need an image model with a fixed (H, W, C) input; got {shape}"
        )
    input_size = int(shape[1])
    last: dict[int, FeatureInfo] = {}
    for layer in trunk.layers[1:]:
        size = _spatial_size(layer)
        if size is None:
            continue
        stride = stride_of(input_size, size)
        if stride < 2:
            continue
        last[stride] = FeatureInfo(
            feature_name(stride), stride, int(layer.output.shape[-1]), size, layer.name
        )
    return [last[s] for s in sorted(last)]


def select(info: list[FeatureInfo], strides: tuple[int, ...] | None) -> list[FeatureInfo]:
    """The requested strides (default: 4, 8, 16, 32 as far as the network goes)."""
    available = {f.stride: f for f in info}
    if strides is None:
        chosen = [available[s] for s in DEFAULT_STRIDES if s in available]
        if not chosen:
            raise InputError(
                f"the network has no feature map at strides {DEFAULT_STRIDES}; it has "
                f"{sorted(available)}"
            )
        return chosen
    missing = [s for s in strides if s not in available]
    if missing:
        raise InputError(
            f"no feature map at stride {', '.join(map(str, missing))}; this network at this "
            f"resolution has strides {', '.join(map(str, sorted(available)))}"
        )
    return [available[s] for s in sorted(set(strides))]


def backbone_from_trunk(
    trunk, strides: tuple[int, ...] | None = None, keras: ModuleType | None = None
):
    """A model with the trunk's input and a dict of named feature maps as outputs.

    The returned model shares the trunk's layers (and weights); ``feature_info`` is set on
    it as an attribute (untracked by Keras) and also returned by :func:`feature_info`.
    """
    from mobilecv._tf import get_keras, is_keras3_model

    K = keras or get_keras("keras3" if is_keras3_model(trunk) else "tf_keras")
    chosen = select(trunk_features(trunk), strides)
    outputs = {f.name: trunk.get_layer(f.layer).output for f in chosen}
    model = K.Model(trunk.inputs, outputs, name=f"{trunk.name}_features")
    object.__setattr__(model, "_mobilecv_feature_info", tuple(chosen))
    return model


def backbone(name: str, *, strides: tuple[int, ...] | None = None, **knobs):
    """Registered network ``name`` built as a backbone of named feature maps.

    ``knobs`` are the builder's (width, depth, resolution, input_channels, keras, ...);
    ``include_top`` and ``classes`` do not apply to a backbone.
    """
    import mobilecv

    for knob in ("include_top", "classes"):
        if knobs.get(knob) not in (None, False):
            raise InputError(f"a backbone has no classifier: {knob!r} does not apply")
        knobs.pop(knob, None)
    keras = knobs.get("keras")
    trunk = mobilecv.build(name, include_top=False, **knobs)
    from mobilecv._tf import get_keras

    return backbone_from_trunk(trunk, strides, get_keras(keras) if keras else None)


def feature_info(model) -> tuple[FeatureInfo, ...]:
    """The feature maps a backbone model returns (set by :func:`backbone`)."""
    info = getattr(model, "_mobilecv_feature_info", None)
    if info is None:
        raise InputError(f"{model.name} is not a backbone built by mobilecv.features.backbone")
    return info

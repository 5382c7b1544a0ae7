"""Backbones: every registered network as named feature maps at its strides."""

from __future__ import annotations

import pytest

import mobilecv
from mobilecv.errors import InputError
from mobilecv.features import (
    DEFAULT_STRIDES,
    backbone,
    backbone_from_trunk,
    feature_info,
    stride_of,
    trunk_features,
)
from tests.conftest import tiny_knobs


def _one_per_family():
    """Every registered classifier; a family's siblings (same builder code) only in the slow run."""
    seen = set()
    for name in mobilecv.list_models():
        entry = mobilecv.registry.get(name)
        if entry.task != "classification":
            continue  # task models are heads on these backbones (test_tasks.py)
        family = entry.family
        yield pytest.param(name, marks=[pytest.mark.slow] if family in seen else [], id=name)
        seen.add(family)


@pytest.mark.parametrize("name", list(_one_per_family()))
def test_backbone_feature_maps_and_parameter_split(name):
    knobs = tiny_knobs(name)
    knobs.pop("classes", None)
    trunk = mobilecv.build(name, include_top=False, **knobs)
    every = trunk_features(trunk)

    # Default strides: 4, 8, 16, 32 as far as the network goes, matching the tensors.
    model = backbone_from_trunk(trunk)
    info = feature_info(model)
    assert info and {f.stride for f in info} <= set(DEFAULT_STRIDES)
    assert [f.stride for f in info] == sorted(f.stride for f in info)
    for f in info:
        _, height, width, channels = tuple(model.output[f.name].shape)
        assert (height, width, channels) == (f.size, f.size, f.channels), f
        assert stride_of(knobs["resolution"], height) == f.stride
        assert f.name == f"stride{f.stride}"

    # Backbone (down to the deepest map) + classifier head = the classifier.
    full = backbone_from_trunk(trunk, tuple(f.stride for f in every))
    assert full.count_params() == trunk.count_params()
    trailing = trunk.layers[[layer.name for layer in trunk.layers].index(every[-1].layer) + 1 :]
    assert not any(layer.weights for layer in trailing), "weights after the deepest map"
    classifier = mobilecv.build(name, classes=10, **knobs)
    in_backbone = {layer.name for layer in full.layers}
    head = [layer for layer in classifier.layers if layer.name not in in_backbone]
    assert full.count_params() + sum(layer.count_params() for layer in head) == (
        classifier.count_params()
    )


def test_strides_the_network_lacks_and_classifier_knobs_are_input_errors():
    with pytest.raises(InputError, match="stride 64"):
        backbone("mobilenet_v2", width=0.35, resolution=64, strides=(8, 64))
    with pytest.raises(InputError, match="classes"):
        backbone("mobilenet_v2", width=0.35, resolution=64, classes=10)


def test_mobilenet_v2_taps_the_layers_ssd_uses():
    model = backbone("mobilenet_v2", width=0.35, resolution=96)
    layers = {f.stride: f.layer for f in feature_info(model)}
    assert layers == {
        4: "block_3_expand_relu",
        8: "block_6_expand_relu",
        16: "block_13_expand_relu",
        32: "out_relu",
    }


def test_keras3_backbone_has_the_same_maps():
    k2 = feature_info(backbone("resnet18", width=0.25, resolution=64))
    k3 = feature_info(backbone("resnet18", width=0.25, resolution=64, keras="keras3"))
    assert k2 == k3

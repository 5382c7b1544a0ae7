"""Profiler figures on hand-checkable models."""

import pytest

import mobilecv
from mobilecv._tf import get_keras
from mobilecv.profiling import profile


@pytest.mark.parametrize("keras", ["tf_keras", "keras3"])
def test_macs_params_and_peak_activations_by_hand(keras):
    K = get_keras(keras)
    inputs = K.layers.Input((8, 8, 3))
    a = K.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # 8*8*4*27 = 6912
    b = K.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(a)  # 4*4*4*9 = 576
    c = K.layers.Conv2D(6, 1, name="pw")(b)  # 4*4*6*4 = 384
    d = K.layers.GlobalAveragePooling2D(name="gap")(c)
    e = K.layers.Dense(5, name="fc")(d)  # 6*5 = 30
    prof = profile(K.Model(inputs, e))
    macs = {row.name: row.macs for row in prof.layers}
    assert (macs["conv"], macs["dw"], macs["pw"], macs["gap"], macs["fc"]) == (
        6912,
        576,
        384,
        0,
        30,
    )
    assert prof.macs == 6912 + 576 + 384 + 30
    assert prof.params == (27 * 4 + 4) + (9 * 4 + 4) + (4 * 6 + 6) + (6 * 5 + 5)
    # Peak: while conv runs, its input (192) and output (256) are alive.
    assert prof.activation_bytes == (8 * 8 * 3 + 8 * 8 * 4) * 4
    assert prof.activation_bytes_int8 == 8 * 8 * 3 + 8 * 8 * 4


def test_residual_keeps_the_skip_alive():
    K = get_keras()
    inputs = K.layers.Input((4, 4, 2))
    a = K.layers.Conv2D(2, 1, name="a")(inputs)
    b = K.layers.Conv2D(2, 1, name="b")(a)
    c = K.layers.Conv2D(2, 1, name="c")(b)
    out = K.layers.Add()([a, c])
    prof = profile(K.Model(inputs, out))
    # while c runs: a (skip), b, c are alive: 3 * 32 elements
    assert prof.activation_bytes_int8 == 3 * 32


def test_grouped_conv_macs():
    K = get_keras()
    inputs = K.layers.Input((6, 6, 8))
    out = K.layers.Conv2D(4, 3, padding="same", groups=2, name="g")(inputs)
    assert profile(K.Model(inputs, out)).macs == 6 * 6 * 4 * 9 * 4


def test_macs_scale_with_resolution_squared():
    small = profile(mobilecv.build("mobilenet_v1", width=0.25, resolution=64)).macs
    big = profile(mobilecv.build("mobilenet_v1", width=0.25, resolution=128)).macs
    classifier = 256 * 1000
    assert (big - classifier) == pytest.approx(4 * (small - classifier), rel=1e-9)

"""Receptive fields (size, jump, start) against hand computation and against autodiff.

The recurrence (Araujo et al., Distill 2019): r_out = r_in + (k - 1) j_in, j_out = j_in s,
start_out = start_in + ((k - 1)/2 - p) j_in, from r = j = 1, start = 0 at the input (the
first pixel's centre is 0).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import mobilecv
from mobilecv._tf import get_keras, tf
from mobilecv.arch import Field, merge_fields, same_pad_before, window_field
from mobilecv.profiling import format_table, profile, receptive_fields


def _sizes(model, names):
    fields = receptive_fields(model)
    return [fields[name][0].size for name in names]


def test_window_field_recurrence_by_hand():
    # 3x3 dilated by 2 (5 taps wide), stride 2, one zero before: r 1 + 4, j 2, start 2 - 1
    assert Field().then(window_field(3, 2, 1, dilation=2)) == Field(5, 2, 1.0)
    # after a jump of 2: r 5 + (3 - 1) 2 = 9, j 4, start 1 + (1 - 1) 2 = 1
    assert Field(5, 2, 1.0).then(window_field(3, 2, 1)) == Field(9, 4, 1.0)
    # ZeroPadding of 3 moves the first centre 3 input units left
    assert Field(1, 2, 0).then(window_field(1, 1, 3)) == Field(1, 2, -6)
    # transposed 4-tap, stride 2, "same" (p = 1): ceil(4/2) = 2 input units, jump halves
    assert Field(1, 4, 0).then(window_field(4, 2, 1, transposed=True)) == Field(5, 2, -1.0)


def test_same_padding_puts_the_odd_zero_after():
    assert same_pad_before(7, 3, 2) == 1  # total (4 - 1) 2 + 3 - 7 = 2
    assert same_pad_before(8, 3, 2) == 0  # total 1: TF puts it after the last input
    assert same_pad_before(8, 3, 1, dilation=2) == 2  # 5 taps: 2 on each side
    assert same_pad_before(None, 3, 2) == 0


def test_merge_takes_the_union_and_needs_one_grid():
    assert merge_fields([Field(5, 2, 0), Field(11, 2, 0)]) == Field(11, 2, 0)
    assert merge_fields([Field(5, 2, 0), Field(5, 2, 2)]) == Field(7, 2, 1)
    assert merge_fields([Field(5, 2, 0), Field(5, 4, 0)]) is None


def test_lenet5_by_hand():
    # conv1 5x5: 5; pool1 2/2: 5 + 1 = 6 (j 2); conv2 5x5: 6 + 4*2 = 14; pool2: 14 + 2 = 16
    # (j 4); fc3 sees pool2's 5x5 grid: 16 + 4*4 = 32, the whole 32x32 input. Starts: 2,
    # 2.5, 2.5 + 2*2 = 6.5, 7.5, 7.5 + 2*4 = 15.5 (the image centre).
    prof = profile(mobilecv.build("lenet5"))
    rows = {r.name: r for r in prof.layers}
    names = ["conv1", "pool1", "conv2", "pool2", "fc3"]
    assert [rows[n].receptive_field for n in names] == [
        [5, 5],
        [6, 6],
        [14, 14],
        [16, 16],
        [32, 32],
    ]
    assert [rows[n].jump[0] for n in names[:4]] == [1, 2, 2, 4]
    assert [rows[n].start[0] for n in names] == [2, 2.5, 6.5, 7.5, 15.5]
    table = format_table(prof)
    assert "RF" in table.splitlines()[0]
    assert "15.5" in table.splitlines()[-5]  # fc3's start


def test_vgg16_by_hand():
    # 3x3 "same" convs add 2 j; 2x2 pools add j and double it.
    # block1: 1 + 2 + 2 = 5, pool 6 (j 2); block2: 6 + 4 + 4 = 14, pool 16 (j 4);
    # block3: 16 + 3*8 = 40, pool 44 (j 8); block4: 44 + 3*16 = 92, pool 100 (j 16);
    # block5: 100 + 3*32 = 196 at block5_conv3 (the last conv), pool5 196 + 16 = 212.
    # The 212 quoted for VGG-16 (Araujo et al.'s table) is pool5's field.
    model = mobilecv.build("vgg16", width=0.25, resolution=32, include_top=False)
    names = [f"block{b}_pool" for b in range(1, 6)] + ["block5_conv3"]
    assert _sizes(model, names) == [6, 16, 44, 100, 212, 196]
    fields = receptive_fields(model)
    assert fields["block5_pool"][0].jump == 32
    # "same" 3x3 convs keep the start; each 2x2 pool moves it half a jump: 0.5 + 1 + ... + 8
    assert fields["block5_conv3"][0].start == 15.5 - 8


def test_resnet50_by_hand():
    # conv1 7x7/2: 7 (j 2); pool1 3x3/2: 7 + 2*2 = 11 (j 4); conv2_x: 3 blocks, one 3x3 each:
    # 11 + 3*2*4 = 35. conv3_x strides in its first 1x1 (Keras' v1): j 8, 35 + 4*2*8 = 99;
    # conv4_x: j 16, 99 + 6*2*16 = 291; conv5_x: j 32, 291 + 3*2*32 = 483. The shortcuts
    # (1x1) see less and share the centre, so the Add keeps the main path's field. Starts:
    # conv1_pad (3 zeros) and 7x7 valid cancel, pool1_pad (1) and 3x3 valid cancel, "same"
    # 3x3s keep it: 0.
    model = mobilecv.build("resnet50", width=0.25, resolution=32, include_top=False)
    names = ["conv1_conv", "pool1_pool", "conv2_block3_out", "conv3_block4_out"]
    names += ["conv4_block6_out", "conv5_block3_out"]
    assert _sizes(model, names) == [7, 11, 35, 99, 291, 483]
    last = receptive_fields(model)["conv5_block3_out"]
    assert (last[0].jump, last[0].start) == (32, 0)


def _support(model, unit: tuple) -> list[tuple[int, int]]:
    """First and last input index, per spatial axis, whose pixels move output ``unit``
    (all-positive weights, so no cancellation): the true field, clipped to the image."""
    K = get_keras()
    for w in model.weights:
        w.assign(np.full(w.shape, 0.1, np.float32))
    x = tf().constant(np.random.rand(1, *model.input_shape[1:]).astype(np.float32) + 1)
    with tf().GradientTape() as tape:
        tape.watch(x)
        y = model(x)
        target = y[(0, *unit, 0)]
    grad = np.abs(tape.gradient(target, x).numpy()[0, ..., 0])
    del K
    spans = []
    for axis in range(grad.ndim):
        other = tuple(a for a in range(grad.ndim) if a != axis)
        hit = np.nonzero(grad.sum(axis=other))[0]
        spans.append((int(hit[0]), int(hit[-1])))
    return spans


def _predicted(fields, unit, shape) -> list[tuple[int, int]]:
    spans = []
    for f, i, n in zip(fields, unit, shape, strict=True):
        low, high = f.span(i)
        spans.append((max(0, int(np.ceil(low))), min(n - 1, int(np.floor(high)))))
    return spans


def _check_against_gradient(model, units):
    fields = receptive_fields(model)[model.layers[-1].name]
    for unit in units:
        assert _predicted(fields, unit, model.input_shape[1:-1]) == _support(model, unit), unit


def test_2d_layers_against_autodiff():
    K = get_keras()
    i = K.Input((23, 23, 1))
    x = K.layers.ZeroPadding2D(((2, 0), (1, 1)))(i)
    x = K.layers.Conv2D(2, 3, strides=2, padding="same")(x)
    x = K.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")(x)
    a = K.layers.SeparableConv2D(2, (3, 1), padding="same")(x)
    b = K.layers.AveragePooling2D(3, strides=1, padding="same")(x)
    x = K.layers.Concatenate()([a, b])
    x = K.layers.AveragePooling2D(2)(x)  # max pooling routes gradients to one tap
    x = K.layers.Conv2D(1, (1, 3), padding="valid")(x)
    model = K.Model(i, x)
    _check_against_gradient(model, [(0, 0), (2, 1), (5, 3)])


def test_1d_causal_dilated_and_3d_against_autodiff():
    K = get_keras()
    i = K.Input((40, 1))
    x = K.layers.Conv1D(2, 3, dilation_rate=4, padding="causal")(i)
    x = K.layers.Conv1D(1, 5, strides=3)(x)
    _check_against_gradient(K.Model(i, x), [(0,), (4,), (11,)])
    i = K.Input((9, 11, 12, 1))
    x = K.layers.Conv3D(2, (3, 3, 1), strides=(1, 2, 2), padding="same")(i)
    x = K.layers.AveragePooling3D(2)(x)
    _check_against_gradient(K.Model(i, x), [(0, 0, 0), (3, 2, 2)])


def test_transposed_conv_field_size_and_centre():
    # Output unit o of a 4-tap stride-2 transposed conv takes input units (o - 2)/2 .. (o + 1)/2:
    # always 2 of them (ceil(4/2)), so its field is 3 + (2 - 1) 2 = 5 pixels (the conv before
    # has r 3, j 2). Their centres step in a staircase (input units -0.5, 0.5, 0.5, 1.5 for
    # o = 0..3); the start is the staircase's line, off by at most (s - 1) / (2 s) input
    # units = 0.5 pixel here.
    K = get_keras()
    i = K.Input((12, 12, 1))
    x = K.layers.Conv2D(1, 3, strides=2, padding="same")(i)
    x = K.layers.Conv2DTranspose(1, 4, strides=2, padding="same")(x)
    model = K.Model(i, x)
    field = receptive_fields(model)[model.layers[-1].name][0]
    assert (field.size, field.jump) == (5, 1)
    for o in (3, 4, 5, 6):
        (low, high), _ = _support(model, (o, o))
        assert high - low + 1 == field.size
        assert abs((low + high) / 2 - (field.start + o * field.jump)) <= 0.5


def test_profile_cli_json_has_the_fields():
    out = subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", "profile", "lenet5", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    layers = {row["name"]: row for row in json.loads(out.stdout)["layers"]}
    assert layers["conv2"]["receptive_field"] == [14, 14]
    assert layers["pool2"]["jump"] == [4, 4]
    assert layers["fc3"]["start"] == [15.5, 15.5]


@pytest.mark.parametrize("keras", ["tf_keras", "keras3"])
def test_squeeze_excite_gate_does_not_widen_the_field(keras):
    K = get_keras(keras)
    i = K.Input((16, 16, 4))
    x = K.layers.Conv2D(4, 3, padding="same")(i)
    g = K.layers.GlobalAveragePooling2D()(x)
    g = K.layers.Reshape((1, 1, 4))(g)
    x = K.layers.Multiply(name="gated")([x, g])
    fields = receptive_fields(K.Model(i, x))
    assert fields["gated"] == (Field(3, 1, 0),) * 2

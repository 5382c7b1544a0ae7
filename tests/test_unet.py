"""U-Nets (issue 14 section 1) and the one output-size formula of conv and transposed conv."""

from __future__ import annotations

import numpy as np
import pytest

import mobilecv
from mobilecv import arch
from mobilecv._tf import get_keras
from mobilecv.errors import InputError
from mobilecv.models.unet import UNET_STAGES, plan, stage_table
from mobilecv.profiling import profile

# ------------------------------------------------------------------ output sizes


def test_output_size_of_the_courses_transposed_convolution():
    """2x2 input, 3x3 filter, stride 2, padding 1: (n - 1) s - 2p + f + output_padding."""
    assert arch.output_size(2, 3, 2, 1, transposed=True, output_padding=1) == 4
    assert arch.output_size(2, 3, 2, 1, transposed=True) == 3  # no output padding: 5 - 2
    # Keras names the same layer by "same": p = 3 // 2 = 1, and 2 * 2 = 4 without it.
    assert arch.output_size(2, 3, 2, "same", transposed=True, output_padding=1) == 4
    assert arch.output_size(2, 3, 2, "same", transposed=True) == 4
    assert arch.output_size(2, 3, 2, "valid", transposed=True) == 5  # (2 - 1) 2 + 3


def test_output_size_of_convolutions():
    assert arch.output_size(572, 3) == 570  # the U-Net's unpadded 3x3
    assert arch.output_size(7, 3, 2, "same") == 4
    assert arch.output_size(7, 3, 2, 1) == 4  # (7 + 2 - 3) // 2 + 1
    assert arch.output_size(9, 3, 1, dilation=2) == 5  # the 5-pixel dilated kernel
    with pytest.raises(InputError, match="no output"):
        arch.output_size(2, 3)
    with pytest.raises(InputError, match="padding"):
        arch.output_size(8, 3, 1, "full")


# Windowed layers whose shapes the profile computes (kind, kernel, stride, padding, extra).
LAYERS = [
    ("Conv2D", 3, 2, "same", {}),
    ("Conv2D", 5, 3, "valid", {}),
    ("Conv2D", 3, 1, "valid", {"dilation_rate": 2}),
    ("DepthwiseConv2D", 3, 2, "valid", {}),
    ("MaxPooling2D", 3, 2, "valid", {}),
    ("AveragePooling2D", 2, 2, "same", {}),
    ("Conv2DTranspose", 3, 2, "same", {}),
    ("Conv2DTranspose", 3, 2, "valid", {}),
    ("Conv2DTranspose", 2, 3, "valid", {}),
    ("Conv2DTranspose", 3, 2, "same", {"output_padding": 1}),
    ("Conv2DTranspose", 4, 2, "same", {"output_padding": 0}),
    ("Conv2DTranspose", 3, 2, "valid", {"output_padding": 1}),
    ("Conv2DTranspose", 3, 1, "same", {"dilation_rate": 2}),
]


@pytest.mark.parametrize("keras", ["tf_keras", "keras3"])
def test_profile_output_sizes_follow_keras(keras):
    K = get_keras(keras)
    inputs = K.Input((7, 9, 3))
    outputs = []
    for i, (kind, kernel, stride, padding, extra) in enumerate(LAYERS):
        layer = getattr(K.layers, kind)
        filters = () if kind.endswith("Pooling2D") or kind.startswith("Depthwise") else (4,)
        args = (*filters, kernel)
        outputs.append(layer(*args, strides=stride, padding=padding, name=f"l{i}", **extra)(inputs))
    rows = {row.name: row for row in profile(K.Model(inputs, outputs)).layers}
    for i, tensor in enumerate(outputs):
        assert rows[f"l{i}"].output_shape == [None, *map(int, tensor.shape[1:])], LAYERS[i]


def _scatter(x: np.ndarray, kernel: np.ndarray, stride: int, out: int, pad: int):
    """A transposed conv by hand: each input value times each tap into the full output,
    then ``out`` pixels kept from ``pad``; returns (output, multiply-adds done)."""
    n, _, cin = x.shape
    k, _, cout, _ = kernel.shape  # Keras' (kh, kw, cout, cin)
    full = np.zeros(((n - 1) * stride + k + out, (n - 1) * stride + k + out, cout))
    macs = 0
    for i in range(n):
        for j in range(n):
            for a in range(k):
                for b in range(k):
                    full[i * stride + a, j * stride + b] += kernel[a, b] @ x[i, j]
                    macs += cin * cout
    return full[pad : pad + out, pad : pad + out], macs


@pytest.mark.parametrize(("padding", "output_padding"), [("same", None), ("same", 1)])
def test_transposed_conv_profile_counts_every_tap(padding, output_padding):
    """The course's layer (2x2 in, 3x3, stride 2, 4x4 out) with 3 in and 5 out channels: 4
    inputs x 9 taps x 3 x 5 = 540 MACs, the multiply-adds of a hand-written scatter that
    reproduces Keras' output. The full scatter is (2 - 1) 2 + 3 = 5 pixels; TF's "same"
    keeps the first 4 (its odd pixel of padding goes at the end), where the course's p = 1
    and output_padding 1 keep pixels 1 to 4: the same size, one pixel apart."""
    K = get_keras("tf_keras")
    inputs = K.Input((2, 2, 3))
    layer = K.layers.Conv2DTranspose(
        5, 3, strides=2, padding=padding, output_padding=output_padding, use_bias=False
    )
    model = K.Model(inputs, layer(inputs))
    x = np.random.rand(1, 2, 2, 3).astype("float32")
    expected, macs = _scatter(x[0], layer.get_weights()[0], 2, out=4, pad=0)
    np.testing.assert_allclose(model(x).numpy()[0], expected, atol=1e-5)
    row = profile(model).layers[1]
    assert row.output_shape == [None, 4, 4, 5]
    assert row.macs == macs == 2 * 2 * 3 * 3 * 3 * 5 == 540


# --------------------------------------------------------------------------- unet


def test_unet_table_is_the_papers_and_depth_scales_the_stages():
    assert stage_table(4) == UNET_STAGES
    assert [s.channels for s in UNET_STAGES] == [64, 128, 256, 512, 1024]
    assert [s.channels for s in arch.scale(stage_table(4), 0.25)] == [16, 32, 64, 128, 256]
    model = mobilecv.build("unet", width=0.25, depth=0.5, resolution=32, classes=3)
    assert [layer.name for layer in model.layers if "pool" in layer.name] == [
        "down1_pool",
        "down2_pool",
    ]
    assert model.output_shape == {"mask": (None, 32, 32, 3)}


def test_unet_valid_padding_is_the_papers_572_to_388():
    stages = stage_table(4)
    assert plan(572, stages, "valid") == [568, 280, 136, 64, 388]  # Fig. 1's skip sizes
    with pytest.raises(InputError, match="try 556 or 572"):
        plan(570, stages, "valid")
    small = mobilecv.build("unet", width=0.25, resolution=188, padding="valid", classes=2)
    assert plan(188, stages, "valid") == [184, 88, 40, 16, 4]
    assert small.output_shape == {"mask": (None, 4, 4, 2)}
    crops = [layer for layer in small.layers if type(layer).__name__ == "Cropping2D"]
    assert len(crops) == 4


def test_unet_rejects_a_resolution_that_does_not_tile():
    with pytest.raises(InputError, match="does not tile.*try 32 or 48"):
        mobilecv.build("unet", width=0.25, resolution=40)
    with pytest.raises(InputError, match="padding must be one of same, valid"):
        mobilecv.build("unet", width=0.25, resolution=32, padding="full")


def test_unet_mobilenet_v2_is_the_tutorials_decoder_on_any_backbone():
    model = mobilecv.build("unet_mobilenet_v2", width=0.35, resolution=64, classes=3)
    ups = [layer for layer in model.layers if type(layer).__name__ == "Conv2DTranspose"]
    assert [(int(u.output.shape[1]), u.filters) for u in ups] == [
        (4, 176),  # make_divisible(512 * 0.35 = 179.2)
        (8, 88),
        (16, 48),
        (32, 24),
        (64, 3),
    ]
    assert model.get_layer("decoder16_concat").input[1].name.startswith("block_13_expand_relu")
    # ResNet's stride-2 map is pool1_pad, 34 x 34 at 64 px: cropped back to its 32 x 32.
    other = mobilecv.build("unet_mobilenet_v2", backbone="resnet18", width=0.25, resolution=64)
    assert other.output_shape == {"mask": (None, 64, 64, 2)}
    assert other.get_layer("decoder2_crop").output.shape[1] == 32
    with pytest.raises(InputError, match="multiple of 32"):
        mobilecv.build("unet_mobilenet_v2", width=0.25, resolution=48)


@pytest.mark.slow  # 15 s and 32 s on two busy cores
@pytest.mark.parametrize("name", ["unet", "unet_mobilenet_v2"])
def test_unet_converts_to_full_int8_with_no_float_ops(name):
    """Transposed convs, concatenations and the softmax stay integer (TRANSPOSE_CONV)."""
    from mobilecv.converters.tflite import convert
    from mobilecv.inspection import read_tflite

    model = mobilecv.build(name, width=0.25, resolution=32, classes=3)
    calibration = np.random.rand(16, 32, 32, 3).astype("float32")
    result = convert(model, "int8", calibration=calibration, samples=8, verify=False,
                     progress=False)  # fmt: skip
    graph = read_tflite(result.tflite)
    assert graph.quantization == "int8" and graph.float_ops == []
    # The .tflite report counts TRANSPOSE_CONV as the Keras profile counts Conv2DTranspose.
    transposed = [r for r in profile(model).layers if r.type == "Conv2DTranspose"]
    assert graph.op_counts["TRANSPOSE_CONV"] == len(transposed)
    assert graph.macs_by_op["TRANSPOSE_CONV"] == sum(r.macs for r in transposed)
    assert graph.outputs[0].shape_signature[1:] == [32, 32, 3]


def test_unet_batch_norm_sits_between_each_conv_and_its_relu():
    plain = mobilecv.build("unet", width=0.25, resolution=32, depth=0.5)
    normed = mobilecv.build("unet", width=0.25, resolution=32, depth=0.5, batch_norm=True)
    convs = [layer for layer in plain.layers if type(layer).__name__ == "Conv2D"]
    norms = [layer for layer in normed.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(norms) == len(convs) - 1  # every 3x3 conv; not the final 1x1 to the classes
    assert normed.get_layer("down1_conv1").activation.__name__ == "linear"
    assert (
        normed.get_layer("down1_conv1_bn").output.shape
        == plain.get_layer("down1_conv1").output.shape
    )
    # Each conv drops its bias (C) and gains gamma, beta and the moving mean and variance (4 C).
    extra = sum(3 * int(layer.gamma.shape[0]) for layer in norms)
    assert normed.count_params() == plain.count_params() + extra

"""Classic networks (issue 3): per-layer counts, options, N-D variants, twins, LiteRT."""

import numpy as np
import pytest
from conftest import tiny_knobs
from test_weights import _fix_variance, _images, _reference

import mobilecv
from mobilecv import layers
from mobilecv._tf import get_keras
from mobilecv.converters.tflite import convert
from mobilecv.profiling import profile

CLASSICS = [
    "lenet5",
    "alexnet",
    "vgg16",
    "vgg19",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "plain18",
    "plain34",
    "nin",
    "googlenet",
]


def test_lenet5_per_layer_parameters():
    prof = profile(mobilecv.build("lenet5", input_channels=3, classes=10))
    per_layer = {row.name: row.params for row in prof.layers if row.params}
    assert per_layer == {
        "conv1": 456,
        "conv2": 2_416,
        "fc3": 48_120,
        "fc4": 10_164,
        "predictions": 850,
    }
    assert prof.params == 62_006


def test_lenet5_defaults_to_grayscale_and_options():
    model = mobilecv.build("lenet5", classes=10)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("conv1").activation.__name__ == "tanh"
    assert type(model.get_layer("pool1")).__name__ == "AveragePooling2D"
    model = mobilecv.build("lenet5", classes=10, activation="relu", pooling="max")
    assert model.get_layer("conv1").activation.__name__ == "relu"
    assert type(model.get_layer("pool1")).__name__ == "MaxPooling2D"
    with pytest.raises(ValueError, match="activation must be one of"):
        mobilecv.build("lenet5", activation="swish")
    with pytest.raises(ValueError, match="pooling must be one of"):
        mobilecv.build("lenet5", pooling="median")
    with pytest.raises(ValueError, match="cannot honour 'depth'"):
        mobilecv.build("lenet5", depth=2.0)


def test_alexnet_groups_and_no_groups_at_tiny_size():
    grouped = mobilecv.build("alexnet", width=0.25, resolution=75, classes=10)
    single = mobilecv.build("alexnet", width=0.25, resolution=75, classes=10, groups=False)
    assert [grouped.get_layer(f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    # grouped conv2/4/5 have half the kernel weights of the single-tower ones
    for i in (2, 4, 5):
        g, s = grouped.get_layer(f"conv{i}"), single.get_layer(f"conv{i}")
        assert g.kernel.shape[2] * 2 == s.kernel.shape[2]


def test_lrn_equals_tensorflow_lrn():
    from mobilecv._tf import tf

    K = get_keras(None)
    x = np.random.default_rng(0).normal(0, 3, (2, 5, 5, 12)).astype("float32")
    inp = K.layers.Input((5, 5, 12))
    model = K.Model(inp, layers.local_response_norm(K, inp, name="norm"))
    expected = tf().nn.local_response_normalization(x, 2, 2.0, 1e-4, 0.75)
    np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_resnet_shortcut_options_and_plain():
    proj = profile(mobilecv.build("resnet18", width=0.25, resolution=32, classes=10))
    pad = profile(mobilecv.build("resnet18", width=0.25, resolution=32, classes=10, shortcut="pad"))
    plain = profile(mobilecv.build("plain18", width=0.25, resolution=32, classes=10))
    names = {row.name for row in proj.layers}
    assert {"conv3_block1_0_conv", "conv3_block1_add", "conv5_block2_out"} <= names
    # the zero-padding shortcut is parameter-free: exactly the plain net's count
    assert pad.params == plain.params < proj.params
    assert not any(row.name.endswith("_add") for row in plain.layers)
    with pytest.raises(ValueError, match="shortcut"):
        mobilecv.build("resnet18", resolution=32, shortcut="dense")


def test_resnet_depth_scales_stage_repeats():
    model = mobilecv.build("resnet50", width=0.25, depth=0.5, resolution=32, classes=10)
    names = [layer.name for layer in model.layers]
    # ceil(0.5 * [3, 4, 6, 3]) = [2, 2, 3, 2]
    assert [
        sum(n == f"conv{s}_block{b}_out" for n in names for b in range(1, 9)) for s in range(2, 6)
    ] == [2, 2, 3, 2]


@pytest.mark.parametrize(
    ("name", "dims", "conv"),
    [
        ("lenet5", 1, "Conv1D"),
        ("vgg16", 1, "Conv1D"),
        ("resnet18", 1, "Conv1D"),
        ("plain18", 3, "Conv3D"),
        ("lenet5", 3, "Conv3D"),
        ("resnet50", 3, "Conv3D"),
    ],
)
def test_dims_build_run_and_profile(name, dims, conv):
    res = 32 if dims == 1 else 16 if name == "lenet5" else 32
    model = mobilecv.build(name, width=0.25, resolution=res, classes=4, dims=dims)
    assert len(model.input_shape) == dims + 2
    x = np.random.rand(1, *model.input_shape[1:]).astype("float32")
    assert model(x).shape == (1, 4)
    prof = profile(model)
    first = next(row for row in prof.layers if row.type == conv)
    layer = model.get_layer(first.name)
    # MACs = output elements x kernel volume x input channels
    out = np.prod(first.output_shape[1:])
    assert first.macs == out * np.prod(layer.kernel_size) * layer.input.shape[-1]


def test_bad_dims():
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        mobilecv.build("vgg16", width=0.25, resolution=32, dims=4)


def test_inception_bottleneck_saving_on_the_paper_example():
    """28x28x192 -> 5x5 conv with 32 filters, with and without a 1x1 reduce to 16."""
    K = get_keras(None)
    inp = K.layers.Input((28, 28, 192))
    direct = K.layers.Conv2D(32, 5, padding="same", name="direct")(inp)
    reduced = layers.bottleneck_1x1(K, inp, 16, "reduce")
    reduced = K.layers.Conv2D(32, 5, padding="same", name="after")(reduced)
    macs = {row.name: row.macs for row in profile(K.Model(inp, [direct, reduced])).layers}
    assert macs["direct"] == 28 * 28 * 32 * 5 * 5 * 192  # 120.4 M
    assert (
        macs["reduce"] + macs["after"] == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 5 * 5 * 16
    )  # 12.4 M
    assert macs["direct"] / (macs["reduce"] + macs["after"]) > 9


def test_googlenet_aux_heads_give_three_outputs():
    model = mobilecv.build("googlenet", width=0.25, resolution=32, classes=10, aux_heads=True)
    assert len(model.outputs) == 3
    outs = model(np.random.rand(2, 32, 32, 3).astype("float32"))
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * 3
    plain = mobilecv.build("googlenet", width=0.25, resolution=32, classes=10)
    assert len(plain.outputs) == 1


@pytest.mark.parametrize("kind", [k.value for k in layers.EdgeKind])
def test_edge_filter_is_frozen_cross_correlation(kind):
    from scipy.signal import correlate2d

    K = get_keras(None)
    layer = layers.edge_filter(kind)
    img = np.random.default_rng(0).random((9, 9)).astype("float32")
    inp = K.layers.Input((9, 9, 1))
    model = K.Model(inp, layer(inp))
    assert layer.trainable_weights == []
    got = model(img[None, :, :, None]).numpy()[0, :, :, 0]
    expected = correlate2d(img, np.asarray(layers.EDGE_KERNELS[kind], "float32"), mode="same")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # a vertical step lights up the x-gradient filters and not the y ones
    step = np.zeros((1, 9, 9, 1), "float32")
    step[:, :, 5:, :] = 1
    response = model(step).numpy()[0, 4, 4, 0]
    assert bool(response > 0) == (kind in ("vertical", "sobel_x", "scharr_x"))
    with pytest.raises(ValueError, match="unknown edge filter"):
        layers.edge_filter("laplace")


# keras.applications twins (small resolution, random weights): VGG16's trunk (its
# Flatten head is fixed at 224 px) and the whole ResNet50.
@pytest.mark.parametrize(
    ("name", "knobs", "ctor", "kwargs"),
    [
        ("vgg16", {"include_top": False}, "VGG16", {"include_top": False}),
        ("resnet50", {}, "ResNet50", {}),
        ("resnet101", {"include_top": False}, "ResNet101", {"include_top": False}),
    ],
)
def test_keras_applications_twins_load_and_match(tmp_path, name, knobs, ctor, kwargs):
    ref = _reference("tf_keras", ctor, kwargs)
    _fix_variance(ref)
    source = str(tmp_path / "ref.h5")
    ref.save_weights(source)
    ours = mobilecv.build(name, resolution=64, classes=10, **knobs)
    assert ours.count_params() == ref.count_params()
    mobilecv.models.load_keras_applications_weights(ours, source)
    x = _images()
    np.testing.assert_allclose(
        ours(x, training=False), ref(x, training=False), rtol=1e-4, atol=1e-4
    )


def _calibration(model, n=48):
    return np.random.default_rng(3).random((n, *model.input_shape[1:])).astype("float32")


# Deep stacks take 30-180 s each to convert and calibrate on 2 cores even when tiny with
# tf_keras; they are built with Keras 3, which converts 2-4x faster from the same builder
# code (the default run converts the shallow ones with tf_keras).
SLOW_TO_CONVERT = {
    "vgg19",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "plain34",
    "googlenet",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_TO_CONVERT else []) for n in CLASSICS],
)
def test_tiny_classic_converts_to_float_and_full_int8_and_runs_in_litert(name):
    keras = "keras3" if name in SLOW_TO_CONVERT else "tf_keras"
    model = mobilecv.build(name, keras=keras, **tiny_knobs(name))
    cal = _calibration(model)
    flt = convert(
        model, quantize="none", calibration=cal, samples=32, verify_samples=8, progress=False
    )
    assert flt.verification.max_abs_error < 1e-4
    q = convert(
        model, quantize="int8", calibration=cal, samples=32, verify_samples=8, progress=False
    )
    assert q.verification.samples == 8
    assert not any("still compute in float" in n for n in q.notes), q.notes
    assert q.verification.max_abs_error < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "googlenet"])
def test_full_size_converts_and_runs_in_litert(name):
    model = mobilecv.build(name)
    res = convert(model, quantize="none", verify_samples=2, progress=False)
    assert res.verification.max_abs_error < 1e-4
    assert res.size > 4 * model.count_params() * 0.99

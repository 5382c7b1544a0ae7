"""Sliding windows made convolutional (OverFeat), on the course's own example.

The course's window network takes 14x14x3 crops: conv 5x5 with 16 filters, 2x2 max
pool, FC 400, FC 400, softmax over 4. Made convolutional it gives a 2x2x4 grid on a
16x16x3 image and 8x8x4 on 28x28x3, and each cell is the window network on the crop at
(2 * row, 2 * col).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import mobilecv
from mobilecv._tf import get_keras
from mobilecv.errors import InputError
from mobilecv.fully_conv import (
    as_size,
    course_example,
    sliding_window_cost,
    to_fully_convolutional,
    window_geometry,
)

KERASES = ("tf_keras", "keras3")
TOLERANCE = 1e-5


def course_window_net(K, functional: bool, seed: int = 0):
    """The course's 14x14x3 window classifier with random weights, biases included."""
    model = course_example(K, functional=functional)
    kinds = [type(layer).__name__ for layer in model.layers if type(layer).__name__ != "InputLayer"]
    assert kinds == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense", "Dense"]
    widths = [model.get_layer(n).output.shape[-1] for n in ("conv", "fc1", "fc2", "softmax")]
    assert widths == [16, 400, 400, 4]
    _randomise_biases(model, seed)
    return model


def _randomise_biases(model, seed: int) -> None:
    """Keras starts biases at zero; random ones make the weight copy check them too."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w if w.ndim > 1 else rng.normal(0, 0.1, w.shape).astype(np.float32)
         for w in model.get_weights()]
    )  # fmt: skip


def balance_classes(K, model, windows: np.ndarray) -> None:
    """Centre each class's logit over `windows` (via the last bias), so random weights
    pick every class somewhere instead of one class everywhere."""
    features = K.Model(model.inputs, model.get_layer("fc2").output)(windows, training=False)
    head = model.get_layer("softmax")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, -(np.asarray(features) @ kernel).mean(0)])


def crops_of(images: np.ndarray, model, grid, stride) -> np.ndarray:
    """The window network run on every crop: (N, rows, cols, classes), the naive way."""
    wh, ww = (int(d) for d in model.inputs[0].shape[1:3])
    rows, cols = grid
    crops = np.stack(
        [
            images[:, r * stride[0] : r * stride[0] + wh, c * stride[1] : c * stride[1] + ww]
            for r in range(rows)
            for c in range(cols)
        ],
        axis=1,
    )
    flat = np.asarray(model(crops.reshape(-1, *crops.shape[2:]), training=False))
    return flat.reshape(len(images), rows, cols, -1)


def images(n: int, size: int, channels: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
@pytest.mark.parametrize("keras", KERASES)
def test_course_example_grid_equals_every_crop(keras, functional):
    K = get_keras(keras)
    model = course_window_net(K, functional)
    geometry = window_geometry(model)
    assert (geometry.window, geometry.stride, geometry.feature) == ((14, 14), (2, 2), (5, 5))
    assert geometry.exact
    conv = to_fully_convolutional(model)
    assert tuple(conv.inputs[0].shape) == (None, None, None, 3)
    assert not any(type(layer).__name__ in ("Flatten", "Dense") for layer in conv.layers)
    for size, grid in ((16, (2, 2)), (28, (8, 8))):
        assert geometry.grid(size) == grid
        x = images(2, size)
        out = np.asarray(conv(x, training=False))
        assert out.shape == (2, *grid, 4)
        expected = crops_of(x, model, grid, geometry.stride)
        assert np.abs(out - expected).max() <= TOLERANCE
        assert np.allclose(out.sum(-1), 1.0, atol=1e-5)  # softmax over the last axis


def test_registered_lenet5_slides_over_a_larger_image():
    model = mobilecv.build("lenet5", width=0.5, resolution=32, classes=10)
    geometry = window_geometry(model)
    assert (geometry.window, geometry.stride, geometry.feature) == ((32, 32), (4, 4), (5, 5))
    conv = to_fully_convolutional(model, (56, 48, 1))
    grid = geometry.grid((56, 48))
    assert grid == ((56 - 32) // 4 + 1, (48 - 32) // 4 + 1) == (7, 5)
    x = np.random.default_rng(2).random((2, 56, 48, 1), dtype=np.float32)
    out = np.asarray(conv(x, training=False))
    assert out.shape == (2, 7, 5, 10)
    assert np.abs(out - crops_of(x, model, grid, geometry.stride)).max() <= TOLERANCE


def _residual_gap_net(K):
    """A branched trunk (valid 3x3 conv + cropped 1x1 shortcut), BatchNorm, and a
    GlobalAveragePooling2D + Dropout + Dense head."""
    image = K.Input((20, 20, 3))
    x = K.layers.Conv2D(8, 3, strides=2, name="stem")(image)
    branch = K.layers.Conv2D(8, 3, name="branch")(x)
    skip = K.layers.Cropping2D(1, name="crop")(K.layers.Conv2D(8, 1, name="proj")(x))
    x = K.layers.Add(name="add")([branch, skip])
    x = K.layers.BatchNormalization(name="bn")(x)
    x = K.layers.ReLU(name="relu")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.Dropout(0.5, name="drop")(x)
    x = K.layers.Dense(16, activation="relu", name="fc")(x)
    x = K.layers.BatchNormalization(name="fc_bn")(x)
    x = K.layers.Dense(5, activation="softmax", name="out")(x)
    model = K.Model(image, x)
    _randomise_biases(model, seed=3)
    rng = np.random.default_rng(3)
    for name in ("bn", "fc_bn"):  # non-trivial statistics, so the copy must carry them
        bn = model.get_layer(name)
        bn.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32) for w in bn.get_weights()])
    return model


@pytest.mark.parametrize("keras", KERASES)
def test_branched_trunk_and_global_pooling_head(keras):
    model = _residual_gap_net(get_keras(keras))
    geometry = window_geometry(model)
    # stem 20 -> 9 (stride 2); branch 9 -> 7; crop 9 -> 7: a 7x7 map at stride 2.
    assert (geometry.window, geometry.stride, geometry.feature) == ((20, 20), (2, 2), (7, 7))
    assert geometry.exact  # cropping shifts, it does not pad
    conv = to_fully_convolutional(model)
    x = images(2, 30, seed=4)
    grid = geometry.grid(30)
    assert grid == (6, 6)
    out = np.asarray(conv(x, training=False))
    assert out.shape == (2, 6, 6, 5)
    assert np.abs(out - crops_of(x, model, grid, geometry.stride)).max() <= TOLERANCE


@pytest.mark.parametrize("size", [(23, 23), (24, 31), (40, 17)])
def test_grid_arithmetic_matches_the_model_with_same_padding(size):
    """`grid` is computed without TF; with 'same' padding it must still match the model."""
    K = get_keras("tf_keras")
    image = K.Input((16, 16, 1))
    x = K.layers.Conv2D(4, 3, padding="same", strides=2)(image)
    x = K.layers.ZeroPadding2D(((1, 0), (0, 2)))(x)
    x = K.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = K.layers.Conv2D(4, 3, dilation_rate=2)(x)
    x = K.layers.Flatten()(x)
    model = K.Model(image, K.layers.Dense(3)(x))
    geometry = window_geometry(model)
    assert not geometry.exact  # padding sees the image's border, not each crop's
    assert geometry.stride == (4, 4)
    conv = to_fully_convolutional(model, (*size, 1))
    assert tuple(conv.outputs[0].shape[1:3]) == geometry.grid(size)


def _sequential(K, *layers, shape=(14, 14, 3)):
    return K.Sequential([K.Input(shape), *layers])


@pytest.mark.parametrize(
    "make, named",
    [
        # a branch in the head: two Dense layers added
        (
            lambda K: (
                lambda i: K.Model(
                    i,
                    K.layers.Add(name="join")(
                        [
                            K.layers.Dense(4, name="a")(f := K.layers.Flatten()(K.layers.Conv2D(2, 3)(i))),
                            K.layers.Dense(4, name="b")(f),
                        ]
                    ),
                )
            )(K.Input((14, 14, 3))),
            "'join'",
        ),
        # a Dense on the feature map, not after Flatten
        (
            lambda K: _sequential(
                K, K.layers.Conv2D(2, 3), K.layers.Dense(5, name="early"), K.layers.Flatten(),
                K.layers.Dense(4),
            ),
            "'early'",
        ),
        # a layer tied to the input size in the trunk
        (
            lambda K: _sequential(
                K, K.layers.Conv2D(2, 3), K.layers.Reshape((6, 24, 2), name="fold"),
                K.layers.Flatten(), K.layers.Dense(4),
            ),
            "'fold'",
        ),
        # no Flatten / global pooling at all
        (lambda K: _sequential(K, K.layers.Conv2D(4, 14, name="c")), "Flatten"),
        # BatchNormalization over the flattened vector
        (
            lambda K: _sequential(
                K, K.layers.Conv2D(2, 3), K.layers.Flatten(),
                K.layers.BatchNormalization(name="flat_bn"), K.layers.Dense(4),
            ),
            "'flat_bn'",
        ),
    ],
    ids=["head-branch", "dense-in-trunk", "reshape", "no-head", "flat-batchnorm"],
)  # fmt: skip
@pytest.mark.parametrize("keras", KERASES)
def test_what_cannot_be_made_convolutional_is_an_input_error(keras, make, named):
    model = make(get_keras(keras))
    with pytest.raises(InputError, match=named):
        to_fully_convolutional(model)


def test_bad_sizes_are_input_errors():
    model = course_window_net(get_keras("tf_keras"), functional=False)
    with pytest.raises(InputError, match="smaller than one 14x14 window"):
        to_fully_convolutional(model, (12, 40, 3))
    with pytest.raises(InputError, match=r"\(height, width, 3\)"):
        to_fully_convolutional(model, (28, 28, 1))
    with pytest.raises(InputError, match="N or HxW"):
        as_size("28 by 28")
    assert as_size("28x40") == (28, 40) and as_size(16) == (16, 16)


def test_sliding_window_macs_by_hand():
    model = course_window_net(get_keras("tf_keras"), functional=False)
    # One 14x14x3 window: conv 10*10*16 outputs x 5*5*3 = 120,000; FC 400x400 = 160,000
    # twice; softmax 400x4 = 1,600. Total 441,600 MACs.
    # 28x28 image, conv model: conv 24*24*16*75 = 691,200; pool -> 12x12x16; FC1 as a 5x5
    # conv: 8*8 outputs x 400 x (5*5*16 = 400) = 10,240,000; FC2 as 1x1: 8*8*400*400 =
    # 10,240,000; softmax as 1x1: 8*8*400*4 = 102,400. Total 21,273,600.
    # Naive: an 8x8 grid = 64 windows x 441,600 = 28,262,400 (1.33x the one pass).
    cost = sliding_window_cost(model, 28)
    assert (cost.window_macs, cost.grid, cost.windows) == (441_600, (8, 8), 64)
    assert cost.naive_macs == 28_262_400
    assert cost.convolutional_macs == 21_273_600
    # 16x16: conv 12*12*16*75 = 172,800; FC1 2*2*400*400 = 640,000; FC2 640,000;
    # softmax 2*2*400*4 = 6,400. Total 1,459,200; naive 4 x 441,600 = 1,766,400.
    small = sliding_window_cost(model, 16)
    assert (small.naive_macs, small.convolutional_macs) == (1_766_400, 1_459_200)


def test_profile_cli_reports_sliding_window_macs_in_a_fresh_process(tmp_path):
    model = course_window_net(get_keras("tf_keras"), functional=False)
    path = tmp_path / "window.keras"
    model.save(path)
    cmd = [sys.executable, "-m", "mobilecv.cli", "profile", str(path), "--sliding-window", "28"]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["macs"] == 441_600
    sw = report["sliding_window"]
    assert (sw["window"], sw["stride"], sw["grid"], sw["windows"]) == ([14, 14], [2, 2], [8, 8], 64)
    assert (sw["naive_macs"], sw["convolutional_macs"]) == (28_262_400, 21_273_600)

    from mobilecv.cli import main

    text = CliRunner().invoke(main, ["profile", str(path), "--sliding-window", "16"])
    assert text.exit_code == 0, text.output
    assert "4 x 441,600 = 1,766,400 MACs" in text.output
    assert "1,459,200 MACs" in text.output
    small = CliRunner().invoke(main, ["profile", str(path), "--sliding-window", "10"])
    assert small.exit_code == 2
    assert small.output.strip() == "Error: a 10x10 image is smaller than one 14x14 window"


@pytest.mark.parametrize("keras", ["tf_keras", pytest.param("keras3", marks=pytest.mark.slow)])
def test_grid_survives_tflite_float_and_int8(keras):
    from mobilecv.converters.tflite import convert
    from mobilecv.evaluate import TfliteModel

    K = get_keras(keras)
    window_net = course_window_net(K, functional=True)
    balance_classes(K, window_net, images(500, 14, seed=99))
    geometry = window_geometry(window_net)
    conv = to_fully_convolutional(window_net, (28, 28, 3))
    x = images(8, 28, seed=7)
    keras_grid = np.asarray(conv(x, training=False))
    crops = crops_of(x, window_net, (8, 8), geometry.stride)
    converted = {}
    for name, model, size in (("window", window_net, 14), ("grid", conv, 28)):
        calibration = images(116, size, seed=size)  # 100 calibrate, 16 verify
        for mode in ("none", "int8"):
            result = convert(model, quantize=mode, calibration=calibration, progress=False)
            assert result.verification.samples == 16
            converted[name, mode] = result
        assert converted[name, "none"].verification.max_abs_error <= TOLERANCE
    # 16 held-out windows: chance is 0.25, measured 0.875-1.0 over four weight seeds.
    assert converted["window", "int8"].verification.top1_agreement >= 0.75

    # The converted grid model equals Keras, and the converted window model run on every
    # crop (the naive way, in LiteRT too).
    grid_float = TfliteModel(converted["grid", "none"].tflite).predict(x)
    assert grid_float.shape == (8, 8, 8, 4)
    assert np.abs(grid_float - keras_grid).max() <= TOLERANCE
    window_float = TfliteModel(converted["window", "none"].tflite)
    naive = window_float.predict(crops_of_array(x, (8, 8), geometry)).reshape(8, 8, 8, 4)
    assert np.abs(naive - crops).max() <= TOLERANCE
    assert np.abs(grid_float - naive).max() <= TOLERANCE
    # int8 picks the float model's class in most of the 512 cells, and the classes are
    # spread over the cells (so agreeing is not just repeating one class). Measured over
    # four weight seeds: 0.90-0.93 (chance 0.25).
    counts = np.bincount(keras_grid.argmax(-1).ravel(), minlength=4)
    assert counts.min() >= 0.1 * counts.sum(), counts
    grid_int8 = TfliteModel(converted["grid", "int8"].tflite).predict(x)
    agreement = float(np.mean(grid_int8.argmax(-1) == keras_grid.argmax(-1)))
    assert agreement >= 0.85, agreement


def crops_of_array(x: np.ndarray, grid, geometry) -> np.ndarray:
    """Every window of every image, (N * rows * cols, h, w, c), row-major per image."""
    (wh, ww) = geometry.window
    origins = [geometry.origin(r, c) for r in range(grid[0]) for c in range(grid[1])]
    return np.stack(
        [image[top : top + wh, left : left + ww] for image in x for top, left in origins]
    )

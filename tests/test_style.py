"""Neural style transfer (mobilecv.style): the course's costs against numpy loops, and the
optimisation measured on a small image."""

import json

import numpy as np
import pytest
from conftest import run_cli

import mobilecv
from mobilecv import style
from mobilecv.errors import InputError


def _acts(rng, h=3, w=4, c=5):
    return rng.normal(size=(1, h, w, c)).astype(np.float32)


def _gram_by_loops(a):
    _, h, w, c = a.shape
    g = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            for y in range(h):
                for x in range(w):
                    g[i, j] += a[0, y, x, i] * a[0, y, x, j]
    return g


def test_content_cost_by_hand():
    rng = np.random.default_rng(1)
    a_c, a_g = _acts(rng), _acts(rng)
    total = 0.0
    for y in range(3):
        for x in range(4):
            for k in range(5):
                total += (a_c[0, y, x, k] - a_g[0, y, x, k]) ** 2
    assert float(style.content_cost(a_c, a_g)) == pytest.approx(total / (4 * 3 * 4 * 5), rel=1e-5)


def test_gram_and_layer_style_cost_by_hand():
    rng = np.random.default_rng(2)
    a_s, a_g = _acts(rng), _acts(rng)
    g_s, g_g = _gram_by_loops(a_s), _gram_by_loops(a_g)
    np.testing.assert_allclose(style.gram_matrix(a_s).numpy(), g_s, rtol=1e-5, atol=1e-5)
    total = sum((g_s[i, j] - g_g[i, j]) ** 2 for i in range(5) for j in range(5))
    expected = total / (4 * 5**2 * (3 * 4) ** 2)
    assert float(style.layer_style_cost(a_s, a_g)) == pytest.approx(expected, rel=1e-5)


def test_weighted_style_cost_and_total_by_hand():
    rng = np.random.default_rng(3)
    s = [_acts(rng, 4, 4, 3), _acts(rng, 2, 2, 6)]
    g = [_acts(rng, 4, 4, 3), _acts(rng, 2, 2, 6)]
    layer = [
        np.sum((_gram_by_loops(a) - _gram_by_loops(b)) ** 2)
        / (4 * a.shape[-1] ** 2 * (a.shape[1] * a.shape[2]) ** 2)
        for a, b in zip(s, g, strict=True)
    ]
    j_style = style.style_cost(s, g, [0.3, 0.7])
    assert float(j_style) == pytest.approx(0.3 * layer[0] + 0.7 * layer[1], rel=1e-5)
    assert float(style.total_cost(2.0, j_style, 10.0, 40.0)) == pytest.approx(
        20.0 + 40.0 * (0.3 * layer[0] + 0.7 * layer[1]), rel=1e-5
    )
    with pytest.raises(InputError, match="one per layer"):
        style.style_cost(s, g, [1.0])


@pytest.mark.parametrize("optimizer, steps", [("adam", 60), ("lbfgs", 25)])
def test_stylize_moves_the_grams_and_keeps_the_content(optimizer, steps):
    # Measured, not eyeballed: each style layer's Gram distance to the style image falls by
    # >= 80%, and the result stays nearer the content image than the style image is.
    size = 64
    content = style.square(style.load_image("chelsea"), size)
    starry = style.square(style.load_image("starry_night"), size)
    net = style.loss_network(size=size)
    result = style.stylize(
        content, starry, net, steps=steps, learning_rate=0.05, optimizer=optimizer, progress=False
    )
    assert min(result.gram_drop().values()) >= 0.8, result.gram_drop()
    assert result.content_distance < result.style_content_distance
    assert len(result.losses) <= steps and result.losses[-1] < result.losses[0]
    assert (
        result.image.shape == (size, size, 3) and 0 <= result.image.min() <= result.image.max() <= 1
    )


def test_vgg19_paper_layers_average_pooling_and_caffe_input():
    net = style.loss_network("vgg19", size=32, width=0.25, pooling="avg")
    assert net.content_layer == "block4_conv2"
    assert net.style_layers == tuple(f"block{b}_conv1" for b in range(1, 6))
    kinds = {type(layer).__name__ for layer in net.model.features.layers}
    assert "MaxPooling2D" not in kinds and "AveragePooling2D" in kinds
    acts = net.activations(np.full((1, 32, 32, 3), 0.5, np.float32))
    assert acts["block5_conv1"].shape[1:3] == (2, 2)
    caffe = style._preprocessor(style.Preprocess.AUTO, "vgg19", "w.h5")
    pixel = caffe(np.array([[[[1.0, 0.5, 0.0]]]], np.float32)).numpy().ravel()
    np.testing.assert_allclose(pixel, [0 - 103.939, 127.5 - 116.779, 255 - 123.68], rtol=1e-6)
    with pytest.raises(InputError, match="no layer nope"):
        style.loss_network("vgg19", size=32, width=0.25, content_layer="nope")


def test_a_model_file_of_this_project_as_loss_network(tmp_path):
    from mobilecv.modelio import save_model

    path = tmp_path / "trunk.keras"
    save_model(mobilecv.build("mobilenet_v1", width=0.25, resolution=32, include_top=False), path)
    net = style.loss_network(str(path), size=32)
    assert len(net.style_layers) >= 3 and net.content_layer in net.style_layers
    assert "its own weights" in net.description


@pytest.mark.slow
def test_keras_applications_vgg19_notop_weights_load(tmp_path):
    from mobilecv._tf import get_keras

    K = get_keras()
    reference = K.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "vgg19_notop.h5"
    reference.save_weights(str(path))
    net = style.loss_network("vgg19", size=32, weights=str(path))
    x = np.random.default_rng(0).random((1, 32, 32, 3), np.float32)
    caffe = x[..., ::-1] * 255 - np.array(style.CAFFE_MEAN_BGR, np.float32)
    want = K.Model(reference.input, reference.get_layer("block4_conv2").output)(caffe).numpy()
    np.testing.assert_allclose(
        net.activations(x)["block4_conv2"].numpy(), want, rtol=1e-4, atol=1e-4
    )


def _cli(*args, cwd):
    return run_cli("stylize", *args, cwd=cwd, timeout=180)


def test_stylize_cli_writes_the_image_and_the_curve(tmp_path):
    out = _cli(
        "coffee",
        "starry_night",
        "-o",
        "out.png",
        "--size",
        "32",
        "--steps",
        "3",
        "--style-weights",
        "1,1,1,1,1,1,1,1",
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["steps"] == 3 and len(figures["gram_start"]) == 8
    from PIL import Image

    assert Image.open(tmp_path / "out.png").size == (32, 32)
    assert Image.open(tmp_path / "out_loss.png").format == "PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (("nosuch", "starry_night", "-o", "o.png"), "neither an image file nor a sample"),
        (("coffee", "starry_night", "-o", "o.jpg"), "must name a .png"),
        (
            ("coffee", "starry_night", "-o", "o.png", "--network", "nonet", "--size", "16"),
            "network must be",
        ),
    ],
)
def test_stylize_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr

"""Fast style transfer (issue 16 section 2): the stylizer network, its training against the
perceptual loss, the converter's PSNR check, and `mobilecv train-stylizer`."""

import json

import numpy as np
import pytest
from conftest import run_cli

import mobilecv
from mobilecv import fast_style
from mobilecv import style as st
from mobilecv.errors import InputError
from mobilecv.tasks import get_task
from mobilecv.tasks.stylization import psnr


def _layer_types(model) -> set[str]:
    return {type(layer).__name__ for layer in model.layers}


def test_paper_network_has_the_hand_counted_parameters():
    # Johnson et al. 2016 supp. Table 1, k*k*cin*cout per conv (no bias before BatchNorm)
    # + 4 BatchNorm values per channel: stem 7,776 + 128; down 18,432 + 256, 73,728 + 512;
    # 10 residual convs 147,456 + 512 each; up 73,728 + 256, 18,432 + 128; to_rgb 7,779.
    model = mobilecv.build("stylizer", resolution=32, upsample="transposed")
    assert model.count_params() == 1_680_835
    assert "Conv2DTranspose" in _layer_types(model)
    assert model.get_layer("stem").kernel.shape == (9, 9, 3, 32)
    assert model.get_layer("res5_conv2").kernel.shape == (3, 3, 128, 128)


def test_resize_convolution_variant_and_output_range():
    model = mobilecv.build("stylizer", width=0.25, resolution=32)
    types = _layer_types(model)
    assert "UpSampling2D" in types and "Conv2DTranspose" not in types
    out = model(np.random.rand(2, 32, 32, 3).astype("float32"), training=False)["image"]
    assert out.shape == (2, 32, 32, 3)
    assert float(np.min(out)) >= 0.0 and float(np.max(out)) <= 1.0


def test_stylizer_rejects_sizes_it_cannot_halve_twice():
    with pytest.raises(InputError, match="multiple of 4"):
        mobilecv.build("stylizer", width=0.25, resolution=34)
    with pytest.raises(InputError, match="edge_kernel"):
        mobilecv.build("stylizer", width=0.25, resolution=32, edge_kernel=4)


def test_psnr_against_a_hand_computation():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 0.5  # MSE = 0.25 / 96
    assert psnr(a, b) == pytest.approx(10 * np.log10(96 / 0.25))
    assert psnr(a, a) == 100.0
    agreement = get_task("stylization").agreement({"image": a}, {"image": b})
    assert agreement["min_psnr_db"] == pytest.approx(10 * np.log10(48 / 0.25))


def test_at_resolution_keeps_the_trained_weights():
    small = mobilecv.build("stylizer", width=0.25, resolution=32, edge_kernel=3)
    big = fast_style.at_resolution(small, 64)
    assert big.input_shape[1:3] == (64, 64)
    x = np.random.rand(1, 64, 64, 3).astype("float32")
    # The rebuilt model is the 64 px network carrying the 32 px model's weights.
    direct = mobilecv.build("stylizer", width=0.25, resolution=64, edge_kernel=3)
    direct.set_weights(small.get_weights())
    np.testing.assert_allclose(
        fast_style.stylize_images(big, x), fast_style.stylize_images(direct, x), atol=1e-6
    )


@pytest.mark.slow
def test_training_lowers_the_perceptual_loss():
    crop = 32
    model = mobilecv.build("stylizer", width=0.25, resolution=crop, edge_kernel=5)
    net = st.loss_network("random", size=crop)
    style_image = st.square(st.load_image("starry_night"), crop)
    photos = fast_style.content_photos(["chelsea", "coffee"])
    result = fast_style.train_stylizer(
        model, style_image, net, photos, steps=40, batch=2, learning_rate=5e-3, progress=False
    )
    assert len(result.losses) == 40
    first = float(np.mean(result.losses[:4]))
    assert result.to_json()["final_loss"] < 0.7 * first


def test_random_crops_are_real_photo_pixels():
    photos = fast_style.content_photos(["astronaut"])
    crops = fast_style.random_crops(photos, 3, 24, np.random.default_rng(0))
    assert crops.shape == (3, 24, 24, 3) and crops.dtype == np.float32
    assert crops.min() >= 0.0 and crops.max() <= 1.0 and crops.std() > 0.05


def test_converter_compares_a_stylizer_by_psnr():
    """Before the stylization task, the converter's check had no figure for an image
    output (agreement was {})."""
    from mobilecv.converters.tflite import convert

    model = mobilecv.build("stylizer", width=0.25, resolution=32, edge_kernel=3)
    crops = fast_style.random_crops(fast_style.content_photos(["chelsea"]), 20, 32,
                                    np.random.default_rng(0))  # fmt: skip
    result = convert(model, "int8", calibration=crops, samples=16, verify_samples=4, progress=False)
    check = result.verification
    assert check.data == "held-out"
    assert set(check.agreement) == {"psnr_db", "min_psnr_db"}
    assert 20.0 < check.agreement["psnr_db"] < 100.0


def _cli(*args: str):
    return run_cli(*args, timeout=300)


@pytest.mark.slow
def test_train_stylizer_cli_saves_a_model_that_reloads(tmp_path):
    out, preview = tmp_path / "s.keras", tmp_path / "p.png"
    done = _cli("train-stylizer", "starry_night", "-o", str(out), "--crop", "32", "--steps",
                "3", "--batch", "1", "--content", "coffee", "--preview", str(preview),
                "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["steps"] == 3 and preview.is_file()
    from mobilecv.modelinfo import get_info
    from mobilecv.modelio import load_model

    model = load_model(out)
    assert get_info(model).task == "stylization"
    assert model.input_shape[1:] == (32, 32, 3)


def test_train_stylizer_cli_bad_input_is_one_line(tmp_path):
    done = _cli("train-stylizer", "starry_night", "-o", str(tmp_path / "s.keras"), "--crop", "30")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "multiple of 4" in done.stderr
    done = _cli("train-stylizer", "starry_night", "-o", str(tmp_path / "s.png"))
    assert done.returncode == 2 and ".keras" in done.stderr

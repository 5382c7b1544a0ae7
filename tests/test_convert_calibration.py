"""mobilecv.calibration: every calibration source, shaped to the model input; and
registry models converting to full int8."""

from __future__ import annotations

import numpy as np
import pytest

from mobilecv.calibration import (
    CALIBRATION_SOURCES,
    fit_to_input,
    load_samples,
    register_calibration_source,
)
from mobilecv.errors import InputError


def test_builtin_sources_are_train_split_and_shaped():
    digits = load_samples("digits", 20, (8, 8, 1))
    assert digits.shape == (20, 8, 8, 1) and digits.dtype == np.float32
    assert digits.min() >= 0.0 and digits.max() <= 1.0 and digits.max() > 0.5
    fm = load_samples("fashion_mnist", 10, (32, 32, 3))
    assert fm.shape == (10, 32, 32, 3)
    assert np.allclose(fm[..., 0], fm[..., 2])  # grey replicated into RGB
    # Deterministic order: calibration and held-out rows are the same run to run.
    assert np.array_equal(load_samples("fashion_mnist", 10, (32, 32, 3)), fm)


def test_fashion_mnist_reads_train_file_only(monkeypatch, tmp_path):
    import mobilecv.calibration as cal

    monkeypatch.setattr(cal, "FASHION_MNIST_DIR", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # test split alone is not enough
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_samples("fashion_mnist", 4, (28, 28, 1))


def test_npz_and_npy_sources(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=rgb, y_train=np.arange(12))
    x = load_samples(tmp_path / "d.npz", 5, (8, 8, 1))
    assert x.shape == (5, 8, 8, 1) and x.max() <= 1.0
    np.save(tmp_path / "d.npy", rgb.astype(np.float32) / 255.0)
    assert load_samples(str(tmp_path / "d.npy"), 50, (16, 16, 3)).shape == (12, 16, 16, 3)


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / cls / f"{i}.jpg")
    x = load_samples(tmp_path, 4, (32, 32, 3))
    assert x.shape == (4, 32, 32, 3) and x.min() >= 0.0 and x.max() <= 1.0


def test_registry_is_extensible_and_errors_are_clear(tmp_path):
    @register_calibration_source("ones_for_test")
    def _ones(count):
        return np.ones((count, 4, 4), np.uint8) * 255

    try:
        assert (
            load_samples("ones_for_test", 3, (4, 4, 1)).tolist() == np.ones((3, 4, 4, 1)).tolist()
        )
    finally:
        CALIBRATION_SOURCES.pop("ones_for_test")
    with pytest.raises(InputError, match="unknown calibration source"):
        load_samples("nope", 3, (4, 4, 1))
    with pytest.raises(InputError, match="does not exist"):
        load_samples(tmp_path / "missing.npz", 3, (4, 4, 1))
    with pytest.raises(InputError, match="cannot map"):
        fit_to_input(np.zeros((2, 4, 4, 2)), (4, 4, 3))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_samples(tmp_path / "empty", 3, (4, 4, 1))


@pytest.mark.slow
def test_registry_mobilenet_v2_converts_to_full_int8():
    """A mobilecv-built model (tiny MobileNetV2, one input channel) through the
    int8 route with Fashion-MNIST calibration: fully integer, runs, verified."""
    import mobilecv
    from mobilecv.converters.tflite import convert
    from mobilecv.inspection import read_tflite

    model = mobilecv.build("mobilenet_v2", width=0.35, resolution=32, classes=10, input_channels=1)
    result = convert(model, "int8", calibration="fashion_mnist", samples=32, verify_samples=32)
    graph = read_tflite(result.tflite)
    assert graph.quantization == "int8" and graph.float_ops == []
    assert graph.op_counts["DEPTHWISE_CONV_2D"] >= 10
    assert result.verification.runtime == "default" and result.verification.samples == 32
    assert graph.macs > 0 and graph.inputs[0].shape_signature == [-1, 32, 32, 1]

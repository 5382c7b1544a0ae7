"""keras.applications twins: same parameters, and identical outputs with its weights.

Weights are random (nothing is downloaded): keras.applications builds with
weights=None, its weights are written to disk in each supported format, and the
mobilecv twin loads them by name. The EfficientNet twin declares `pixels`, the input
range keras.applications' EfficientNet takes, so both see the same 0..255 images.
"""

import numpy as np
import pytest

import mobilecv
from mobilecv._tf import get_keras
from mobilecv.errors import InputError

RES = 64

# mobilecv name, knobs -> keras.applications constructor name, kwargs
TWINS = [
    ("mobilenet_v1", {"width": 0.5}, "MobileNet", {"alpha": 0.5}),
    ("mobilenet_v2", {"width": 0.35}, "MobileNetV2", {"alpha": 0.35}),
    ("mobilenet_v2", {"width": 1.4}, "MobileNetV2", {"alpha": 1.4}),
    ("efficientnet_b0", {"input_range": "pixels"}, "EfficientNetB0", {}),
]


def _reference(keras_name, ctor, kwargs, classes=10):
    K = get_keras(keras_name)
    model = getattr(K.applications, ctor)(
        weights=None, input_shape=(RES, RES, 3), classes=classes, **kwargs
    )
    # Perturb BatchNorm statistics too, so that a skipped layer cannot go unnoticed.
    rng = np.random.default_rng(1)
    model.set_weights(
        [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return model


def _fix_variance(model):
    # Moving variances must stay positive after the perturbation.
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, beta, mean, np.abs(var) + 0.5])
        elif type(layer).__name__ == "Normalization":
            mean, var, count = layer.get_weights()
            layer.set_weights([mean, np.abs(var) + 0.5, count])
            if hasattr(layer, "finalize_state") and type(layer).__module__.startswith("keras."):
                layer.finalize_state()  # Keras 3 caches mean/variance tensors


def _images(n=3):
    return np.random.default_rng(2).uniform(0, 255, (n, RES, RES, 3)).astype("float32")


@pytest.mark.parametrize(
    ("name", "knobs", "ctor", "kwargs"), TWINS, ids=[t[0] + str(t[1]) for t in TWINS]
)
@pytest.mark.parametrize("fmt", ["weights.h5", "model.h5", "instance"])
def test_tf_keras_twin_loads_and_matches(tmp_path, name, knobs, ctor, kwargs, fmt):
    ref = _reference("tf_keras", ctor, kwargs)
    _fix_variance(ref)
    if fmt == "weights.h5":
        source = str(tmp_path / "ref.h5")
        ref.save_weights(source)
    elif fmt == "model.h5":
        source = str(tmp_path / "ref_model.h5")
        ref.save(source)
    else:
        source = ref
    ours = mobilecv.build(name, resolution=RES, classes=10, **knobs)
    assert ours.count_params() == ref.count_params()
    mobilecv.models.load_keras_applications_weights(ours, source)
    x = _images()
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "knobs", "ctor", "kwargs"),
    TWINS[1:2] + TWINS[3:],
    ids=["mobilenet_v2", "efficientnet_b0"],
)
def test_keras3_twin_weights_file_loads_into_both_kerases(tmp_path, name, knobs, ctor, kwargs):
    ref = _reference("keras3", ctor, kwargs)
    _fix_variance(ref)
    source = str(tmp_path / "ref.weights.h5")
    ref.save_weights(source)
    # Keras 3's own loader is the authority on what the file means.
    authority = _reference("keras3", ctor, kwargs)
    authority.load_weights(source)
    x = _images()
    expected = np.asarray(authority(x, training=False))
    for keras in ("keras3", "tf_keras"):
        ours = mobilecv.build(
            name, resolution=RES, classes=10, keras=keras, weights=source, **knobs
        )
        np.testing.assert_allclose(np.asarray(ours(x, training=False)), expected, atol=1e-5)


def test_build_weights_flag_with_saved_keras_model(tmp_path):
    ref = _reference("tf_keras", "MobileNetV2", {"alpha": 0.35})
    _fix_variance(ref)
    path = str(tmp_path / "ref.keras")
    ref.save(path)
    ours = mobilecv.build("mobilenet_v2", width=0.35, resolution=RES, classes=10, weights=path)
    x = _images()
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)


def test_wrong_architecture_is_refused(tmp_path):
    ref = _reference("tf_keras", "MobileNetV2", {"alpha": 0.35})
    path = str(tmp_path / "ref.h5")
    ref.save_weights(path)
    ours = mobilecv.build("mobilenet_v2", width=0.5, resolution=RES, classes=10)
    with pytest.raises(InputError, match="found no weights"):
        mobilecv.models.load_keras_applications_weights(ours, path)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError):
        mobilecv.build("mobilenet_v2", width=0.35, resolution=32, classes=10, weights="/nope.h5")


def test_unit_efficientnet_on_unit_images_equals_keras_applications_on_pixels():
    """The default (`unit`) B0 drops the Rescaling and gives keras.applications' outputs
    when fed x / 255: the stem sees the same values whichever range is declared."""
    ref = _reference("tf_keras", "EfficientNetB0", {})
    _fix_variance(ref)
    ours = mobilecv.build("efficientnet_b0", resolution=RES, classes=10)
    assert ours.count_params() == ref.count_params()
    assert "rescaling" not in [layer.name for layer in ours.layers]
    mobilecv.models.load_keras_applications_weights(ours, ref)
    x = _images()
    np.testing.assert_allclose(ours(x / 255.0, training=False), ref(x, training=False), atol=1e-5)

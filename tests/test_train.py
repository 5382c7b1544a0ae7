"""Training on digits with a held-out evaluation, freezing, and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_model

from mobilecv._tf import get_keras
from mobilecv.data import Split, load_arrays
from mobilecv.errors import InputError
from mobilecv.train import (
    apply_freeze,
    head_start,
    load_split,
    load_splits,
    select_classes,
    train,
    transfer_trunk,
)

SPLITS = None


def _splits():
    global SPLITS
    if SPLITS is None:
        SPLITS = load_splits("digits", limit=600)
    return SPLITS


def test_train_learns_and_reports_held_out_accuracy():
    model = tiny_model()
    model, report = train(model, _splits(), epochs=5, learning_rate=5e-3, progress=False)
    assert report.val_samples == 144 and report.train_samples == 600
    assert report.val_accuracy > 0.6  # chance is 0.1
    assert len(report.history["val_accuracy"]) == 5
    assert report.test_accuracy is None  # the test split is not touched unless asked


def test_freeze_counts_and_all_but_head():
    model = tiny_model()
    assert head_start(model) == len(model.layers) - 1  # Dense after Flatten
    assert apply_freeze(model, "all-but-head") == len(model.layers) - 1
    assert [layer.name for layer in model.layers if layer.trainable and layer.weights] == ["head"]
    assert apply_freeze(model, 2) == 2
    assert not model.layers[1].trainable and model.layers[2].trainable
    with pytest.raises(InputError, match="all-but-head"):
        apply_freeze(model, "most")
    with pytest.raises(InputError, match="layers"):
        apply_freeze(model, 99)


def test_frozen_layers_do_not_change():
    model = tiny_model()
    before = [w.copy() for w in model.get_layer("stem").get_weights()]
    head_before = model.get_layer("head").get_weights()[0].copy()
    train(model, _splits(), epochs=1, freeze="all-but-head", progress=False)
    for a, b in zip(before, model.get_layer("stem").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(head_before, model.get_layer("head").get_weights()[0])


def test_cache_features_trains_the_head_from_npy_files(tmp_path):
    donor = tiny_model()
    train(donor, _splits(), epochs=4, learning_rate=5e-3, progress=False)
    model = tiny_model()
    model.set_weights(donor.get_weights())
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])  # forget the head
    stem_before = model.get_layer("stem").get_weights()[0].copy()
    model, report = train(
        model,
        _splits(),
        epochs=4,
        learning_rate=1e-2,
        cache_features=True,
        cache_dir=tmp_path,
        progress=False,
    )
    feats = np.load(tmp_path / "features_train.npy")
    assert feats.shape == (600, 4 * 4 * 16)  # the trunk's (Flatten) output, one row per image
    assert np.array_equal(np.load(tmp_path / "labels_train.npy"), _splits().train.y)
    np.testing.assert_array_equal(stem_before, model.get_layer("stem").get_weights()[0])
    # The head trained on cached features works inside the full model.
    assert report.cached_features and report.val_accuracy > 0.6
    # A second cached run on the same model (its head already re-applied once) still works.
    _, again = train(
        model, _splits(), epochs=1, cache_features=True, cache_dir=tmp_path, progress=False
    )
    assert again.val_accuracy > 0.6


def test_cache_features_refuses_augmentation():
    from mobilecv.data.augment import Mirror

    with pytest.raises(InputError, match="augmentation"):
        train(
            tiny_model(), _splits(), epochs=1, cache_features=True, augment=Mirror(), progress=False
        )


def test_batchnorm_recalibration_fixes_slow_moving_statistics():
    """Momentum 0.999 (MobileNet's) after ~60 steps: inference stats are still the init."""
    from mobilecv.train import evaluate, fit

    K = get_keras("tf_keras")

    def bn_model():
        i = K.Input((16, 16, 1))
        x = K.layers.Conv2D(8, 3, padding="same", use_bias=False)(i)
        x = K.layers.BatchNormalization(momentum=0.999)(x)
        x = K.layers.ReLU()(x)
        x = K.layers.MaxPooling2D()(x)
        x = K.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
        x = K.layers.BatchNormalization(momentum=0.999)(x)
        x = K.layers.ReLU()(x)
        x = K.layers.GlobalAveragePooling2D()(x)
        return K.Model(i, K.layers.Dense(10)(x))

    K.utils.set_random_seed(0)
    stale = bn_model()
    fit(
        stale, _splits(), 2, batch_size=32, learning_rate=1e-2, progress=False, recalibrate_bn=False
    )
    K.utils.set_random_seed(0)
    fixed = bn_model()
    fit(fixed, _splits(), 2, batch_size=32, learning_rate=1e-2, progress=False)
    stale_acc = evaluate(stale, _splits().validation)["accuracy"]
    fixed_acc = evaluate(fixed, _splits().validation)["accuracy"]
    assert fixed_acc > stale_acc + 0.2, (stale_acc, fixed_acc)


def test_cache_features_honours_the_schedule(tmp_path, monkeypatch):
    from mobilecv import train as training

    decays = []
    make_optimizer = training.make_optimizer

    def spy(K, name, learning_rate, decay_steps=None):
        decays.append(decay_steps)
        return make_optimizer(K, name, learning_rate, decay_steps)

    monkeypatch.setattr(training, "make_optimizer", spy)
    _, report = train(
        tiny_model(),
        _splits(),
        epochs=2,
        batch_size=100,
        cache_features=True,
        cache_dir=tmp_path,
        schedule="cosine",
        progress=False,
    )
    assert decays[0] == 2 * 6  # the head's optimizer decays over 2 epochs of 600/100 steps
    assert report.schedule == "cosine" and report.cached_features


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache_dir": "features"}, "cache_dir is only used with cache_features"),
        ({"cache_features": True, "freeze": 0}, "freeze=0 freezes nothing"),
        ({"cache_features": True, "freeze": "0"}, "freeze=0 freezes nothing"),
        ({"limit": 10}, "limit applies to a dataset name"),
        ({"schedule": "linear"}, "schedule must be one of constant, cosine"),
    ],
)
def test_options_a_training_path_cannot_honour_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        train(tiny_model(), _splits(), epochs=1, progress=False, **options)


def test_class_selection_keeps_and_relabels_in_the_given_order():
    full = load_arrays("digits", Split.TRAIN)
    chosen = load_split("digits", Split.TRAIN, classes=[7, 3])
    assert chosen.classes == 2 and len(chosen) == int(np.isin(full.y, [7, 3]).sum())
    np.testing.assert_array_equal(chosen.x[chosen.y == 0], full.x[full.y == 7])
    np.testing.assert_array_equal(chosen.x[chosen.y == 1], full.x[full.y == 3])
    assert len(load_split("digits", Split.TRAIN, limit=5, classes=[7, 3])) == 5
    splits = load_splits("digits", limit=40, classes=[7, 3])
    assert splits.classes == (7, 3) and set(splits.validation.y) == {0, 1}
    with pytest.raises(InputError, match="no class"):
        select_classes(full, [3, 10])
    with pytest.raises(InputError, match="repeats"):
        select_classes(full, [3, 3])


def _named_model(classes: int, stem_filters: int = 8):
    """tiny_model's layer names, with another head size (or stem width)."""
    K = get_keras("tf_keras")
    i = K.Input((16, 16, 1))
    x = K.layers.Conv2D(stem_filters, 3, padding="same", activation="relu", name="stem")(i)
    x = K.layers.MaxPooling2D()(x)
    x = K.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = K.layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = K.layers.MaxPooling2D()(x)
    x = K.layers.Flatten()(x)
    return K.Model(i, K.layers.Dense(classes, name="head")(x))


def test_transfer_trunk_moves_the_trunk_by_name_and_keeps_the_new_head():
    donor, target = tiny_model(), _named_model(classes=4)
    head = [w.copy() for w in target.get_layer("head").get_weights()]
    assert transfer_trunk(donor, target) == 3  # stem, dw, pw
    for name in ("stem", "dw", "pw"):
        moved = zip(
            donor.get_layer(name).get_weights(), target.get_layer(name).get_weights(), strict=True
        )
        for a, b in moved:
            np.testing.assert_array_equal(a, b)
    for a, b in zip(head, target.get_layer("head").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="'stem'.* do not fit"):
        transfer_trunk(donor, _named_model(classes=4, stem_filters=4))

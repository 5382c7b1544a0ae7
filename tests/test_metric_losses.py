"""Metric-learning losses against hand-made cases and numpy loops, and the P x K sampler."""

import itertools

import numpy as np
import pytest

from mobilecv.errors import InputError
from mobilecv.metric_learning import losses


def _value(fn, labels, embeddings, **kwargs) -> float:
    return float(fn(np.asarray(labels), np.asarray(embeddings, dtype=np.float32), **kwargs))


# ----------------------------------------------------------------- references by loops


def _sq(a, b) -> float:
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _batch_all_by_hand(labels, emb, margin):
    positive = []
    n = len(labels)
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]:
            loss = max(_sq(emb[a], emb[p]) - _sq(emb[a], emb[q]) + margin, 0.0)
            if loss > 1e-16:
                positive.append(loss)
    return sum(positive) / len(positive) if positive else 0.0


def _semi_hard_by_hand(labels, emb, margin):
    pair_losses = []
    n = len(labels)
    for a, p in itertools.product(range(n), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        negatives = [_sq(emb[a], emb[q]) for q in range(n) if labels[q] != labels[a]]
        if not negatives:
            continue
        d_ap = _sq(emb[a], emb[p])
        farther = [d for d in negatives if d > d_ap]
        d_an = min(farther) if farther else max(negatives)
        pair_losses.append(max(d_ap - d_an + margin, 0.0))
    return sum(pair_losses) / len(pair_losses) if pair_losses else 0.0


def _contrastive_by_hand(labels, emb, margin):
    terms = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        squared = _sq(emb[i], emb[j])
        if labels[i] == labels[j]:
            terms.append(0.5 * squared)
        else:
            terms.append(0.5 * max(margin - squared**0.5, 0.0) ** 2)
    return sum(terms) / len(terms)


def _unit_batch(seed, labels, dim=4):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(labels), dim))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------- hand-made batches

# a = (1, 0) and p = (0, 1) share identity 0, n = (-1, 0) is identity 1.
# d(a,p) = 2, d(a,n) = 4, d(p,n) = 2 (squared Euclidean).
HAND_LABELS = [0, 0, 1]
HAND_EMB = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]


def test_semi_hard_hand_case_uses_the_farthest_negative_when_none_is_farther():
    # (a, p): n is farther (4 > 2), loss max(2 - 4 + 0.2, 0) = 0.
    # (p, a): no negative farther than d(p,a) = 2 (d(p,n) = 2 is not > 2): fallback to the
    # farthest negative, d = 2, loss 2 - 2 + 0.2 = 0.2. Mean over the 2 pairs: 0.1.
    got = _value(losses.semi_hard_triplet_loss, HAND_LABELS, HAND_EMB)
    assert got == pytest.approx(0.1, abs=1e-6)


def test_batch_all_hand_case_averages_over_positive_triplets_only():
    # Triplets (a,p,n): 0 and (p,a,n): 0.2; only one is positive, so the mean is 0.2.
    got = _value(losses.batch_all_triplet_loss, HAND_LABELS, HAND_EMB)
    assert got == pytest.approx(0.2, abs=1e-6)


def test_contrastive_hand_case():
    # (a,p) same: 0.5 * 2 = 1; (a,n): D = 2 > 1, 0; (p,n): D = 1.414 > 1, 0. Mean of 3: 1/3.
    got = _value(losses.contrastive_loss, HAND_LABELS, HAND_EMB)
    assert got == pytest.approx(1 / 3, abs=1e-6)
    # margin 1.5: (p,n) adds 0.5 * (1.5 - sqrt 2)^2
    got = _value(losses.contrastive_loss, HAND_LABELS, HAND_EMB, margin=1.5)
    assert got == pytest.approx((1 + 0.5 * (1.5 - 2**0.5) ** 2) / 3, abs=1e-6)


def test_default_margin_is_facenets_0_2_not_tf_addons_1_0():
    loss = losses.keras_loss("triplet", mining="semi_hard")
    got = float(loss(np.asarray(HAND_LABELS), np.asarray(HAND_EMB, np.float32)))
    assert got == pytest.approx(0.1, abs=1e-6)  # margin 1.0 would give (0 + 1.0) / 2 = 0.5


@pytest.mark.parametrize("mining", ["batch_all", "semi_hard"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5]])
def test_no_valid_triplet_gives_zero(mining, labels):
    emb = _unit_batch(0, labels)
    assert _value(losses.triplet_loss, labels, emb, mining=mining) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_losses_match_loops_on_random_batches(seed, margin):
    labels = [0, 0, 1, 1, 1, 2, 3, 3]
    emb = _unit_batch(seed, labels)
    cases = [
        (losses.batch_all_triplet_loss, _batch_all_by_hand),
        (losses.semi_hard_triplet_loss, _semi_hard_by_hand),
        (losses.contrastive_loss, _contrastive_by_hand),
    ]
    for fn, by_hand in cases:
        expected = by_hand(labels, emb.tolist(), margin)
        assert _value(fn, labels, emb, margin=margin) == pytest.approx(expected, abs=1e-5)


def test_labels_as_keras_column_and_mining_choice_validated():
    column = np.asarray(HAND_LABELS).reshape(-1, 1)
    assert float(losses.semi_hard_triplet_loss(column, np.asarray(HAND_EMB, np.float32))) == (
        pytest.approx(0.1, abs=1e-6)
    )
    with pytest.raises(InputError, match="mining must be one of"):
        losses.triplet_loss(column, np.asarray(HAND_EMB, np.float32), mining="hardest")
    with pytest.raises(InputError, match="loss must be one of"):
        losses.keras_loss("arcface")


def test_gradients_are_finite_with_coincident_embeddings():
    from mobilecv._tf import tf

    t = tf()
    labels = np.asarray([0, 0, 1, 1, 2])
    emb = t.Variable(np.asarray([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], np.float32))
    for fn in (
        losses.batch_all_triplet_loss,
        losses.semi_hard_triplet_loss,
        losses.contrastive_loss,
    ):
        with t.GradientTape() as tape:
            value = fn(labels, emb)
        grad = tape.gradient(value, emb).numpy()
        assert np.isfinite(grad).all() and np.isfinite(float(value)), fn.__name__


@pytest.mark.parametrize("keras", ["tf_keras", "keras3"])
def test_losses_train_inside_model_fit(keras):
    from mobilecv._tf import get_keras

    K = get_keras(keras)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    x = (rng.normal(size=(6, 8))[labels] + 0.3 * rng.normal(size=(24, 8))).astype(np.float32)
    for loss in (
        losses.keras_loss("triplet", mining="batch_all"),
        losses.keras_loss("triplet", mining="semi_hard"),
        losses.keras_loss("contrastive"),
    ):
        inputs = K.Input((8,))
        outputs = K.layers.UnitNormalization()(K.layers.Dense(4)(inputs))
        model = K.Model(inputs, outputs)
        model.compile(optimizer="sgd", loss=loss)
        data = losses.pk_dataset(x, labels, p=3, k=2, seed=0, epochs=1)
        history = model.fit(data, epochs=2, verbose=0)
        assert all(np.isfinite(history.history["loss"])), loss.__name__


# ----------------------------------------------------------------- P x K sampler


def test_pk_batches_shape_identities_and_replacement():
    labels = np.asarray([0] * 6 + [1] * 5 + [2] * 2 + [3] * 4 + [4] * 7 + [5] * 3 + [6] * 4)
    batches = list(losses.pk_batches(labels, p=3, k=4, seed=0))
    assert len(batches) == 7 // 3  # one epoch visits each identity once, P at a time
    seen = []
    for batch in batches:
        assert batch.shape == (12,)
        groups = labels[batch].reshape(3, 4)
        assert (groups == groups[:, :1]).all()  # identity-major: K of each
        ids = groups[:, 0]
        assert len(set(ids)) == 3
        seen += list(ids)
        for identity, rows in zip(ids, batch.reshape(3, 4), strict=True):
            if (labels == identity).sum() >= 4:
                assert len(set(rows)) == 4  # enough images: no repeats
            else:
                assert len(set(rows)) == (labels == identity).sum() or len(set(rows)) < 4
    assert len(set(seen)) == len(seen)  # no identity twice within an epoch


def test_pk_batches_deterministic_by_seed_and_epochs():
    labels = np.repeat(np.arange(10), 5)
    first = list(losses.pk_batches(labels, 4, 3, seed=7, epochs=3))
    again = list(losses.pk_batches(labels, 4, 3, seed=7, epochs=3))
    other = list(losses.pk_batches(labels, 4, 3, seed=8, epochs=3))
    assert len(first) == 3 * (10 // 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("p, k", [(1, 4), (3, 1), (11, 2)])
def test_pk_batches_refuses_impossible_batches(p, k):
    with pytest.raises(InputError):
        next(losses.pk_batches(np.repeat(np.arange(10), 3), p, k))


def test_pk_dataset_gathers_matching_images_and_labels():
    labels = np.repeat(np.arange(5), 3)
    x = np.arange(15, dtype=np.uint8).reshape(15, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
    data = losses.pk_dataset(x, labels, p=2, k=3, seed=1, epochs=2)
    batches = list(data.as_numpy_iterator())
    expected = list(losses.pk_batches(labels, 2, 3, seed=1, epochs=2))
    assert len(batches) == len(expected) == 4
    for (images, ids), index in zip(batches, expected, strict=True):
        assert images.shape == (6, 2, 2, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[:, 0, 0, 0], index)
        np.testing.assert_array_equal(ids, labels[index])

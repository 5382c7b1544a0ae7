"""Metric-learning losses on a batch of embeddings, and the P x K batch sampler they need.

All losses take `(labels, embeddings)`: integer identity labels (N,) (or (N, 1), as Keras
passes `y_true`) and L2-normalised embeddings (N, D). They are TensorFlow ops, so they run
inside `model.fit` under tf_keras 2 and Keras 3 alike (`keras_loss` wraps one as a Keras
loss function).

- Triplet loss (FaceNet, Schroff et al. 2015): max(d(a, p) - d(a, n) + alpha, 0) with
  squared Euclidean distances d and margin alpha = 0.2, triplets mined inside the batch:
  - `batch_all` (Hermans et al. 2017): every valid triplet (a != p same identity, n another
    identity); the loss is the mean over the triplets whose loss is positive (0 if none).
  - `semi_hard` (FaceNet; the rule of TF Addons' TripletSemiHardLoss, whose default margin
    is 1.0 and which is deprecated, so it is written here): for every anchor-positive pair,
    the closest negative farther than the positive (d(a, n) > d(a, p)); if there is none,
    the farthest negative. The loss is the mean over anchor-positive pairs whose anchor has
    at least one negative in the batch (0 if there is no such pair).
- Contrastive loss (Hadsell, Chopra & LeCun 2006): over all pairs i < j of the batch,
  0.5 * D^2 for the same identity and 0.5 * max(m - D, 0)^2 otherwise, D the Euclidean
  distance (not squared) and m the margin (default 1.0; distances of unit vectors lie in
  [0, 2]); the mean over the pairs.

A batch of P identities x K images (`pk_batches`, `pk_dataset`) makes sure every anchor
has K - 1 positives and (P - 1) K negatives.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import numpy as np

from mobilecv._tf import tf
from mobilecv.errors import InputError, parse_choice

TRIPLET_MARGIN = 0.2  # FaceNet's alpha, on squared distances of unit vectors
CONTRASTIVE_MARGIN = 1.0


class Mining(enum.StrEnum):
    """How the triplet loss picks its triplets inside a batch."""

    BATCH_ALL = "batch_all"
    SEMI_HARD = "semi_hard"


class MetricLoss(enum.StrEnum):
    TRIPLET = "triplet"
    CONTRASTIVE = "contrastive"


# --------------------------------------------------------------------------- tf ops


def _labels_and_embeddings(labels, embeddings):
    t = tf()
    labels = t.reshape(t.cast(labels, t.int64), [-1])
    embeddings = t.cast(embeddings, t.float32)
    return labels, embeddings


def pairwise_squared_distances(embeddings):
    """(N, N) squared Euclidean distances, clipped at 0 against rounding."""
    t = tf()
    squares = t.reduce_sum(t.square(embeddings), axis=1)
    dots = t.matmul(embeddings, embeddings, transpose_b=True)
    distances = squares[:, None] - 2.0 * dots + squares[None, :]
    # The diagonal is exactly 0 in theory; rounding can leave it slightly off.
    return t.linalg.set_diag(t.maximum(distances, 0.0), t.zeros_like(squares))


def _identity_masks(labels):
    """(same, different) boolean (N, N) masks; `same` excludes i == j."""
    t = tf()
    equal = t.equal(labels[:, None], labels[None, :])
    not_self = t.logical_not(t.eye(t.shape(labels)[0], dtype=t.bool))
    return t.logical_and(equal, not_self), t.logical_not(equal)


def _safe_mean(total, count):
    t = tf()
    return t.math.divide_no_nan(total, t.cast(count, t.float32))


def batch_all_triplet_loss(labels, embeddings, margin: float = TRIPLET_MARGIN):
    """Mean of the positive losses over all valid in-batch triplets (Hermans et al.)."""
    t = tf()
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    distances = pairwise_squared_distances(embeddings)
    same, different = _identity_masks(labels)
    # loss[a, p, n] = d(a, p) - d(a, n) + margin on valid (a, p, n) only
    losses = distances[:, :, None] - distances[:, None, :] + margin
    valid = t.logical_and(same[:, :, None], different[:, None, :])
    losses = t.where(valid, t.maximum(losses, 0.0), 0.0)
    positive = t.reduce_sum(t.cast(losses > 1e-16, t.float32))
    return _safe_mean(t.reduce_sum(losses), positive)


def semi_hard_triplet_loss(labels, embeddings, margin: float = TRIPLET_MARGIN):
    """FaceNet's semi-hard mining: per anchor-positive pair the closest negative farther
    than the positive, else the farthest negative; the mean over those pairs."""
    t = tf()
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    distances = pairwise_squared_distances(embeddings)
    same, different = _identity_masks(labels)
    d_ap = distances[:, :, None]  # [a, p, -]
    d_an = distances[:, None, :]  # [a, -, n]
    negative = different[:, None, :]
    semi_hard = t.logical_and(negative, d_an > d_ap)
    inf = t.constant(np.inf, t.float32)
    closest_farther = t.reduce_min(t.where(semi_hard, d_an, inf), axis=2)
    farthest = t.reduce_max(t.where(different, distances, -inf), axis=1)[:, None]
    has_semi_hard = t.reduce_any(semi_hard, axis=2)
    chosen = t.where(has_semi_hard, closest_farther, farthest)  # [a, p]
    has_negative = t.reduce_any(different, axis=1)[:, None]
    pairs = t.logical_and(same, has_negative)
    losses = t.where(pairs, t.maximum(distances - chosen + margin, 0.0), 0.0)
    return _safe_mean(t.reduce_sum(losses), t.reduce_sum(t.cast(pairs, t.int32)))


def triplet_loss(
    labels, embeddings, margin: float = TRIPLET_MARGIN, mining: str | Mining = Mining.SEMI_HARD
):
    """The triplet loss with in-batch mining chosen by `mining` (see the module docstring)."""
    mining = parse_choice(Mining, mining, "mining")
    if mining is Mining.BATCH_ALL:
        return batch_all_triplet_loss(labels, embeddings, margin)
    return semi_hard_triplet_loss(labels, embeddings, margin)


def contrastive_loss(labels, embeddings, margin: float = CONTRASTIVE_MARGIN):
    """Hadsell et al.'s contrastive loss, the mean over all pairs i < j of the batch."""
    t = tf()
    labels, embeddings = _labels_and_embeddings(labels, embeddings)
    squared = pairwise_squared_distances(embeddings)
    same, different = _identity_masks(labels)
    # sqrt has an infinite gradient at 0: only pairs of different identities need D itself.
    distance = t.sqrt(t.where(different, t.maximum(squared, 1e-12), 1.0))
    pull = 0.5 * squared
    push = 0.5 * t.square(t.maximum(margin - distance, 0.0))
    per_pair = t.where(same, pull, t.where(different, push, 0.0))
    upper = t.linalg.band_part(t.ones_like(squared), 0, -1) - t.eye(t.shape(squared)[0])
    pairs = t.reduce_sum(upper)
    return _safe_mean(t.reduce_sum(per_pair * upper), pairs)


def keras_loss(
    kind: str | MetricLoss,
    margin: float | None = None,
    mining: str | Mining = Mining.SEMI_HARD,
) -> Callable:
    """A `loss(y_true, y_pred)` for `model.compile`: y_true the identity labels, y_pred
    the embeddings. `margin=None` takes the loss's default (0.2 triplet, 1.0 contrastive)."""
    kind = parse_choice(MetricLoss, kind, "loss")
    if kind is MetricLoss.CONTRASTIVE:
        chosen = CONTRASTIVE_MARGIN if margin is None else float(margin)

        def loss(y_true, y_pred):
            return contrastive_loss(y_true, y_pred, chosen)

        loss.__name__ = "contrastive_loss"
        return loss
    mining = parse_choice(Mining, mining, "mining")
    chosen = TRIPLET_MARGIN if margin is None else float(margin)

    def loss(y_true, y_pred):
        return triplet_loss(y_true, y_pred, chosen, mining)

    loss.__name__ = f"triplet_{mining.value}_loss"
    return loss


# --------------------------------------------------------------------------- P x K batches


def _check_pk(labels: np.ndarray, p: int, k: int) -> np.ndarray:
    identities = np.unique(labels)
    if p < 2 or k < 2:
        raise InputError(f"a P x K batch needs P >= 2 identities and K >= 2 images; got {p}x{k}")
    if p > len(identities):
        raise InputError(f"P = {p} identities asked for, the labels hold {len(identities)}")
    return identities


def pk_batches(labels, p: int, k: int, seed: int = 0, epochs: int = 1) -> Iterator[np.ndarray]:
    """Index batches of P identities x K images each (identity-major), deterministic by seed.

    One epoch visits every identity once in a shuffled order, P at a time (the last
    incomplete group is dropped), so an epoch has len(identities) // P batches. Each
    identity gives K distinct images when it has at least K, else K drawn with replacement.
    """
    labels = np.asarray(labels).reshape(-1)
    identities = _check_pk(labels, p, k)
    members = {identity: np.flatnonzero(labels == identity) for identity in identities}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(identities)
        for start in range(0, len(order) - p + 1, p):
            picks = []
            for identity in order[start : start + p]:
                images = members[identity]
                picks.append(rng.choice(images, size=k, replace=len(images) < k))
            yield np.concatenate(picks)


def pk_dataset(x: np.ndarray, labels, p: int, k: int, seed: int = 0, epochs: int = 1):
    """`pk_batches` as a tf.data.Dataset of (images, labels) batches of P * K.

    The batch order is fixed up front by the seed (one pass of `epochs` epochs, each with
    a fresh shuffle); images keep their dtype and range, the trainer maps them.
    """
    t = tf()
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x):
        raise InputError(f"{len(x)} images but {len(labels)} labels")
    batches = np.stack(list(pk_batches(labels, p, k, seed, epochs)))
    images = t.constant(x)
    ids = t.constant(labels.astype(np.int64))
    return t.data.Dataset.from_tensor_slices(batches).map(
        lambda index: (t.gather(images, index), t.gather(ids, index))
    )

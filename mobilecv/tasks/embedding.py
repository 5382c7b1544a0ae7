"""Embeddings for verification and one-shot recognition (course week 4: FaceNet, Siamese).

- Output ``embedding`` (N, D), L2-normalised: the deepest backbone map, global average
  pooling, a linear projection to D dimensions (default FaceNet's 128) and L2
  normalisation (Keras UnitNormalization, which converts to TFLite's builtin
  L2_NORMALIZATION, int8 included).
- Loss (:meth:`Embedding.compile`): the triplet loss with in-batch ``batch_all`` or
  ``semi_hard`` mining and a margin, or the contrastive loss
  (mobilecv.metric_learning.losses). Batches are P identities x K images
  (:meth:`Embedding.batch_order`), so every anchor has positives and negatives.
- Labels: ``{"identity": (N,) int64}``, global identity ids (mobilecv.data.glyphs): the
  glyph set ("glyphs") or scikit-image's LFW crops ("lfw"), split by identity, so the
  validation identities are never trained on.
- Metrics (numpy, :func:`embedding_scores`): verification AUC and TAR at FAR 1e-3 and 1e-2
  over pairs of the validation images, and 5-way / 20-way one-shot accuracy over 1,000
  episodes. The primary figure is the AUC: it is defined on every source (lfw's 15
  validation identities are too few for 20-way episodes), uses every pair with no episode
  sampling (20-way accuracy over 1,000 episodes has a standard error of about one point
  at 90%, so ranking by it ranks noise) and needs no threshold.
- Converter agreement: the mean cosine similarity of float and converted embeddings of the
  same images ("embedding_cosine"), and the share of images whose nearest other image is
  the same under both ("neighbour_agreement": one-shot recognition's decision, without
  labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv.errors import InputError, parse_choice
from mobilecv.registry import register_model
from mobilecv.tasks.base import Task, build_on_backbone, deepest, register_task

DEFAULT_DIM = 128  # FaceNet's
IMAGES_PER_IDENTITY = 4  # K of a P x K batch
MAX_ALL_PAIRS = 1_000_000  # beyond this many pairs, verification scores a balanced sample
SAMPLED_PAIRS = 200_000  # same-identity (at most) and different-identity pairs sampled
ONE_SHOT_WAYS = (5, 20)


def load_identities(source: str, split: str):
    """One split of an identity set: "glyphs" or "lfw" (mobilecv.data.glyphs)."""
    from mobilecv.data.glyphs import glyph_identities, lfw_identities

    loaders = {"glyphs": glyph_identities, "lfw": lfw_identities}
    if source not in loaders:
        raise InputError(
            f"the embedding task trains on identity sets ({', '.join(loaders)}), not {source!r}"
        )
    return loaders[source](split)


def limited(data, limit: int | None):
    """At most ``limit`` samples that still make P x K batches and one-shot episodes:
    the first m images of each of the first identities, m = max(K, limit / identities)."""
    import dataclasses

    if limit is None:
        return data
    if limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    identities = np.unique(data.y)
    per_identity = max(IMAGES_PER_IDENTITY, -(-int(limit) // len(identities)))
    rank = np.zeros(len(data.y), dtype=np.int64)
    for identity in identities:
        members = np.flatnonzero(data.y == identity)
        rank[members] = np.arange(len(members))
    chosen = identities[: -(-int(limit) // per_identity)]
    keep = np.flatnonzero((rank < per_identity) & np.isin(data.y, chosen))[: int(limit)]
    return dataclasses.replace(data, x=data.x[keep], y=data.y[keep], source=data.source[keep])


# -------------------------------------------------------------------------- metrics


def verification_pairs(labels: np.ndarray, seed: int = 0):
    """(i, j, same): every pair when there are at most MAX_ALL_PAIRS, else a sample."""
    from mobilecv.metric_learning.evaluate import all_pairs, balanced_pairs

    n = len(labels)
    if n * (n - 1) // 2 <= MAX_ALL_PAIRS:
        return all_pairs(labels)
    return balanced_pairs(labels, SAMPLED_PAIRS, seed)


def embedding_scores(embeddings: np.ndarray, labels) -> dict[str, float]:
    """Verification AUC, TAR at FAR 1e-3 / 1e-2 (NaN without the 1/FAR different-identity
    pairs that figure needs) and K-way one-shot accuracy (NaN with fewer than K
    identities) of embeddings of labelled images."""
    from mobilecv.metric_learning import evaluate

    labels = np.asarray(labels).reshape(-1)
    e = postprocess.embedding(embeddings)["embedding"]
    i, j, same = verification_pairs(labels)
    curve = evaluate.roc(evaluate.pair_distances(e, i, j), same)
    scores = {"auc": curve.auc}
    for far in evaluate.FAR_TARGETS:
        enough = curve.negatives >= 1.0 / far
        scores[f"tar_at_far_{far:g}"] = evaluate.tar_at_far(curve, far) if enough else np.nan
    identities = len(np.unique(labels))
    for way in ONE_SHOT_WAYS:
        fits = way <= identities
        scores[f"one_shot_{way}"] = evaluate.one_shot_accuracy(e, labels, way) if fits else np.nan
    scores["identities"] = identities
    scores["pairs"] = curve.positives + curve.negatives
    return {k: float(v) for k, v in scores.items()}


def embedding_agreement(reference: np.ndarray, converted: np.ndarray) -> dict[str, float]:
    """Mean cosine similarity of the rows of two embeddings of the same images, and the
    share of rows whose nearest other row is the same in both (with two rows or more)."""
    a = postprocess.embedding(reference)["embedding"]
    b = postprocess.embedding(converted)["embedding"]
    figures = {"embedding_cosine": float(np.mean(np.sum(a * b, axis=1)))}
    if len(a) > 1:
        nearest = [np.argmin(_self_excluded_distances(e), axis=1) for e in (a, b)]
        figures["neighbour_agreement"] = float(np.mean(nearest[0] == nearest[1]))
    return figures


def _self_excluded_distances(e: np.ndarray) -> np.ndarray:
    squared = np.maximum(2.0 - 2.0 * e @ e.T, 0.0)
    np.fill_diagonal(squared, np.inf)
    return squared


# -------------------------------------------------------------------------- task


@register_task
class Embedding(Task):
    name = "embedding"
    outputs = postprocess.TASK_OUTPUTS["embedding"]
    primary_metric = "auc"  # see the module docstring
    agreement_metric = "embedding_cosine"
    sources = ("glyphs", "lfw")
    legend = "embedding model: no picture per image"
    images_per_identity = IMAGES_PER_IDENTITY

    def head(self, K, features, *, classes: int, dim: int = DEFAULT_DIM):
        if int(dim) < 2:
            raise InputError(f"dim must be at least 2; got {dim}")
        x = K.layers.GlobalAveragePooling2D(name="embedding_pool")(deepest(features))
        x = K.layers.Dense(int(dim), name="embedding_projection")(x)
        return {"embedding": K.layers.UnitNormalization(axis=-1, name="embedding")(x)}

    def compile(
        self, model, optimizer, loss: str = "triplet", mining: str = "semi_hard", margin=None
    ):
        from mobilecv.metric_learning.losses import MetricLoss, Mining, keras_loss

        kind = parse_choice(MetricLoss, loss, "loss")
        function = keras_loss(kind, margin, parse_choice(Mining, mining, "mining"))
        model.compile(optimizer=optimizer, loss={"embedding": function})

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        from mobilecv.data.datasets import ArrayData

        if scenes:
            raise InputError("scene options apply to tasks trained on scenes, not embedding")
        data = limited(load_identities(source, split), limit)
        return ArrayData(
            x=data.x,
            y={"identity": np.asarray(data.y, dtype=np.int64)},
            classes=data.classes,
            name=source,
            provenance=data.provenance,
        )

    def keras_targets(self, y):
        return {"embedding": y["identity"]}, None

    def batch_order(self, y, batch_size: int, seed: int) -> np.ndarray:
        """One epoch of P x K batches (P = batch_size // K identities, K images each),
        visiting every identity about as often as it has images: ceil(N / (identities x
        K)) shuffled passes over the identities (mobilecv.metric_learning.losses)."""
        from mobilecv.metric_learning.losses import pk_batches

        k = self.images_per_identity
        if batch_size % k:
            raise InputError(f"batch size {batch_size} is not a multiple of K = {k} images")
        labels = np.asarray(y["identity"]).reshape(-1)
        passes = -(-len(labels) // (len(np.unique(labels)) * k))
        batches = list(pk_batches(labels, batch_size // k, k, seed=seed, epochs=passes))
        return np.concatenate(batches)

    def decode(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return postprocess.embedding(outputs["embedding"])

    def score(self, outputs, y) -> dict[str, float]:
        return embedding_scores(outputs["embedding"], y["identity"])

    def agreement(self, reference, converted) -> dict[str, float]:
        return embedding_agreement(reference["embedding"], converted["embedding"])


@register_model(
    "embedding",
    family="embedding",
    default_resolution=64,
    task="embedding",
    unsupported=("include_top", "classes"),
)
def embedding(
    *,
    width: float,
    depth: float,
    resolution: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
    dim: int = DEFAULT_DIM,
):
    """An encoder on any registered backbone: global average pooling of its deepest map, a
    linear projection to ``dim`` dimensions and L2 normalisation (FaceNet's 128-d unit
    embeddings)."""
    return build_on_backbone("embedding", "embedding", **locals())

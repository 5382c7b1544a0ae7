"""Verification and one-shot recognition on embeddings (numpy and scikit-learn, no TF).

Verification (is this pair the same identity?) thresholds the Euclidean distance of two
embeddings: "same" when d <= tau.
- `roc`: the ROC curve (sklearn.metrics.roc_curve on the score -d) and its AUC
  (roc_auc_score); FAR is the false accept rate over different-identity pairs, TAR the
  true accept rate over same-identity pairs.
- `tar_at_far`: TAR at a FAR target, without interpolation (see there).
- `best_threshold` picks tau on validation pairs; `accuracy_at` applies it to test pairs
  (the threshold is never tuned on test). `verification_report` does the lot.
One-shot K-way recognition (`one_shot_accuracy`): episodes of `way` identities, one support
image each, and a query of one of them; the nearest support wins.
Plots (`plot_roc`, `plot_projection`) are PNGs written atomically.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError, parse_choice
from mobilecv.fileio import atomic_path

FAR_TARGETS = (1e-3, 1e-2)
ONE_SHOT_EPISODES = 1000


# --------------------------------------------------------------------------- pairs


def _labels(labels) -> np.ndarray:
    return np.asarray(labels).reshape(-1)


def all_pairs(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j: (i, j, same) with `same` True for the same identity."""
    labels = _labels(labels)
    i, j = np.triu_indices(len(labels), k=1)
    return i, j, labels[i] == labels[j]


def balanced_pairs(labels, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` same-identity and `count` different-identity pairs drawn without repeats
    (the LFW protocol's balance); fewer same pairs when the labels do not hold `count`."""
    i, j, same = all_pairs(labels)
    if not same.any() or same.all():
        raise InputError("verification pairs need two identities and one with two images")
    rng = np.random.default_rng(seed)
    positive = rng.permutation(np.flatnonzero(same))[:count]
    negative = rng.permutation(np.flatnonzero(~same))[:count]
    chosen = np.sort(np.concatenate([positive, negative]))
    return i[chosen], j[chosen], same[chosen]


def pair_distances(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Euclidean distance between embeddings[i] and embeddings[j], pair by pair."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return np.linalg.norm(embeddings[i] - embeddings[j], axis=1)


# --------------------------------------------------------------------------- ROC


@dataclass(frozen=True)
class RocCurve:
    far: np.ndarray  # false accept rate at each threshold, increasing
    tar: np.ndarray  # true accept rate at each threshold
    thresholds: np.ndarray  # distance thresholds tau ("same" when d <= tau)
    auc: float
    positives: int
    negatives: int


def _check_pairs(distances, same) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    same = np.asarray(same, dtype=bool).reshape(-1)
    if len(distances) != len(same):
        raise InputError(f"{len(distances)} distances but {len(same)} same/different flags")
    if same.all() or not same.any():
        raise InputError("verification needs both same-identity and different-identity pairs")
    return distances, same


def roc(distances, same) -> RocCurve:
    """The ROC curve of thresholding the distance, and its AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    distances, same = _check_pairs(distances, same)
    far, tar, scores = roc_curve(same, -distances, drop_intermediate=False)
    return RocCurve(
        far=far,
        tar=tar,
        thresholds=-scores,
        auc=float(roc_auc_score(same, -distances)),
        positives=int(same.sum()),
        negatives=int((~same).sum()),
    )


def tar_at_far(curve: RocCurve, far_target: float) -> float:
    """The highest TAR of an operating point whose FAR does not exceed `far_target`.

    No interpolation: the ROC of finitely many pairs is a staircase, and a straight line
    between two of its points is only reachable by a randomised threshold. So the value is
    what one real threshold achieves (a conservative reading). With N different-identity
    pairs, FARs are multiples of 1/N: below N = 1/far_target only FAR = 0 counts, so
    compare `curve.negatives` with 1/far_target before trusting the figure.
    """
    allowed = curve.far <= far_target + 1e-12
    return float(curve.tar[allowed].max())


# --------------------------------------------------------------------------- threshold


def accuracy_at(distances, same, threshold: float) -> float:
    """The share of pairs classified right by "same when d <= threshold"."""
    distances, same = _check_pairs(distances, same)
    return float(np.mean((distances <= threshold) == same))


def best_threshold(distances, same) -> tuple[float, float]:
    """(tau, accuracy): the threshold that maximises accuracy on these (validation) pairs.

    Candidates are midpoints between consecutive sorted distances, plus one below the
    smallest and one above the largest; the first best (the smallest tau) wins.
    """
    distances, same = _check_pairs(distances, same)
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    # Accepting the first m pairs (m = 0..N): correct = accepted positives + rejected negatives
    accepted_pos = np.concatenate([[0], np.cumsum(s)])
    accepted_neg = np.concatenate([[0], np.cumsum(~s)])
    correct = accepted_pos + ((~s).sum() - accepted_neg)
    # A cut is only possible between different distances (ties go together).
    cuttable = np.concatenate([[True], d[1:] > d[:-1], [True]])
    correct = np.where(cuttable, correct, -1)
    m = int(np.argmax(correct))
    if m == 0:
        tau = d[0] - 1.0
    elif m == len(d):
        tau = d[-1] + 1.0
    else:
        tau = (d[m - 1] + d[m]) / 2.0
    return float(tau), float(correct[m] / len(d))


@dataclass(frozen=True)
class VerificationReport:
    auc: float
    tar_at_far: dict[float, float]  # FAR target -> TAR
    threshold: float  # tau chosen on validation pairs
    validation_accuracy: float
    test_accuracy: float  # tau applied to test pairs
    test_positives: int
    test_negatives: int
    curve: RocCurve


def verification_report(val_distances, val_same, test_distances, test_same) -> VerificationReport:
    """ROC, AUC and TAR@FAR on test pairs; tau chosen on validation pairs, applied to test."""
    curve = roc(test_distances, test_same)
    tau, val_accuracy = best_threshold(val_distances, val_same)
    return VerificationReport(
        auc=curve.auc,
        tar_at_far={far: tar_at_far(curve, far) for far in FAR_TARGETS},
        threshold=tau,
        validation_accuracy=val_accuracy,
        test_accuracy=accuracy_at(test_distances, test_same, tau),
        test_positives=curve.positives,
        test_negatives=curve.negatives,
        curve=curve,
    )


# --------------------------------------------------------------------------- one-shot


def one_shot_accuracy(
    embeddings: np.ndarray,
    labels,
    way: int,
    episodes: int = ONE_SHOT_EPISODES,
    seed: int = 0,
) -> float:
    """K-way one-shot accuracy over `episodes` random episodes.

    Each episode draws the query's identity among those with two or more images, `way - 1`
    other identities, one support image per identity, and a query image of the query's
    identity other than its support image; it is right when the nearest support
    (Euclidean) is the query's identity.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = _labels(labels)
    members = {identity: np.flatnonzero(labels == identity) for identity in np.unique(labels)}
    queryable = [identity for identity, rows in members.items() if len(rows) >= 2]
    if way < 2 or way > len(members):
        raise InputError(f"way must be in 2..{len(members)} (the identities given); got {way}")
    if not queryable or episodes < 1:
        raise InputError("one-shot episodes need an identity with two images and episodes >= 1")
    identities = np.asarray(list(members))
    rng = np.random.default_rng(seed)
    right = 0
    for _ in range(episodes):
        target = queryable[rng.integers(len(queryable))]
        others = rng.choice(identities[identities != target], size=way - 1, replace=False)
        support_of_target, query = rng.choice(members[target], size=2, replace=False)
        support = [support_of_target] + [rng.choice(members[o]) for o in others]
        distances = np.linalg.norm(embeddings[support] - embeddings[query], axis=1)
        right += int(np.argmin(distances) == 0)
    return right / episodes


# --------------------------------------------------------------------------- plots


class Projection(enum.StrEnum):
    PCA = "pca"
    TSNE = "tsne"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curve: RocCurve, path: str | os.PathLike, title: str = "", force: bool = False
) -> Path:
    """The ROC curve (TAR against FAR, FAR on a log axis) as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    shown = curve.far > 0  # log axis: FAR = 0 cannot be drawn
    ax.plot(curve.far[shown], curve.tar[shown], lw=1.5)
    for far in FAR_TARGETS:
        ax.axvline(far, color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel(f"FAR ({curve.negatives} different-identity pairs)")
    ax.set_ylabel(f"TAR ({curve.positives} same-identity pairs)")
    ax.set_title(f"{title} AUC {curve.auc:.4f}".strip(), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def project_2d(embeddings: np.ndarray, method: str | Projection = Projection.PCA, seed: int = 0):
    """(N, 2) coordinates of the embeddings by PCA or t-SNE (scikit-learn)."""
    method = parse_choice(Projection, method, "projection")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if method is Projection.PCA:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(embeddings)


def plot_projection(
    embeddings: np.ndarray,
    labels,
    path: str | os.PathLike,
    method: str | Projection = Projection.PCA,
    max_identities: int = 20,
    force: bool = False,
) -> Path:
    """A 2-D projection of the embeddings as a PNG, coloured by identity.

    Only the first `max_identities` identities (by label) are drawn: 20 colours are the
    most a reader can tell apart. The projection is fitted on those points.
    """
    labels = _labels(labels)
    shown = np.unique(labels)[:max_identities]
    keep = np.isin(labels, shown)
    points = project_2d(np.asarray(embeddings)[keep], method)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    colours = plt.cm.tab20(np.searchsorted(shown, labels[keep]) % 20)
    ax.scatter(points[:, 0], points[:, 1], c=colours, s=10)
    ax.set_title(f"{Projection(method).value.upper()} of {keep.sum()} embeddings", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)

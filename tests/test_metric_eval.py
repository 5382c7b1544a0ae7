"""Verification (ROC, AUC, TAR at FAR, validation-chosen threshold), one-shot episodes, plots."""

import subprocess
import sys

import numpy as np
import pytest

from mobilecv.errors import InputError
from mobilecv.metric_learning import evaluate as ev


def _pairs(positive, negative):
    distances = np.concatenate([positive, negative]).astype(np.float64)
    same = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    return distances, same


def test_auc_of_a_hand_counted_case():
    # AUC = P(d_same < d_different): of the 16 (same, different) couples only
    # (0.4, 0.35) is out of order, so 15/16.
    curve = ev.roc(*_pairs([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7]))
    assert curve.auc == pytest.approx(15 / 16)
    assert (curve.positives, curve.negatives) == (4, 4)
    assert curve.far[0] == 0 and curve.far[-1] == 1 and curve.tar[-1] == 1


def test_tar_at_far_is_what_one_threshold_achieves():
    # 1000 different-identity pairs at 1.000, 1.001, ..., 1.999. Same-identity pairs:
    # 80 at 0.5, 10 at 1.0005, 5 at 1.0055, 5 at 2.5.
    # FAR <= 1e-3 allows one false accept: tau = 1.0005 accepts 90 -> TAR 0.90.
    # FAR <= 1e-2 allows ten: tau = 1.0055 accepts 95 (6 false accepts) -> TAR 0.95.
    # A straight line between ROC points would claim more at both.
    negative = 1.0 + np.arange(1000) / 1000
    positive = np.concatenate([np.full(80, 0.5), np.full(10, 1.0005), np.full(5, 1.0055)])
    curve = ev.roc(*_pairs(np.concatenate([positive, np.full(5, 2.5)]), negative))
    assert ev.tar_at_far(curve, 1e-3) == pytest.approx(0.90)
    assert ev.tar_at_far(curve, 1e-2) == pytest.approx(0.95)
    assert ev.tar_at_far(curve, 0.0) == pytest.approx(0.80)


def test_threshold_is_chosen_on_validation_and_applied_to_test():
    # Validation sorted: .1S .2S .25D .3S .5D .6D; accepting the first 2 or 4 is right 5 of 6
    # times; the first best (2) gives tau = (0.2 + 0.25) / 2.
    tau, accuracy = ev.best_threshold(*_pairs([0.1, 0.2, 0.3], [0.25, 0.5, 0.6]))
    assert tau == pytest.approx(0.225) and accuracy == pytest.approx(5 / 6)
    # On test pairs tau = 0.225 rejects the same pair at 0.3: 3 of 4 right. A threshold
    # tuned on test (0.3 < tau < 0.5) would score 4 of 4.
    report = ev.verification_report(
        *_pairs([0.1, 0.2, 0.3], [0.25, 0.5, 0.6]), *_pairs([0.22, 0.3], [0.5, 0.9])
    )
    assert report.threshold == pytest.approx(0.225)
    assert report.test_accuracy == pytest.approx(0.75)
    assert report.auc == pytest.approx(1.0)
    assert set(report.tar_at_far) == {1e-3, 1e-2}


def test_best_threshold_keeps_tied_distances_together():
    tau, accuracy = ev.best_threshold(*_pairs([0.1, 0.5], [0.5, 0.9]))
    # A cut inside the tie at 0.5 is impossible: 0.3 (3 of 4) or 0.7 (3 of 4).
    assert accuracy == pytest.approx(0.75) and tau == pytest.approx(0.3)


def test_pairs_and_distances():
    labels = np.asarray([0, 0, 0, 1, 1, 2])
    i, j, same = ev.all_pairs(labels)
    assert len(i) == 15 and same.sum() == 3 + 1
    bi, bj, bsame = ev.balanced_pairs(labels, 3, seed=0)
    assert bsame.sum() == 3 and (~bsame).sum() == 3 and (bi < bj).all()
    embeddings = np.asarray([[0, 0], [3, 4], [0, 1]], float)
    np.testing.assert_allclose(ev.pair_distances(embeddings, [0, 1], [1, 2]), [5, 18**0.5])
    with pytest.raises(InputError):
        ev.roc([0.1, 0.2], [True, True])


def _separated(identities, per_identity, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:identities] * 10
    labels = np.repeat(np.arange(identities), per_identity)
    return centres[labels] + 0.01 * rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("way", [5, 20])
def test_one_shot_is_perfect_on_separated_embeddings(way):
    embeddings, labels = _separated(30, 4)
    assert ev.one_shot_accuracy(embeddings, labels, way, episodes=1000) == 1.0


@pytest.mark.parametrize("way", [5, 20])
def test_one_shot_is_chance_on_random_embeddings(way):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(40), 5)
    embeddings = rng.normal(size=(len(labels), 16))
    accuracy = ev.one_shot_accuracy(embeddings, labels, way, episodes=2000, seed=3)
    assert abs(accuracy - 1 / way) < 0.04  # 4 standard errors at way 5


def test_one_shot_query_is_never_its_own_support():
    # Only identity 0 has two images (so it is always the query's), far apart, and each
    # sits beside the single image of another identity: with the query distinct from its
    # support every episode is wrong (a query equal to its support would be right half
    # the time).
    embeddings = np.asarray([[0.0], [10.0], [10.1], [0.1]])
    labels = np.asarray([0, 0, 1, 2])
    assert ev.one_shot_accuracy(embeddings, labels, way=3, episodes=200) == 0.0


def test_one_shot_is_deterministic_and_validates_way():
    embeddings = np.random.default_rng(0).normal(size=(60, 8))
    labels = np.repeat(np.arange(12), 5)
    first = ev.one_shot_accuracy(embeddings, labels, 5, episodes=300, seed=4)
    assert first == ev.one_shot_accuracy(embeddings, labels, 5, episodes=300, seed=4)
    for way in (1, 13):
        with pytest.raises(InputError, match="way must be"):
            ev.one_shot_accuracy(embeddings, labels, way)


def test_plots_are_pngs_written_atomically(tmp_path):
    embeddings, labels = _separated(25, 4, dim=32)
    curve = ev.roc(*_pairs([0.1, 0.2, 0.3], [0.25, 0.5, 0.6]))
    roc_png = ev.plot_roc(curve, tmp_path / "roc.png", title="test")
    projection = ev.plot_projection(embeddings, labels, tmp_path / "proj.png")
    for path in (roc_png, projection):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj.png", "roc.png"]
    with pytest.raises(InputError, match="exists"):
        ev.plot_roc(curve, tmp_path / "roc.png")
    with pytest.raises(InputError, match="projection must be one of"):
        ev.plot_projection(embeddings, labels, tmp_path / "x.png", method="umap")


def test_tsne_projection_keeps_separated_identities_apart():
    embeddings, labels = _separated(3, 8, dim=8)
    points = ev.project_2d(embeddings, "tsne")
    assert points.shape == (24, 2)
    centres = np.stack([points[labels == i].mean(axis=0) for i in range(3)])
    spread = max(np.linalg.norm(points[labels == i] - centres[i], axis=1).max() for i in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > spread


def test_evaluation_does_not_import_tensorflow():
    code = (
        "import sys, mobilecv.metric_learning.evaluate, mobilecv.data.glyphs; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

"""The binary verification head (issue 15 §1): the absolute-difference and chi-squared
pair features by hand and in Keras, the frozen and the shared (Siamese) training, scores
on held-out identities, and head files across processes and when they are bad."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from mobilecv.errors import InputError
from mobilecv.metric_learning.head import (
    PairForm,
    VerificationHead,
    head_scores,
    pair_features,
    train_head,
    train_siamese,
)


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def identities(count: int, per_identity: int, dim: int, noise: float, seed: int):
    """Unit embeddings of `count` identities: a random centre each plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(count), per_identity)
    centres = unit(rng.normal(size=(count, dim)))
    return unit(centres[labels] + noise * rng.normal(size=(len(labels), dim))), labels


def one_line_error(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------- features


def test_pair_features_by_hand_both_forms():
    f1 = np.array([[0.6, -0.8, 0.0], [0.2, 0.5, 0.0]])
    f2 = np.array([[-0.6, 0.8, 0.0], [0.4, 0.1, 0.0]])
    for _ in range(2):  # a public function called twice gives the same answer
        np.testing.assert_allclose(
            pair_features(f1, f2, "abs"), [[1.2, 1.6, 0.0], [0.2, 0.4, 0.0]], atol=1e-12
        )
        chi2 = pair_features(f1, f2, PairForm.CHI2)
        # Opposite signs: the course's f1 + f2 is 0 here; |f1| + |f2| keeps it finite.
        np.testing.assert_allclose(chi2[0], [1.44 / 1.2, 2.56 / 1.6, 0.0], rtol=1e-5)
        # Non-negative features: the course's (f1 - f2)^2 / (f1 + f2), 0/0 read as 0.
        np.testing.assert_allclose(chi2[1], [0.04 / 0.6, 0.16 / 0.6, 0.0], rtol=1e-5)
        assert np.all(np.isfinite(chi2)) and np.all(chi2 >= 0)
    one_row = pair_features([1.0, 0.0], [0.0, 1.0], "abs")  # (D,) rows are one pair
    assert one_row.shape == (1, 2)


def test_bad_features_are_one_line_input_errors():
    assert "abs, chi2" in one_line_error(lambda: pair_features([[1.0]], [[1.0]], "cosine"))
    assert "shape" in one_line_error(lambda: pair_features(np.ones((3, 8)), np.ones((3, 4)), "abs"))
    assert "NaN" in one_line_error(lambda: pair_features([[np.nan]], [[1.0]], "chi2"))
    weights = np.ones(4)
    head = VerificationHead("abs", weights, 0.0)
    weights[0] = 5.0  # the head keeps its own copy, read-only
    with pytest.raises(ValueError, match="read-only"):
        head.weights[0] = 5.0
    assert head.weights.tolist() == [1.0] * 4
    assert "numbers" in one_line_error(lambda: VerificationHead("abs", ["a"], 0.0))
    assert "4-d" in one_line_error(lambda: head.probability(np.ones((2, 8)), np.ones((2, 8))))


@pytest.mark.parametrize("form", ["abs", "chi2"])
def test_numpy_and_keras_pair_features_and_probabilities_agree(form):
    rng = np.random.default_rng(3)
    e1 = np.concatenate([unit(rng.normal(size=(30, 8))), np.abs(unit(rng.normal(size=(10, 8))))])
    e2 = np.concatenate([unit(rng.normal(size=(30, 8))), np.abs(unit(rng.normal(size=(10, 8))))])
    head = VerificationHead(form, rng.normal(size=8), 0.3)
    features = head.model.get_layer("pair_features")([e1.astype("float32"), e2.astype("float32")])
    np.testing.assert_allclose(np.asarray(features), pair_features(e1, e2, form), atol=1e-6)
    keras_p = head.model.predict([e1, e2], verbose=0).reshape(-1)
    np.testing.assert_allclose(head.probability(e1, e2), keras_p, atol=1e-6)
    assert 0.05 < keras_p.mean() < 0.95  # the weights matter: not a saturated unit


# ----------------------------------------------------------------------- frozen head


@pytest.mark.parametrize("form", ["abs", "chi2"])
def test_frozen_head_separates_held_out_identities_and_not_random_embeddings(form):
    embeddings, labels = identities(40, 6, 16, noise=0.1, seed=0)
    train, held_out = labels < 25, labels >= 25
    validation = (embeddings[held_out], labels[held_out])
    head = train_head(
        embeddings[train], labels[train], form, pairs=1500, epochs=4, validation=validation
    )
    assert len(head.history["val_loss"]) == 4 and head.dim == 16
    scores = head_scores(head, embeddings[held_out], labels[held_out])
    assert scores["auc"] > 0.99, scores
    assert scores["identities"] == 15 and scores["pairs"] == 90 * 89 / 2
    assert scores["tar_at_far_0.001"] > 0.95  # 3,780 different-identity pairs
    again = train_head(
        embeddings[train], labels[train], form, pairs=1500, epochs=4, validation=validation
    )
    np.testing.assert_allclose(again.weights, head.weights, atol=1e-6)  # seeded: repeats
    assert head_scores(head, embeddings[held_out], labels[held_out]) == scores

    noise = unit(np.random.default_rng(1).normal(size=embeddings.shape))  # labels say nothing
    chance = train_head(noise[train], labels[train], form, pairs=1500, epochs=4)
    assert 0.4 < head_scores(chance, noise[held_out], labels[held_out])["auc"] < 0.6


def test_bad_training_input_is_one_line():
    embeddings, labels = identities(5, 4, 8, noise=0.1, seed=0)
    assert "labels" in one_line_error(lambda: train_head(embeddings, labels[:-1]))
    assert "pairs" in one_line_error(lambda: train_head(embeddings, labels, pairs=0))
    assert "abs, chi2" in one_line_error(lambda: train_head(embeddings, labels, "l2"))
    assert "identities" in one_line_error(lambda: train_head(embeddings, np.zeros(20)))
    other = identities(5, 4, 4, noise=0.1, seed=1)
    assert "4-d" in one_line_error(lambda: train_head(embeddings, labels, validation=other))
    assert "pair" in one_line_error(lambda: train_head(embeddings, labels, validation=other[0]))


# ----------------------------------------------------------------------- shared encoder


def weights_of(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def embed(encoder, x) -> np.ndarray:
    return encoder.predict(x, verbose=0)["embedding"]  # the embedding model's named output


def glyph_like(count: int, per_identity: int, seed: int = 0):
    """Images of identities: a random 32x32 pattern each, with pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(count), per_identity)
    patterns = rng.integers(0, 256, size=(count, 32, 32, 1))
    noisy = patterns[labels] + rng.normal(0, 20, size=(len(labels), 32, 32, 1))
    return SimpleNamespace(x=np.clip(noisy, 0, 255).astype(np.uint8), y={"identity": labels})


@pytest.fixture(scope="module")
def encoder_and_data():
    import mobilecv

    encoder = mobilecv.build(
        "embedding", backbone="lenet5", width=0.25, resolution=32, input_channels=1, dim=8
    )  # 296 parameters: the shared path, not the backbone, is under test
    return encoder, glyph_like(8, 4)


def test_frozen_head_leaves_encoder_alone_and_siamese_trains_it(encoder_and_data, tmp_path):
    from mobilecv.data.datasets import model_inputs
    from mobilecv.modelio import save_model

    encoder, data = encoder_and_data
    before = weights_of(encoder)
    embeddings = embed(encoder, model_inputs(data.x, encoder))
    train_head(embeddings, data.y["identity"], "chi2", pairs=50, epochs=2)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(encoder), strict=True))

    for form, warm in (("abs", True), ("chi2", False)):  # called twice
        siamese, head = train_siamese(encoder, data, form, steps=3, batch_size=8, warm_start=warm)
        assert head.form is PairForm(form) and head.dim == 8
        assert ("warm_start_loss" in head.history) is warm and len(head.history["loss"]) == 1
        assert siamese.get_layer(encoder.name) is encoder  # one encoder: both branches share it
        x = model_inputs(data.x[:6], encoder)
        x1, x2 = x[:3], x[3:]
        e1, e2 = embed(encoder, x1), embed(encoder, x2)
        siamese_p = siamese.predict([x1, x2], verbose=0).reshape(-1)
        np.testing.assert_allclose(head.probability(e1, e2), siamese_p, atol=1e-5)
    after = weights_of(encoder)
    changed = [not np.allclose(a, b) for a, b in zip(before, after, strict=True)]
    assert sum(changed) > len(changed) // 2  # trained end to end, not just the head

    save_model(siamese, tmp_path / "siamese.keras")
    head.save(tmp_path / "head.json")
    np.save(tmp_path / "pairs.npy", np.stack([x1, x2]))
    np.save(tmp_path / "expected.npy", np.stack([siamese_p, head.probability(e1, e2)]))
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from mobilecv.metric_learning.head import VerificationHead
        from mobilecv.modelio import load_model

        folder = sys.argv[1]
        x1, x2 = np.load(folder + "/pairs.npy")
        siamese = load_model(folder + "/siamese.keras")
        head = VerificationHead.load(folder + "/head.json", dim=8)
        encoder = siamese.get_layer(sys.argv[2])
        e1, e2 = (encoder.predict(x, verbose=0)["embedding"] for x in (x1, x2))
        got = [siamese.predict([x1, x2], verbose=0).reshape(-1), head.probability(e1, e2)]
        np.save(folder + "/got.npy", np.stack(got))
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), encoder.name], check=True, timeout=300
    )
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), np.load(tmp_path / "expected.npy"), atol=1e-6)  # fmt: skip


def test_siamese_bad_input_is_one_line(encoder_and_data):
    encoder, data = encoder_and_data
    short = SimpleNamespace(x=data.x, y=data.y["identity"][:-1])
    assert "labels" in one_line_error(lambda: train_siamese(encoder, short, steps=1))
    assert "steps" in one_line_error(lambda: train_siamese(encoder, data, steps=0))
    assert "abs, chi2" in one_line_error(lambda: train_siamese(encoder, data, "sum", steps=1))


# ----------------------------------------------------------------------- head files


def test_head_file_round_trips_in_another_process(tmp_path):
    rng = np.random.default_rng(5)
    head = VerificationHead("chi2", rng.normal(size=16), -0.7)
    path = head.save(tmp_path / "head.json")
    e1, e2 = unit(rng.normal(size=(20, 16))), unit(rng.normal(size=(20, 16)))
    np.save(tmp_path / "e.npy", np.stack([e1, e2]))
    script = (
        "import sys, json, numpy as np\n"
        "from mobilecv.metric_learning.head import VerificationHead\n"
        "e1, e2 = np.load(sys.argv[2])\n"
        "for _ in range(2):\n"
        "    head = VerificationHead.load(sys.argv[1])\n"
        "    print(json.dumps([head.form.value, head.probability(e1, e2).tolist()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "e.npy")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    form, probabilities = json.loads(lines[0])
    assert form == "chi2"
    assert probabilities == head.probability(e1, e2).tolist()  # exactly: JSON keeps float64
    loaded = VerificationHead.load(path, dim=16)
    assert loaded == head and loaded != VerificationHead("abs", head.weights, head.bias)
    assert "exists" in one_line_error(lambda: head.save(path))
    head.save(path, force=True)


def test_bad_head_files_are_one_line_input_errors(tmp_path):
    good = VerificationHead("abs", np.arange(1.0, 5.0), 0.5)
    path = good.save(tmp_path / "good.json")
    assert "8-d" in one_line_error(lambda: VerificationHead.load(path, dim=8))
    document = json.loads(path.read_text())
    bad = {
        "not JSON": b"\x00\x01 not json",
        "not a mobilecv": json.dumps({"kind": "something else"}).encode(),
        "version 2": json.dumps({**document, "version": 2}).encode(),
        "no 'weights'": json.dumps({k: v for k, v in document.items() if k != "weights"}).encode(),
        "dim 5": json.dumps({**document, "dim": 5}).encode(),
        "pair form": json.dumps({**document, "form": "cosine"}).encode(),
        "finite": json.dumps({**document, "weights": [1.0, float("nan"), 0.0, 0.0]}).encode(),
        "corrupt": json.dumps({**document, "weights": "abc"}).encode(),
    }
    for expected, content in bad.items():
        broken = tmp_path / "broken.json"
        broken.write_bytes(content)
        assert expected in one_line_error(lambda p=broken: VerificationHead.load(p)), expected
    assert "no such file" in one_line_error(lambda: VerificationHead.load(tmp_path / "x.json"))
    assert ".json" in one_line_error(lambda: good.save(tmp_path / "head.npz"))

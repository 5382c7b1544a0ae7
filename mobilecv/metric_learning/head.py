"""The binary verification head (course week 4; Taigman et al. 2014, DeepFace, section 4.2):
a logistic unit that says whether two embeddings show the same identity, instead of
thresholding their distance.

- Pair features (`pair_features`, numpy; the Keras twin is `custom_layers.PairFeatures`,
  the one formula per backend, and a test holds them equal):
  "abs": |f1 - f2|, and "chi2": (f1 - f2)^2 / (|f1| + |f2| + eps). DeepFace's chi-squared
  form divides by f1 + f2, which suits its non-negative ReLU features; mobilecv's
  embeddings are signed unit vectors, where f1 + f2 can be 0 or negative. With |f1| + |f2|
  the two agree for non-negative features (up to eps) and stay finite and non-negative
  for signed ones.
- The head: p(same) = sigmoid(w . features + b) (`VerificationHead`: numpy weights,
  `probability` in numpy; `model` is the same unit in Keras).
- Training: `train_head` with the encoder frozen (precomputed embeddings; balanced
  same / different pairs of the training identities, evaluate.balanced_pairs), or
  `train_siamese` with the encoder shared by the two branches of one Keras model and
  trained end to end with the head.
- `head_scores`: AUC and TAR at FAR 1e-3 / 1e-2 of the head on pairs of held-out
  identities, the same pairs and ROC code (evaluate.roc) as the distance rule's
  `tasks.embedding.embedding_scores`, so the two can be put side by side.
- Files: `save` / `load` a version-1 JSON (kind, version, form, dim, w, b), written
  atomically; another dimension's, another kind's or a corrupt file is a one-line
  InputError.
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from mobilecv.errors import InputError, parse_choice

KIND = "mobilecv-verification-head"
VERSION = 1
CHI2_EPSILON = 1e-6  # keeps the chi-squared form finite where both features are 0
LEARNING_RATE = 0.01  # Adam's for the frozen head: a single unit on well-scaled features
SIAMESE_LEARNING_RATE = 1e-4  # fine-tuning a trained encoder: 1e-3 measured worse on glyphs
HEAD_LAYER = "verification"  # the Dense(1, sigmoid) of both Keras models


class PairForm(enum.StrEnum):
    ABS = "abs"
    CHI2 = "chi2"


# --------------------------------------------------------------------------- features


def _rows(values, what: str) -> np.ndarray:
    """Embeddings as a finite float64 (N, D) array; one (D,) row becomes (1, D)."""
    try:
        rows = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers") from None
    rows = rows[None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise InputError(f"{what} must be (N, D) embeddings; got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise InputError(f"{what} hold NaN or infinite values")
    return rows


def pair_features(f1, f2, form: str | PairForm) -> np.ndarray:
    """The (N, D) features of N pairs of embeddings: |f1 - f2| ("abs") or
    (f1 - f2)^2 / (|f1| + |f2| + eps) ("chi2"; see the module docstring)."""
    form = parse_choice(PairForm, form, "pair form")
    a, b = _rows(f1, "f1"), _rows(f2, "f2")
    if a.shape != b.shape:
        raise InputError(f"pairs need embeddings of one shape; got {a.shape} and {b.shape}")
    if form is PairForm.ABS:
        return np.abs(a - b)
    return np.square(a - b) / (np.abs(a) + np.abs(b) + CHI2_EPSILON)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # no overflow warning for large |z|

    return expit(z)


# --------------------------------------------------------------------------- head


@dataclass(frozen=True, eq=False)
class VerificationHead:
    """p(same | f1, f2) = sigmoid(w . pair_features(f1, f2, form) + b)."""

    form: PairForm
    weights: np.ndarray  # (D,) float64
    bias: float
    history: dict = field(default_factory=dict, compare=False, repr=False)  # Keras fit's
    _models: dict = field(default_factory=dict, compare=False, repr=False)  # keras -> model

    def __post_init__(self) -> None:
        object.__setattr__(self, "form", parse_choice(PairForm, self.form, "pair form"))
        try:
            weights = np.array(self.weights, dtype=np.float64).reshape(-1)  # a copy
            bias = float(self.bias)
        except (TypeError, ValueError):
            raise InputError("a verification head's weights and bias must be numbers") from None
        if not len(weights) or not np.all(np.isfinite(weights)) or not math.isfinite(bias):
            raise InputError("a verification head needs finite weights and bias")
        weights.setflags(write=False)  # the Keras models built from them stay in step
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerificationHead):
            return NotImplemented
        same_weights = np.array_equal(self.weights, other.weights)
        return self.form is other.form and same_weights and self.bias == other.bias

    __hash__ = None  # mutable numpy weights: not hashable

    @property
    def dim(self) -> int:
        return len(self.weights)

    def logit(self, e1, e2) -> np.ndarray:
        """(N,) w . features + b: the score before the sigmoid (it never saturates)."""
        features = pair_features(e1, e2, self.form)
        if features.shape[1] != self.dim:
            raise InputError(
                f"this head takes {self.dim}-d embeddings; got {features.shape[1]}-d ones"
            )
        return features @ self.weights + self.bias

    def probability(self, e1, e2) -> np.ndarray:
        """(N,) p(same) of N pairs of embeddings, in numpy."""
        return _sigmoid(self.logit(e1, e2))

    @property
    def model(self):
        """The head as a tf_keras model: (e1, e2) -> PairFeatures -> Dense(1, sigmoid)."""
        return self.keras_model()

    def keras_model(self, keras: str | ModuleType | None = None):
        """The head as a model of the given Keras (tf_keras by default), built once."""
        from mobilecv._tf import get_keras, keras_name

        K = get_keras(keras)
        if keras_name(K) not in self._models:
            model = _head_model(K, self.dim, self.form)
            kernel = self.weights.reshape(-1, 1).astype(np.float32)
            model.get_layer(HEAD_LAYER).set_weights([kernel, np.float32([self.bias])])
            self._models[keras_name(K)] = model
        return self._models[keras_name(K)]

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the head as a version-1 JSON file, atomically."""
        from mobilecv.fileio import write_json

        if Path(path).suffix != ".json":
            raise InputError(f"{path}: a verification head is saved as a .json file")
        document = {
            "kind": KIND,
            "version": VERSION,
            "form": self.form.value,
            "dim": self.dim,
            "weights": [float(w) for w in self.weights],  # JSON floats round-trip exactly
            "bias": self.bias,
        }
        return write_json(path, document, force)

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int | None = None) -> VerificationHead:
        """A head written by `save`; with `dim`, it must take `dim`-d embeddings. Anything
        else is a one-line InputError."""
        document = _read_document(Path(path))
        head = _from_document(Path(path), document)
        if dim is not None and head.dim != int(dim):
            raise InputError(f"{path}: a head for {head.dim}-d embeddings, not {int(dim)}-d")
        return head


def _read_document(path: Path) -> dict:
    from mobilecv.errors import MissingFile

    if not path.is_file():
        raise MissingFile(f"{path}: no such file")
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not a verification head (not JSON)") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise InputError(f"{path}: not a mobilecv verification head")
    if document.get("version") != VERSION:
        raise InputError(
            f"{path}: verification head version {document.get('version')!r}; this mobilecv "
            f"reads version {VERSION}"
        )
    return document


def _from_document(path: Path, document: dict) -> VerificationHead:
    try:
        weights = np.asarray(document["weights"], dtype=np.float64)
        dim = document["dim"]
        head = VerificationHead(
            form=document["form"], weights=weights, bias=float(document["bias"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(f"{path}: corrupt verification head ({reason})") from None
    if weights.ndim != 1 or not isinstance(dim, int) or dim != len(weights):
        raise InputError(f"{path}: corrupt verification head (dim {dim!r}, {weights.size} weights)")
    return head


# --------------------------------------------------------------------------- Keras


def _head_layers(K: ModuleType, e1, e2, form: PairForm):
    """PairFeatures then the logistic unit, on two embedding tensors."""
    from mobilecv.custom_layers import layer_class

    pair = layer_class(K, "PairFeatures")(form.value, CHI2_EPSILON, name="pair_features")
    # Zeros: logistic regression is convex, and a random start would put a random
    # direction into a unit of D weights that few steps then have to undo.
    dense = K.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", name=HEAD_LAYER)
    return dense(pair([e1, e2]))


def _head_model(K: ModuleType, dim: int, form: PairForm):
    e1, e2 = K.Input((dim,), name="embedding_1"), K.Input((dim,), name="embedding_2")
    return K.Model([e1, e2], _head_layers(K, e1, e2, form), name=f"verification_head_{form}")


def _compile(model, K: ModuleType, learning_rate: float) -> None:
    model.compile(
        optimizer=K.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )


def _class_weight(same: np.ndarray) -> dict[int, float]:
    """Weights that give same and different pairs equal say when the identities could not
    fill the same-pair quota (balanced_pairs then returns fewer same pairs)."""
    positives = int(same.sum())
    negatives = len(same) - positives
    return {0: len(same) / (2.0 * negatives), 1: len(same) / (2.0 * positives)}


def _head_from_dense(model, form: PairForm, history: dict) -> VerificationHead:
    kernel, bias = model.get_layer(HEAD_LAYER).get_weights()
    return VerificationHead(form, kernel.reshape(-1), float(bias[0]), history=history)


def _history(fit) -> dict[str, list[float]]:
    return {name: [float(v) for v in values] for name, values in fit.history.items()}


# --------------------------------------------------------------------------- training


def _labelled(embeddings, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    rows = _rows(embeddings, f"{what} embeddings")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(rows):
        raise InputError(f"{len(rows)} {what} embeddings but {len(labels)} labels")
    return rows, labels


def _check_positive(**counts: int) -> None:
    for name, value in counts.items():
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1; got {value}")


def _pair_arrays(embeddings, labels, count: int, seed: int, what: str):
    from mobilecv.metric_learning.evaluate import balanced_pairs

    rows, labels = _labelled(embeddings, labels, what)
    i, j, same = balanced_pairs(labels, count, seed)
    inputs = [rows[i].astype(np.float32), rows[j].astype(np.float32)]
    return inputs, same.astype(np.float32), rows.shape[1]


def train_head(
    embeddings,
    labels,
    form: str | PairForm = PairForm.ABS,
    *,
    pairs: int = 20_000,
    epochs: int = 20,
    seed: int = 0,
    validation: tuple | None = None,
    batch_size: int = 256,
    learning_rate: float = LEARNING_RATE,
    keras: str | None = None,
) -> VerificationHead:
    """A head trained on precomputed `embeddings` (N, D) of the training identities
    `labels` (N,): the encoder is frozen (it is not even here). `pairs` same-identity and
    `pairs` different-identity pairs (evaluate.balanced_pairs with `seed`); `validation`
    (embeddings, labels) of other identities adds val_loss / val_accuracy to the head's
    `history` after every epoch."""
    from mobilecv._tf import get_keras
    from mobilecv.train import set_seed

    form = parse_choice(PairForm, form, "pair form")
    _check_positive(pairs=pairs, epochs=epochs, batch_size=batch_size)
    inputs, same, dim = _pair_arrays(embeddings, labels, int(pairs), seed, "training")
    validation_data = None
    if validation is not None:
        if not isinstance(validation, tuple | list) or len(validation) != 2:
            raise InputError("validation must be a pair (embeddings, labels)")
        v_inputs, v_same, v_dim = _pair_arrays(*validation, int(pairs), seed, "validation")
        if v_dim != dim:
            raise InputError(f"validation embeddings are {v_dim}-d, training ones {dim}-d")
        validation_data = (v_inputs, v_same)
    set_seed(seed)
    K = get_keras(keras)
    model = _head_model(K, dim, form)
    _compile(model, K, learning_rate)
    fit = model.fit(
        inputs, same, batch_size=int(batch_size), epochs=int(epochs), shuffle=True,
        class_weight=_class_weight(same), validation_data=validation_data, verbose=0,
    )  # fmt: skip
    return _head_from_dense(model, form, _history(fit))


def _encoder_output(encoder, x):
    """The encoder's (N, D) embedding tensor on input `x`: its only output, or the one
    named "embedding"."""
    out = encoder(x)
    if isinstance(out, dict):
        out = out.get("embedding", next(iter(out.values())) if len(out) == 1 else None)
    elif isinstance(out, list | tuple):
        out = out[0] if len(out) == 1 else None
    if out is None or len(out.shape) != 2:
        raise InputError("train_siamese needs an encoder with one (N, D) embedding output")
    return out


def _identity_labels(data) -> np.ndarray:
    y = data.y["identity"] if isinstance(data.y, dict) else data.y
    return np.asarray(y).reshape(-1)


def _pair_dataset(images: np.ndarray, i, j, same, batch_size: int):
    """Batches ((x_i, x_j), same) gathered in the graph from the images, repeated."""
    from mobilecv._tf import tf

    T = tf()
    pool = T.constant(images)
    ds = T.data.Dataset.from_tensor_slices((i, j, same.astype(np.float32)))
    ds = ds.repeat().batch(batch_size)
    ds = ds.map(lambda a, b, s: ((T.gather(pool, a), T.gather(pool, b)), s))
    return ds.prefetch(T.data.AUTOTUNE)


def _siamese_model(encoder, form: PairForm):
    """(siamese, embedder, K): (x1, x2) -> the one encoder -> PairFeatures -> Dense, and
    x1 -> embedding, in the encoder's Keras."""
    from mobilecv._tf import get_keras, is_keras3_model

    K = get_keras("keras3" if is_keras3_model(encoder) else "tf_keras")
    shape = tuple(encoder.input_shape[1:])
    x1, x2 = K.Input(shape, name="image_1"), K.Input(shape, name="image_2")
    e1, e2 = _encoder_output(encoder, x1), _encoder_output(encoder, x2)
    siamese = K.Model([x1, x2], _head_layers(K, e1, e2, form), name=f"siamese_{form}")
    return siamese, K.Model(x1, e1), K


def _warm_start(siamese, embedder, K, images, labels, form: PairForm, seed: int) -> dict:
    """Set the siamese's Dense to a head trained on the encoder's current embeddings (the
    encoder frozen), and return that training's history.

    Why: from zero weights the unit gives the encoder no gradient, and at the encoder's
    rate D small weights take thousands of steps to grow; meanwhile the encoder
    drifts under a nearly constant loss (measured: 200 end-to-end steps on glyphs left
    the loss at 0.69 and the weight norm at 0.1)."""
    embeddings = embedder.predict(images, batch_size=256, verbose=0)
    start = train_head(embeddings, labels, form, seed=seed, keras=K)
    weights = start.keras_model(K).get_layer(HEAD_LAYER).get_weights()
    siamese.get_layer(HEAD_LAYER).set_weights(weights)
    return {f"warm_start_{name}": values for name, values in start.history.items()}


def train_siamese(
    encoder,
    data,
    form: str | PairForm = PairForm.ABS,
    *,
    steps: int = 500,
    batch_size: int = 32,
    seed: int = 0,
    learning_rate: float = SIAMESE_LEARNING_RATE,
    warm_start: bool = True,
):
    """(siamese model, head): the encoder SHARED by the two branches of one Keras model
    (x1, x2) -> encoder -> PairFeatures -> Dense(1, sigmoid), trained end to end on
    `steps` batches of balanced same / different pairs of `data` (images .x, identities
    .y or .y["identity"]), so the encoder's weights change. With `warm_start` the Dense
    first learns on the frozen encoder's embeddings (`train_head`; see `_warm_start`).
    The head holds the trained Dense; the encoder object itself is the trained one."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.metric_learning.evaluate import balanced_pairs
    from mobilecv.train import set_seed

    form = parse_choice(PairForm, form, "pair form")
    _check_positive(steps=steps, batch_size=batch_size)
    labels = _identity_labels(data)
    if len(labels) != len(data.x):
        raise InputError(f"{len(data.x)} images but {len(labels)} identity labels")
    i, j, same = balanced_pairs(labels, -(-int(steps) * int(batch_size) // 2), seed)
    order = np.random.default_rng(seed).permutation(len(same))
    siamese, embedder, K = _siamese_model(encoder, form)
    images = model_inputs(data.x, encoder)
    history = _warm_start(siamese, embedder, K, images, labels, form, seed) if warm_start else {}
    set_seed(seed)
    _compile(siamese, K, learning_rate)
    fit = siamese.fit(
        _pair_dataset(images, i[order], j[order], same[order], batch_size),
        steps_per_epoch=int(steps),
        epochs=1,
        class_weight=_class_weight(same),
        shuffle=False,  # the pairs are already in a seeded random order
        verbose=0,
    )
    return siamese, _head_from_dense(siamese, form, {**history, **_history(fit)})


# --------------------------------------------------------------------------- scores


def head_scores(head: VerificationHead, embeddings, labels, seed: int = 0) -> dict[str, float]:
    """AUC and TAR at FAR 1e-3 / 1e-2 (NaN without the 1/FAR different-identity pairs that
    figure needs) of the head's score on pairs of the labelled (held-out) embeddings.

    The pairs are those of `tasks.embedding.embedding_scores` (every pair up to a million,
    else a balanced sample drawn with `seed`), so its distance-rule figures compare pair
    for pair. The score is the logit (the ranking of the probability, without the ties
    float saturation gives near p = 0 or 1), passed to evaluate.roc as -logit: roc ranks
    small "distances" as same.
    """
    from mobilecv.metric_learning import evaluate
    from mobilecv.tasks.embedding import verification_pairs

    rows, labels = _labelled(embeddings, labels, "held-out")
    i, j, same = verification_pairs(labels, seed)
    curve = evaluate.roc(-head.logit(rows[i], rows[j]), same)
    scores = {"auc": curve.auc}
    for far in evaluate.FAR_TARGETS:
        enough = curve.negatives >= 1.0 / far
        scores[f"tar_at_far_{far:g}"] = evaluate.tar_at_far(curve, far) if enough else np.nan
    scores["pairs"] = curve.positives + curve.negatives
    scores["identities"] = len(np.unique(labels))
    return {name: float(value) for name, value in scores.items()}

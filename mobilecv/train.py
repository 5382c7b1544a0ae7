"""Training and fine-tuning on a packaged dataset, with a held-out evaluation.

The model is fitted on the TRAIN split and evaluated on the validation split carved
from it; the test split is only touched when the caller asks for a final test score.
Transfer learning moves a trained trunk into a new model (`transfer_trunk`) and freezes
layers (`freeze=N` or `"all-but-head"`); with `cache_features=True` the frozen trunk runs
once over the data, its activations are written to disk as .npy, and only the head is
trained on them.
"""

from __future__ import annotations

import enum
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilecv._tf import get_keras, is_keras3_model, tf
from mobilecv.data import ArrayData, Split, load_arrays, to_dataset
from mobilecv.errors import InputError, parse_choice
from mobilecv.modelinfo import get_info
from mobilecv.progress import Progress

HEAD_BOUNDARY_TYPES = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")


class Optimizer(enum.StrEnum):
    ADAM = "adam"
    SGD = "sgd"  # with Nesterov momentum 0.9, as the classic papers train
    RMSPROP = "rmsprop"


class Schedule(enum.StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"  # cosine decay to 1% of the rate over the whole run


class Freeze(enum.StrEnum):
    ALL_BUT_HEAD = "all-but-head"


@dataclass
class TrainReport:
    dataset: str
    epochs: int
    batch_size: int
    learning_rate: float
    train_samples: int
    val_samples: int
    frozen_layers: int
    trainable_params: int
    cached_features: bool
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)
    val_accuracy: float | None = None
    val_loss: float | None = None
    test_accuracy: float | None = None
    feature_cache: str | None = None
    optimizer: str | None = None  # None in reports written before these were recorded
    schedule: str | None = None
    task: str = "classification"
    val_metrics: dict[str, float] = field(default_factory=dict)  # the task's, held out
    provenance: str = ""  # where the data came from (e.g. "synthetic composition: ...")
    loss_options: dict[str, Any] = field(default_factory=dict)  # the task's loss keywords

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and both Kerases (each keeps its own generator).

    tf_keras draws unseeded initializer seeds from its own Python generator, Keras 3 from
    a global SeedGenerator; each Keras's `set_random_seed` resets its own and seeds the
    rest. A Keras 3 not imported yet needs nothing (importing it costs seconds): its
    generator will be made from Python's `random`, seeded here.
    """
    get_keras("tf_keras").utils.set_random_seed(seed)
    if "keras" in sys.modules:
        get_keras("keras3").utils.set_random_seed(seed)


def model_input_spec(model) -> tuple[tuple[int, int], int]:
    """(resolution (h, w), channels) of a single-input image model."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise InputError("only single-input image models can be trained here")
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise InputError(f"expected an image model with input (None, H, W, C), got {shape}")
    return (int(shape[1]), int(shape[2])), int(shape[3])


def outputs_probabilities(model) -> bool:
    """True when the last layer already applies softmax (then the loss takes probabilities)."""
    last = model.layers[-1]
    if not is_keras3_model(model):
        from mobilecv.compress._common import unwrap

        last = unwrap(last)  # pruning/clustering/QAT wrappers hide the Dense inside
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    # QAT replaces the activation by a QuantizeAwareActivation holding the original.
    name = getattr(activation, "__name__", None) or getattr(
        getattr(activation, "activation", None), "__name__", ""
    )
    return name == "softmax"


def make_optimizer(K, name: str | Optimizer, learning_rate: float, decay_steps: int | None = None):
    try:
        kind = Optimizer(name)
    except ValueError:
        allowed = ", ".join(o.value for o in Optimizer)
        raise InputError(f"unknown optimizer {name!r}; allowed: {allowed}") from None
    if decay_steps:
        learning_rate = K.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.01)
    if kind is Optimizer.SGD:
        return K.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if kind is Optimizer.RMSPROP:
        return K.optimizers.RMSprop(learning_rate)
    return K.optimizers.Adam(learning_rate)


def task_of(model):
    """The registered task whose outputs `model` gives (its info; classification if none)."""
    from mobilecv.modelinfo import get_info
    from mobilecv.tasks.base import task_for

    return task_for(get_info(model), model)


def compile_for_task(
    model,
    learning_rate: float,
    optimizer: str | Optimizer = Optimizer.ADAM,
    decay_steps: int | None = None,
) -> None:
    """Compile with the losses and metrics of the model's task, and the loss options the
    model was trained with (``ModelInfo.loss_options``, recorded by :func:`train`)."""
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    optimizer = make_optimizer(K, optimizer, learning_rate, decay_steps)
    task_of(model).compile(model, optimizer, **get_info(model).loss_options)


def record_loss_options(model, options: Mapping[str, Any] | None) -> None:
    """Check ``options`` against the model's task and keep them in its info, so that every
    later compile (this training, a fine-tune, QAT, a reload) uses that loss. None keeps
    what the model has."""
    import dataclasses

    from mobilecv.modelinfo import set_info

    if options is None:
        return
    checked = task_of(model).loss_options(options)
    set_info(model, dataclasses.replace(get_info(model), loss_options=checked))


def head_start(model) -> int:
    """Index of the first head layer: everything after the last global pooling/flatten.

    Without such a boundary the head is the last layer that has weights.
    """
    boundary = [
        i for i, layer in enumerate(model.layers) if type(layer).__name__ in HEAD_BOUNDARY_TYPES
    ]
    if boundary:
        return boundary[-1] + 1
    weighted = [i for i, layer in enumerate(model.layers) if layer.weights]
    if not weighted:
        raise InputError("the model has no layers with weights to train")
    return weighted[-1]


def apply_freeze(model, freeze: int | str | None) -> int:
    """Freeze the first N layers (or all but the head); returns how many were frozen."""
    if freeze is None:
        return 0
    if isinstance(freeze, str) and not freeze.isdigit():
        try:
            Freeze(freeze)
        except ValueError:
            raise InputError(
                f"freeze must be a number of layers or 'all-but-head', got {freeze!r}"
            ) from None
        count = head_start(model)
    else:
        count = int(freeze)
        if not 0 <= count <= len(model.layers):
            raise InputError(f"freeze={count} but the model has {len(model.layers)} layers")
    for i, layer in enumerate(model.layers):
        layer.trainable = i >= count
    return count


def transfer_trunk(source, target) -> int:
    """Copy the trunk of `source` (every layer before `target`'s head) into `target` by name.

    The head of `target` keeps its new weights, so the class counts may differ. Every trunk
    layer with weights must exist in `source` with the same name and weight shapes.
    Returns the number of layers copied.
    """
    donors = {layer.name: layer for layer in source.layers}
    copied = 0
    for layer in target.layers[: head_start(target)]:
        if not layer.weights:
            continue
        donor = donors.get(layer.name)
        if donor is None:
            raise InputError(f"the pretrained model has no layer {layer.name!r} to transfer")
        weights = donor.get_weights()
        wanted = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != wanted:
            raise InputError(
                f"layer {layer.name!r}: pretrained weights {[tuple(w.shape) for w in weights]} "
                f"do not fit {wanted}"
            )
        layer.set_weights(weights)
        copied += 1
    return copied


class TqdmProgress:
    """A Keras callback drawing one progress bar per epoch on stderr (works for both
    Kerases); in a file or pipe only the one line per epoch is printed."""

    def __init__(
        self, keras_module, epochs: int, steps: int, enabled: bool = True, summary: bool = True
    ):
        base = keras_module.callbacks.Callback
        outer = self

        class _Callback(base):
            def on_epoch_begin(self, epoch, logs=None):
                outer.bar = Progress(
                    f"epoch {epoch + 1}/{epochs}", steps, enabled=enabled, summary=False
                )

            def on_train_batch_end(self, batch, logs=None):
                outer.bar.update(1)
                if logs and batch % 10 == 0:
                    outer.bar.note(
                        " ".join(
                            f"{k}={float(v):.3f}"
                            for k, v in logs.items()
                            if k in ("loss", "accuracy")
                        )
                    )

            def on_epoch_end(self, epoch, logs=None):
                outer.bar.close()
                if enabled and summary and logs:
                    print_epoch(epoch, epochs, logs)

        self.callback = _Callback()


def print_epoch(epoch: int, epochs: int, logs: dict) -> None:
    text = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items())
    print(f"epoch {epoch + 1}/{epochs}: {text}", file=sys.stderr)


def _history(history) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


@dataclass(frozen=True)
class Splits:
    train: ArrayData
    validation: ArrayData
    classes: tuple[int, ...] = ()  # the source classes kept (relabelled 0..n-1); () = all


def select_classes(data: ArrayData, classes: Sequence[int]) -> ArrayData:
    """Only the images of `classes`, relabelled 0..n-1 in the order given."""
    if len(set(classes)) != len(classes):
        raise InputError(f"classes {list(classes)} repeats a class")
    absent = [c for c in classes if not 0 <= c < data.classes]
    if absent:
        raise InputError(f"{data.name} has classes 0..{data.classes - 1}; no class {absent}")
    relabel = np.full(data.classes, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    keep = relabel[data.y] >= 0
    return ArrayData(x=data.x[keep], y=relabel[data.y[keep]], classes=len(classes), name=data.name)


def load_split(
    data: str | os.PathLike,
    split: Split,
    limit: int | None = None,
    classes: Sequence[int] = (),
    task=None,
    scenes: dict | None = None,
) -> ArrayData:
    """One split, optionally of some classes only; `limit` counts the selected images.

    A task other than classification loads its own labels (`Task.load`; `scenes`
    overrides its scene config)."""
    if task is not None and task.name != "classification":
        if classes:
            raise InputError(f"selecting classes applies to classification, not {task.name}")
        return task.load(os.fspath(data), Split(split).value, limit=limit, scenes=scenes)
    if scenes:
        raise InputError("scene options apply to tasks trained on scenes, not classification")
    if not classes:
        return load_arrays(data, split, limit=limit)
    chosen = select_classes(load_arrays(data, split), classes)
    if limit is None:
        return chosen
    return ArrayData(chosen.x[:limit], chosen.y[:limit], chosen.classes, chosen.name)


def load_splits(
    data: str | os.PathLike | Splits,
    limit: int | None = None,
    val_limit: int | None = None,
    classes: Sequence[int] = (),
    task=None,
    scenes: dict | None = None,
) -> Splits:
    """Train and held-out validation arrays (never the test split)."""
    if isinstance(data, Splits):
        return data
    val_limit = val_limit if val_limit is not None else limit
    return Splits(
        load_split(data, Split.TRAIN, limit, classes, task, scenes),
        load_split(data, Split.VALIDATION, val_limit, classes, task, scenes),
        tuple(classes),
    )


def shard_by_data(dataset):
    """Let a multi-worker strategy split batches by element (the only way for in-memory
    arrays: they have no files to hand out); no effect without a strategy."""
    T = tf()
    options = T.data.Options()
    options.experimental_distribute.auto_shard_policy = T.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def class_scores(model) -> int | None:
    """How many classes the model scores (its task's "scores" output), None if it has none."""
    if "scores" not in task_of(model).outputs:
        return None
    outputs = model.outputs
    names = list(getattr(model, "output_names", None) or [])
    if len(outputs) > 1 and "scores" not in names:
        return None
    scores = outputs[0] if len(outputs) == 1 else outputs[names.index("scores")]
    return int(scores.shape[-1])


def check_class_count(model, data: ArrayData) -> None:
    """Labels beyond the model's class scores fail deep inside the loss ("label value
    outside the valid range"), several calls away: say so in one line first."""
    scores = class_scores(model)
    if scores is not None and data.classes and scores < data.classes:
        raise InputError(
            f"{model.name} scores {scores} classes but {data.name} has {data.classes}: "
            f"build it with classes={data.classes}"
        )


def dataset_for(model, data: ArrayData, batch_size: int, **options):
    """`data` as `model` takes it: its resolution, channels and declared input range, and
    labels other than class ids turned into the model's task targets."""
    check_class_count(model, data)
    resolution, channels = model_input_spec(model)
    targets = task_of(model).keras_targets if isinstance(data.y, dict) else None
    return to_dataset(
        data,
        resolution=resolution,
        channels=channels,
        batch_size=batch_size,
        input_range=get_info(model).input_range,
        targets=targets,
        **options,
    )


def predict_outputs(model, data: ArrayData, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The model's outputs on `data`, by the names of its task's outputs."""
    from mobilecv.tasks.base import as_outputs

    ds = dataset_for(model, data, batch_size).map(lambda x, *_: x)
    return as_outputs(model.predict(ds, verbose=0), task_of(model).outputs)


def task_scores(model, data: ArrayData, batch_size: int = 64) -> dict[str, float]:
    """The task's metrics of `model` on `data` (numpy scoring of its predictions)."""
    return task_of(model).score(predict_outputs(model, data, batch_size), data.y)


def train_dataset(model, data: ArrayData, batch_size: int, augment=None, epoch: int = 0):
    """The training batches: shuffled, or in the order the model's task gives for this
    ``epoch`` (`Task.batch_order`: a metric loss's P identities x K images)."""
    order = task_of(model).batch_order(data.y, batch_size, epoch)
    ds = dataset_for(model, data, batch_size, shuffle=order is None, augment=augment, order=order)
    return shard_by_data(ds)


def datasets_for(model, splits: Splits, batch_size: int, augment: Callable | None = None):
    train_ds = train_dataset(model, splits.train, batch_size, augment)
    return train_ds, shard_by_data(dataset_for(model, splits.validation, batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


# --------------------------------------------------------------------------- training


def fit(
    model,
    splits: Splits,
    epochs: int,
    *,
    batch_size: int,
    learning_rate: float,
    augment=None,
    callbacks: Sequence = (),
    progress: bool = True,
    compile_model: bool = True,
    recalibrate_bn: bool = True,
    optimizer: str | Optimizer = Optimizer.ADAM,
    schedule: str | Schedule = Schedule.CONSTANT,
) -> dict[str, list[float]]:
    """Fit on train, validating on the held-out split after each epoch (used by compress too).

    Each epoch is followed by `recalibrate_batchnorm` and then the held-out evaluation,
    so the per-epoch validation figures are what the saved model would score.
    """
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    order = task_of(model).batch_order(splits.train.y, batch_size, 0)
    steps = steps_per_epoch(len(splits.train) if order is None else len(order), batch_size)
    if compile_model:
        cosine = parse_choice(Schedule, schedule, "schedule") is Schedule.COSINE
        decay = epochs * steps if cosine else None
        compile_for_task(model, learning_rate, optimizer, decay)
    train_ds, val_ds = datasets_for(model, splits, batch_size, augment)
    bar = TqdmProgress(K, epochs, steps, enabled=progress, summary=False)
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        if epoch and order is not None:  # the task's batches: a new draw each epoch
            train_ds = train_dataset(model, splits.train, batch_size, augment, epoch)
        # One fit() call per epoch: tfmot's pruning step and the optimizer carry over.
        logs = model.fit(
            train_ds,
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
            callbacks=[*callbacks, bar.callback],
        ).history
        logs = {k: float(v[-1]) for k, v in logs.items()}
        if recalibrate_bn:
            recalibrate_batchnorm(model, train_ds)
        held_out = model.evaluate(val_ds, verbose=0, return_dict=True)
        if isinstance(splits.validation.y, dict):  # a task scored in numpy (IoU, NME, ...)
            held_out.update(task_scores(model, splits.validation, batch_size))
        logs.update({f"val_{k}": float(v) for k, v in held_out.items()})
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if progress:
            print_epoch(epoch, epochs, logs)
    return history


def recalibrate_batchnorm(model, dataset, batches: int = 50) -> int:
    """Re-estimate BatchNorm moving statistics as an exact average over `batches` batches.

    MobileNet/EfficientNet use momentum 0.999 (keras.applications' value): after a few
    hundred steps the moving variance is still ~0.999^steps of its initial 1.0, and the
    model predicts one class at inference while training accuracy looks fine. Running
    the trained model forward in training mode with momentum (k-1)/k at batch k gives
    the plain mean of the batch statistics; weights are not touched and frozen
    BatchNorm layers (which run in inference mode) keep their statistics. Returns the
    number of layers re-estimated.
    """
    from mobilecv.compress._common import unwrap

    layers = [
        unwrap(layer)
        for layer in _all_layers(model)
        if type(unwrap(layer)).__name__ == "BatchNormalization" and unwrap(layer).trainable
    ]
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    # Through the model's strategy: under a mirrored or multi-worker strategy each replica
    # averages its share of every batch, and reading the statistics averages the replicas.
    strategy = getattr(model, "distribute_strategy", None) or tf().distribute.get_strategy()
    try:
        batches_ds = strategy.experimental_distribute_dataset(shard_by_data(dataset.take(batches)))
        for k, (x, *_) in enumerate(batches_ds, start=1):
            for layer in layers:
                layer.momentum = (k - 1) / k
            strategy.run(lambda images: model(images, training=True), args=(x,))
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return len(layers)


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "kernel"):
            yield from _all_layers(layer)
        yield layer


def evaluate(model, data: ArrayData, batch_size: int = 64) -> dict[str, float]:
    """Loss and the task's metrics on the given split (compiles the model if needed):
    top-1 "accuracy" for classification."""
    if not (getattr(model, "_is_compiled", False) or getattr(model, "compiled", False)):
        compile_for_task(model, 1e-3)
    ds = dataset_for(model, data, batch_size)
    if not isinstance(data.y, dict):
        loss, accuracy = model.evaluate(shard_by_data(ds), verbose=0)[:2]
        return {"loss": float(loss), "accuracy": float(accuracy)}
    loss = model.evaluate(shard_by_data(ds), verbose=0, return_dict=True)["loss"]
    return {"loss": float(loss), **task_scores(model, data, batch_size)}


def train(
    model,
    data: str | os.PathLike | Splits,
    epochs: int,
    *,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    freeze: int | str | None = None,
    cache_features: bool = False,
    cache_dir: str | os.PathLike | None = None,
    augment: Callable | None = None,
    limit: int | None = None,
    evaluate_test: bool = False,
    progress: bool = True,
    optimizer: str | Optimizer = Optimizer.ADAM,
    schedule: str | Schedule = Schedule.CONSTANT,
    scenes=None,
    loss_options: Mapping[str, Any] | None = None,
):
    """Train `model` in place on `data` (a dataset name, path, or Splits). Returns (model, TrainReport).

    `loss_options` are keywords of the task's loss (e.g. {"mining": "batch_all",
    "margin": 0.2} for an embedding, {"dice_weight": 1.0} for a segmenter); they are kept
    in the model's info, so a saved model fine-tunes with the same loss. None keeps the
    model's own (the task's defaults for a new model).

    `scenes` (for data "scenes": a SceneConfig, or a dict of its fields overriding the
    task's default scenes) is the scenes trained, validated and tested on.

    With `cache_features` the trunk (the first `freeze` layers, by default all but the
    head) runs once and only the head trains, with the same optimizer and schedule.
    An option that the chosen path cannot honour is an InputError naming it.
    """
    _check_train_options(epochs, batch_size, freeze, cache_features, cache_dir, augment)
    if isinstance(data, Splits) and limit is not None:
        raise InputError("limit applies to a dataset name or path; slice the Splits instead")
    schedule = parse_choice(Schedule, schedule, "schedule")
    task = task_of(model)
    record_loss_options(model, loss_options)
    if cache_features and task.name != "classification":
        raise InputError(f"cache_features trains a classifier head; not for {task.name}")
    splits = load_splits(data, limit=limit, task=task, scenes=scenes)
    frozen = apply_freeze(
        model, Freeze.ALL_BUT_HEAD if cache_features and freeze is None else freeze
    )
    start = time.perf_counter()
    cache_path = None
    if cache_features:
        history, cache_path = _train_head_on_cached_features(
            model,
            splits,
            frozen,
            epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            cache_dir=cache_dir,
            progress=progress,
            optimizer=optimizer,
            schedule=schedule,
        )
    else:
        history = fit(
            model,
            splits,
            epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            augment=augment,
            progress=progress,
            optimizer=optimizer,
            schedule=schedule,
        )
    seconds = time.perf_counter() - start
    compile_for_task(model, learning_rate, optimizer)
    held_out = evaluate(model, splits.validation, batch_size)
    report = TrainReport(
        dataset=splits.train.name,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=parse_choice(Optimizer, optimizer, "optimizer").value,
        schedule=schedule.value,
        train_samples=len(splits.train),
        val_samples=len(splits.validation),
        frozen_layers=frozen,
        trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        cached_features=cache_features,
        seconds=round(seconds, 2),
        history=history,
        val_accuracy=held_out.get("accuracy"),
        val_loss=held_out["loss"],
        task=task.name,
        val_metrics={k: v for k, v in held_out.items() if k != "loss"},
        provenance=splits.train.provenance,
        feature_cache=str(cache_path) if cache_path else None,
        loss_options=dict(get_info(model).loss_options),
    )
    if evaluate_test:
        test = load_split(
            splits.train.name, Split.TEST, classes=splits.classes, task=task, scenes=scenes
        )
        report.test_accuracy = evaluate(model, test, batch_size).get("accuracy")
    return model, report


def _check_train_options(epochs, batch_size, freeze, cache_features, cache_dir, augment) -> None:
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if not cache_features:
        if cache_dir is not None:
            raise InputError("cache_dir is only used with cache_features")
        return
    if augment is not None:
        raise InputError(
            "--cache-features computes the trunk's activations once, so it cannot be combined with augmentation"
        )
    if freeze is not None and str(freeze) == "0":
        raise InputError(
            "--cache-features trains the head on a frozen trunk; freeze=0 freezes nothing"
        )


def extract_features(model, split_index: int, data: ArrayData, batch_size: int = 64) -> np.ndarray:
    """Activations of the layer just before `split_index` for every image of `data`."""
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    trunk = K.Model(model.inputs, _first_node_io(model.layers[split_index - 1])[1])
    return trunk.predict(dataset_for(model, data, batch_size), verbose=0)


def _first_node_io(layer):
    """(input, output) of the layer's first call: its place in the original graph, even
    after the head has been re-applied to a feature input by an earlier run."""
    if hasattr(layer, "get_input_at"):  # tf_keras
        return layer.get_input_at(0), layer.get_output_at(0)
    node = layer._inbound_nodes[0]  # Keras 3
    inputs, outputs = node.input_tensors, node.output_tensors
    return (inputs[0] if len(inputs) == 1 else list(inputs)), outputs[0]


def _head_model(model, split_index: int):
    """The head layers re-applied to a feature input; the layers (and weights) are shared.

    Only a chain of single-input layers from the trunk's output to the model's output
    can be re-applied; anything else is refused rather than mis-built.
    """
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    current = _first_node_io(model.layers[split_index - 1])[1]
    feature_shape = tuple(current.shape[1:])
    for layer in model.layers[split_index:]:
        layer_input, layer_output = _first_node_io(layer)
        if layer_input is not current:
            raise InputError(
                f"--cache-features needs a sequential head; layer {layer.name!r} does not follow the trunk"
            )
        current = layer_output
    if current is not model.outputs[0]:
        raise InputError("--cache-features: the head does not end at the model's output")
    features = K.Input(feature_shape)
    x = features
    for layer in model.layers[split_index:]:
        x = layer(x)
    return K.Model(features, x)


def _train_head_on_cached_features(
    model,
    splits: Splits,
    split_index: int,
    epochs: int,
    *,
    batch_size: int,
    learning_rate: float,
    cache_dir,
    progress: bool,
    optimizer: str | Optimizer,
    schedule: Schedule,
):
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="mobilecv-features-"))
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, data in (("train", splits.train), ("validation", splits.validation)):
        feats = extract_features(model, split_index, data, batch_size)
        np.save(cache / f"features_{name}.npy", feats)
        np.save(cache / f"labels_{name}.npy", data.y)
        # Train from the files on disk, which is what makes the cache reusable.
        arrays[name] = (
            np.load(cache / f"features_{name}.npy", mmap_mode="r"),
            np.load(cache / f"labels_{name}.npy"),
        )
    head = _head_model(model, split_index)
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    steps = steps_per_epoch(len(splits.train), batch_size)
    decay = epochs * steps if schedule is Schedule.COSINE else None
    compile_for_task(head, learning_rate, optimizer, decay)
    T = tf()
    train_ds = (
        T.data.Dataset.from_tensor_slices((np.asarray(arrays["train"][0]), arrays["train"][1]))
        .shuffle(len(splits.train), seed=0)
        .batch(batch_size)
    )
    val_ds = T.data.Dataset.from_tensor_slices(
        (np.asarray(arrays["validation"][0]), arrays["validation"][1])
    ).batch(batch_size)
    bar = TqdmProgress(K, epochs, steps, enabled=progress)
    history = head.fit(
        shard_by_data(train_ds),
        validation_data=shard_by_data(val_ds),
        epochs=epochs,
        verbose=0,
        callbacks=[bar.callback],
    )
    return _history(history), cache

"""`mobilecv train` and `mobilecv compress`: thin wrappers over mobilecv.train and
mobilecv.compress.pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from mobilecv.cliutil import (
    echo_json,
    force_option,
    handle_errors,
    json_option,
    out_dir_option,
    parse_key_value,
)
from mobilecv.errors import InputError

# Options train and compress share.
schedule_option = click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="Learning-rate schedule: cosine decays to 1% of --lr over the run.",
)
augment_option = click.option(
    "--augment", default=None, help="Comma list of mirror,crop,rotate,color,pca."
)
limit_option = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N training images (quick runs).",
)
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size."
)


def _load_or_build(spec: str, data: str, resolution: int | None, width: float | None):
    """A Keras model file, or a registered model name built for the dataset's classes and
    channels (the data as the model's task reads it)."""
    path = Path(spec)
    if path.exists() or path.suffix in (".keras", ".h5", ".hdf5"):
        from mobilecv.modelio import load_model

        return load_model(path, keras="tf_keras")
    import mobilecv  # lazy: the registry imports every model family
    from mobilecv.tasks import get_task
    from mobilecv.train import load_split

    entry = mobilecv.registry.get(spec)  # an unknown name fails before the data is read
    sample = load_split(data, "validation", limit=1, task=get_task(entry.task))
    knobs = {
        "width": width,
        "resolution": resolution or max(32, int(sample.x.shape[1])),
        "input_channels": int(sample.x.shape[-1]),
    }
    if "classes" in entry.supports:
        knobs["classes"] = sample.classes
    return mobilecv.build(spec, **knobs)


def _check_augment(names: str | None) -> None:
    from mobilecv.data.augment import check_names

    check_names(names)


def _augmentation(names: str | None, data: str, limit: int | None, model):
    """The --augment chain for the model's task (a mirror reorders labelled points);
    "pca" fits its colour statistics on the train split."""
    from mobilecv.data.augment import from_names
    from mobilecv.train import load_split, task_of

    task = task_of(model)
    images = load_split(data, "train", limit, task=task).x if names and "pca" in names else None
    return from_names(names, images, point_permutation=task.mirror_permutation)


def _figures(metrics: dict) -> str:
    """ "accuracy 0.9123" (classification) or "iou50 0.8100, mean_iou 0.7012, ..."."""
    names = {"accuracy": "top-1"}
    return ", ".join(
        f"{names.get(k, k)} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)
    )


def _freeze(value: str | None):
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if value != "all-but-head":
        raise InputError(f"--freeze takes a number of layers or 'all-but-head', got {value!r}")
    return value


@click.command("train")
@click.argument("model")
@click.option(
    "--data",
    required=True,
    help="Dataset: fashion_mnist, digits, an .npz (x, y) or a class/*.jpg folder.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Training epochs."
)
@batch_size_option
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Adam learning rate.",
)
@schedule_option
@click.option("--freeze", default=None, help="Freeze the first N layers, or 'all-but-head'.")
@click.option(
    "--cache-features",
    is_flag=True,
    help="Run the frozen trunk once, save its activations (.npy) and train only the head.",
)
@augment_option
@limit_option
@click.option(
    "--resolution",
    type=click.IntRange(min=8),
    default=None,
    help="Input size when MODEL is a registered name (default 32).",
)
@click.option(
    "--width", type=float, default=None, help="Width multiplier when MODEL is a registered name."
)
@click.option(
    "--loss-option",
    "loss_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword of the task's loss, e.g. mining=batch_all, margin=0.2 (embedding), "
    "dice_weight=1 (segmentation) (repeatable; kept with the model).",
)
@click.option(
    "--test",
    "evaluate_test",
    is_flag=True,
    help="Also report top-1 on the test split after training (never used for tuning).",
)
@out_dir_option("Output directory.")
@force_option("existing outputs")
@json_option("the report")
@handle_errors
def train_command(
    model,
    data,
    epochs,
    batch_size,
    lr,
    schedule,
    freeze,
    cache_features,
    augment,
    limit,
    resolution,
    width,
    loss_options,
    evaluate_test,
    out_dir,
    force,
    as_json,
):
    """Train MODEL (a Keras file or a registered name) on a dataset, with held-out evaluation.

    Writes DIR/model.keras and DIR/report.json.
    """
    from mobilecv.compress.pipeline import output_paths, save_outputs
    from mobilecv.train import train

    # Every cheap check before the model is loaded or built (TensorFlow takes seconds).
    output_paths(out_dir, qat=False, force=force)
    frozen = _freeze(freeze)
    _check_augment(augment)
    loss = dict(parse_key_value(item, "--loss-option") for item in loss_options) or None
    keras_model = _load_or_build(model, data, resolution, width)
    chain = _augmentation(augment, data, limit, keras_model)
    cache_dir = Path(out_dir) / "features" if cache_features else None
    keras_model, report = train(
        keras_model,
        data,
        epochs,
        batch_size=batch_size,
        learning_rate=lr,
        schedule=schedule,
        freeze=frozen,
        cache_features=cache_features,
        cache_dir=cache_dir,
        augment=chain,
        limit=limit,
        evaluate_test=evaluate_test,
        loss_options=loss,
    )
    payload = report.to_dict()
    payload.update(save_outputs(keras_model, payload, out_dir, force))
    if as_json:
        echo_json(payload)
    else:
        test = (
            f", test top-1 {payload['test_accuracy']:.4f}"
            if payload["test_accuracy"] is not None
            else ""
        )
        click.echo(
            f"held-out {_figures(payload['val_metrics'])} after {epochs} epochs "
            f"({payload['seconds']:.1f} s){test}"
        )
        click.echo(f"wrote {payload['model']} and {payload['report']}")


@click.command("compress")
@click.argument("model")
@click.option(
    "--data",
    required=True,
    help="Dataset used for fine-tuning (train split) and measuring (held-out split).",
)
@click.option(
    "--prune",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Target sparsity, e.g. 0.8.",
)
@click.option(
    "--prune-2by4",
    is_flag=True,
    help="2:4 structured sparsity (Conv2D/Dense with input channels divisible by 4).",
)
@click.option(
    "--prune-policy",
    type=click.Choice(["all", "1x1"]),
    default="all",
    show_default=True,
    help="'1x1' prunes only 1x1 convs (XNNPACK's sparse path).",
)
@click.option(
    "--prune-allocation",
    type=click.Choice(["uniform", "erk"]),
    default="uniform",
    show_default=True,
    help="Spread --prune over layers: 'uniform' (tfmot's way) or 'erk' (large layers sparser).",
)
@click.option(
    "--cluster",
    type=click.IntRange(min=2),
    default=None,
    help="Number of weight clusters per kernel.",
)
@click.option(
    "--qat",
    is_flag=True,
    help="Quantisation-aware training (8-bit; sparsity/cluster preserving after prune/cluster).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Fine-tuning epochs per stage.",
)
@batch_size_option
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Fine-tuning learning rate.",
)
@schedule_option
@augment_option
@limit_option
@out_dir_option("Output directory.")
@force_option("existing outputs")
@json_option("the report")
@handle_errors
def compress_command(
    model,
    data,
    prune,
    prune_2by4,
    prune_policy,
    prune_allocation,
    cluster,
    qat,
    epochs,
    batch_size,
    lr,
    schedule,
    augment,
    limit,
    out_dir,
    force,
    as_json,
):
    """Prune, cluster and/or quantisation-aware-train MODEL (a tf_keras model file).

    Writes DIR/model.keras (DIR/model.h5 after --qat) and DIR/report.json with
    held-out accuracy, sparsity and distinct weights per stage.
    """
    from mobilecv.compress.pipeline import check_request, compress, output_paths, save_outputs

    check_request(prune, prune_2by4, cluster, qat, epochs)
    output_paths(out_dir, qat=qat, force=force)
    _check_augment(augment)
    keras_model = _load_or_build(model, data, None, None)
    chain = _augmentation(augment, data, limit, keras_model)
    keras_model, report = compress(
        keras_model,
        data,
        prune=prune,
        prune_2by4=prune_2by4,
        prune_policy=prune_policy,
        prune_allocation=prune_allocation,
        cluster=cluster,
        qat=qat,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        schedule=schedule,
        augment=chain,
        limit=limit,
    )
    payload = report.to_dict()
    payload.update(save_outputs(keras_model, payload, out_dir, force))
    if as_json:
        echo_json(payload)
        return
    from mobilecv.train import task_of

    metric = task_of(keras_model).primary_metric
    click.echo(f"{'stage':<10} {metric:>8} {'sparsity':>9} {'max unique':>11} {'per channel':>12}")
    for stage in report.stages:
        click.echo(
            f"{stage.stage:<10} {stage.val_metrics[metric]:>8.4f} {stage.sparsity:>9.3f} "
            f"{stage.max_unique_weights:>11} {stage.max_unique_per_channel:>12}"
        )
    click.echo(f"wrote {payload['model']} and {payload['report']}")

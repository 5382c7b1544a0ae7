"""prune -> cluster -> QAT as one chain, fine-tuning on train and measuring on held-out data.

Each stage fine-tunes on the TRAIN split, is stripped of its wrappers, and is then
measured on the validation split carved from train: accuracy, kernel sparsity and
distinct weight values. Clustering after pruning preserves the zeros; QAT after
pruning/clustering uses the matching preserving scheme (PQAT / CQAT / PCQAT), so
what one stage bought is not undone by the next.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobilecv.compress import cluster as cluster_mod
from mobilecv.compress import prune as prune_mod
from mobilecv.compress import qat as qat_mod
from mobilecv.compress._common import (
    kernels,
    overall_sparsity,
    require_tf_keras,
    unique_counts,
    unique_per_channel,
)
from mobilecv.errors import InputError, UnknownName, parse_choice
from mobilecv.train import (
    Schedule,
    Splits,
    evaluate,
    fit,
    load_splits,
    steps_per_epoch,
    task_of,
)

# Weights measured for the report: every conv/dense kernel a technique may touch.
MEASURED = {"Conv2D": ("kernel",), "Dense": ("kernel",)}


@dataclass
class StageReport:
    stage: str
    val_accuracy: float | None  # top-1 for classification; None for other tasks
    val_loss: float
    sparsity: float
    max_unique_weights: int
    max_unique_per_channel: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)  # the task's metrics


@dataclass
class CompressReport:
    dataset: str
    train_samples: int
    val_samples: int
    epochs: int
    batch_size: int
    stages: list[StageReport] = field(default_factory=list)
    qat_scheme: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stage(self, name: str) -> StageReport:
        for item in self.stages:
            if item.stage == name:
                return item
        raise UnknownName(f"no stage {name!r} in the report")


def measure(
    model, splits: Splits, stage: str, seconds: float, batch_size: int, **details
) -> StageReport:
    weights = kernels(model, MEASURED)
    result = evaluate(model, splits.validation, batch_size)
    counts = unique_counts(weights)
    return StageReport(
        stage=stage,
        val_accuracy=round(result["accuracy"], 4) if "accuracy" in result else None,
        val_loss=round(result["loss"], 4),
        val_metrics={k: round(float(v), 4) for k, v in result.items() if k != "loss"},
        sparsity=round(overall_sparsity(weights), 4),
        max_unique_weights=max(counts.values()) if counts else 0,
        max_unique_per_channel=max((unique_per_channel(w) for w in weights.values()), default=0),
        seconds=round(seconds, 2),
        details=details,
    )


def check_request(
    prune: float | None, prune_2by4: bool, cluster: int | None, qat: bool, epochs: int
) -> None:
    """The requested techniques make sense together (cheap: the CLI checks it before
    loading the model)."""
    if prune is not None and prune_2by4:
        raise InputError("choose either --prune SPARSITY or --prune-2by4, not both")
    if prune is None and not prune_2by4 and cluster is None and not qat:
        raise InputError("nothing to do: pass at least one of prune, prune_2by4, cluster, qat")
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")


def compress(
    model,
    data: str | os.PathLike | Splits,
    *,
    prune: float | None = None,
    prune_2by4: bool = False,
    prune_policy: str = "all",
    prune_allocation: str = "uniform",
    cluster: int | None = None,
    qat: bool = False,
    epochs: int = 2,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    limit: int | None = None,
    progress: bool = True,
    schedule: str | Schedule = Schedule.CONSTANT,
    augment: Callable | None = None,
):
    """Chain the requested techniques. Returns (model, CompressReport).

    Every stage fine-tunes for `epochs` with `learning_rate`, decayed per stage when
    `schedule` is cosine, on train images passed through `augment`.

    The returned model is stripped of pruning/clustering wrappers; after QAT it is the
    fake-quantised model, which the TFLite converter turns into an int8 model.
    """
    require_tf_keras(model, "compress")
    check_request(prune, prune_2by4, cluster, qat, epochs)
    schedule = parse_choice(Schedule, schedule, "schedule")  # before any data is loaded
    splits = load_splits(data, limit=limit, task=task_of(model))
    report = CompressReport(
        dataset=splits.train.name,
        train_samples=len(splits.train),
        val_samples=len(splits.validation),
        epochs=epochs,
        batch_size=batch_size,
    )
    report.stages.append(measure(model, splits, "baseline", 0.0, batch_size))
    tuning = {"progress": progress, "schedule": schedule, "augment": augment}
    pruned = clustered = False

    if prune is not None or prune_2by4:
        start = time.perf_counter()
        wrapped, info = prune_mod.prune(
            model,
            prune,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch(len(splits.train), batch_size),
            m_by_n=(2, 4) if prune_2by4 else None,
            policy=prune_policy,
            allocation=prune_allocation,
        )
        fit(
            wrapped,
            splits,
            epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            callbacks=prune_mod.callbacks(),
            **tuning,
        )
        model = prune_mod.strip(wrapped)
        per_layer = prune_mod.measured_sparsity(model, info.layers)
        details = {**info.to_dict(), "layer_sparsity": per_layer}
        if prune_2by4:
            pruned_kernels = kernels(model, prune_mod.SUPPORTED_LAYERS, set(info.layers))
            details["m_by_n_violations"] = sum(
                prune_mod.m_by_n_violations(k) for k in pruned_kernels.values()
            )
        report.stages.append(
            measure(model, splits, "prune", time.perf_counter() - start, batch_size, **details)
        )
        pruned = True

    if cluster is not None:
        start = time.perf_counter()
        wrapped, info = cluster_mod.cluster(model, cluster, preserve_sparsity=pruned)
        fit(
            wrapped,
            splits,
            epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            **tuning,
        )
        model = cluster_mod.strip(wrapped)
        details = {
            **info.to_dict(),
            "unique_weights": cluster_mod.unique_weights(model, info.layers),
        }
        report.stages.append(
            measure(model, splits, "cluster", time.perf_counter() - start, batch_size, **details)
        )
        clustered = True

    if qat:
        start = time.perf_counter()
        if clustered:
            scheme = (
                qat_mod.QuantScheme.SPARSE_CLUSTER_PRESERVE
                if pruned
                else qat_mod.QuantScheme.CLUSTER_PRESERVE
            )
        elif pruned:
            scheme = qat_mod.QuantScheme.PRUNE_PRESERVE
        else:
            scheme = qat_mod.QuantScheme.DEFAULT
        model = qat_mod.quantize(model, scheme)
        qat_mod.calibrate_ranges(model, splits.train.x)
        fit(
            model,
            splits,
            epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            **tuning,
        )
        report.qat_scheme = scheme.value
        report.stages.append(
            measure(
                model, splits, "qat", time.perf_counter() - start, batch_size, scheme=scheme.value
            )
        )
    return model, report


def output_paths(out_dir: str | os.PathLike, qat: bool, force: bool = False) -> tuple[Path, Path]:
    """(model path, report path) in out_dir; refuses existing files without force, so a
    long run does not end in a refusal to write."""
    from mobilecv.fileio import check_writable

    out = Path(out_dir)
    model_path = check_writable(out / ("model.h5" if qat else "model.keras"), force)
    report_path = check_writable(out / "report.json", force)
    return model_path, report_path


def save_outputs(
    model, report: dict[str, Any], out_dir: str | os.PathLike, force: bool = False
) -> dict[str, str]:
    """Write DIR/model.keras (or model.h5 for a QAT model) and DIR/report.json atomically.

    QAT models go to .h5 because tf_keras cannot reload tfmot's QuantizeLayer from
    .keras ("expected 5 variables, received 3"); load them with `qat.load()`.
    """
    from mobilecv.fileio import write_json
    from mobilecv.modelio import save_model

    is_qat = any(type(layer).__name__ == "QuantizeWrapperV2" for layer in model.layers)
    model_path, report_path = output_paths(out_dir, is_qat, force)
    if is_qat:
        written = qat_mod.save(model, model_path, force=force)
    else:
        save_model(model, model_path, force=force)
        written = {"model": str(model_path)}
    write_json(report_path, {**report, **written}, force=force)
    return {**written, "report": str(report_path)}

"""Width x resolution (x depth) sweeps of one family, measured and judged for a device.

Each grid point is built, profiled, int8-converted and benchmarked as a trial of
mobilecv.engine (a Ray task in a fresh worker process, on this machine or a Ray cluster,
so a crash or leak stays in that trial; a sweep killed halfway resumes): params and MACs from :func:`mobilecv.profiling.profile`, the int8 .tflite
from :func:`mobilecv.converters.tflite.convert`, the latency measured on the host with one
thread, and the estimate and fit verdict under a device profile from
:func:`mobilecv.bench.run`. Optionally each point is first trained for a few epochs and
scored on the test split (used for nothing else). A point that fails becomes a row
with its error.

:func:`pareto_front` and :func:`plot` answer the course's question on these numbers:
which (width, depth, resolution) gives the most accuracy (or, untrained, compute) per
millisecond among the points that fit the device.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mobilecv import engine
from mobilecv.errors import InputError

CSV_NAME = "sweep.csv"
JSON_NAME = "sweep.json"
PLOT_NAME = "pareto.png"
STATE_NAME = "trials.jsonl"  # finished rows, for --resume (mobilecv.engine)
MODELS_DIR = "models"

# Column order of sweep.csv (and of the rows' keys).
COLUMNS = (
    "family",
    "width",
    "depth",
    "resolution",
    "params",
    "macs",
    "tflite_bytes",
    "host_latency_ms",
    "host_latency_p90_ms",
    "device",
    "device_latency_ms",
    "device_flash_bytes",
    "device_ram_bytes",
    "arena_bytes",
    "fits",
    "fits_flash",
    "fits_ram",
    "fits_latency",
    "fits_ops",
    "verdict",
    "reasons",
    "task",
    "metric",
    "val_score",
    "score",
    "pareto",
    "seconds",
    "node",
    "tflite",
    "error",
)


# --------------------------------------------------------------------------- input


def parse_list(text: str, kind: type, name: str) -> tuple:
    """'0.25,0.5' -> (0.25, 0.5); an empty list or a non-number is an InputError."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise InputError(f"--{name} is empty: give a comma-separated list, e.g. 0.25,0.5")
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise InputError(
            f"--{name} must be comma-separated {kind.__name__} values, got {text!r}"
        ) from None
    return tuple(values)


def _unique(values: Sequence, name: str) -> tuple:
    values = tuple(dict.fromkeys(values))  # drop repeats, keep order
    if not values:
        raise InputError(f"{name} is empty: the sweep grid needs at least one value")
    return values


def grid(
    family: str,
    widths: Sequence[float],
    resolutions: Sequence[int],
    depths: Sequence[float] = (1.0,),
    *,
    classes: int = 10,
    input_channels: int = 1,
) -> list[dict]:
    """Every (width, depth, resolution) point, validated by the registry (no model built).

    Raises KeyError for an unknown family and ValueError/InputError for a knob the family
    cannot take (width 0, a resolution below its minimum, ...), so bad input fails
    before any worker starts.
    """
    from mobilecv.registry import get, resolve

    get(family)
    widths = _unique(widths, "widths")
    depths = _unique(depths, "depths")
    resolutions = _unique(resolutions, "resolutions")
    points = []
    for depth in depths:
        for width in widths:
            for resolution in resolutions:
                try:
                    knobs = resolve(
                        family,
                        width=width,
                        depth=depth,
                        resolution=resolution,
                        classes=classes,
                        input_channels=input_channels,
                    )
                except (ValueError, KeyError) as exc:
                    raise InputError(
                        f"{family} width={width} depth={depth} resolution={resolution}: {exc}"
                    ) from None
                points.append(
                    {
                        "family": family,
                        "width": knobs["width"],
                        "depth": knobs["depth"],
                        "resolution": int(knobs["resolution"]),
                        "classes": int(knobs["classes"]),
                        "input_channels": int(knobs["input_channels"]),
                    }
                )
    return points


def point_name(row: Mapping) -> str:
    return f"{row['family']}_w{row['width']:g}_d{row['depth']:g}_r{row['resolution']}"


# --------------------------------------------------------------------------- trial


def _split(dataset: str, split: str, samples: int | None, model):
    """One split as the model's task reads it (its labels; scenes for tasks beyond
    classification)."""
    from mobilecv.train import load_split, task_of

    return load_split(dataset, split, samples, task=task_of(model))


def _measure_point(task: dict) -> dict:
    """A sweep point: build, (train), int8-convert, (score on test), measure and judge."""
    model, row = build_point(task)
    if task["train_epochs"] > 0:
        model, trained = train_point(task, model)
        row.update(trained)
    result, path = convert_point(task, model)
    row["tflite"] = os.fspath(path)
    row["tflite_bytes"] = result.size
    if task["train_epochs"] > 0:
        row["score"] = test_score(task, model, result, row)
    row.update(judge_point(task, path))
    return row


def build_point(task: Mapping) -> tuple:
    """The point's model (its family's options included) and its params and MACs."""
    import mobilecv
    from mobilecv.profiling import profile

    model = mobilecv.build(
        task["family"],
        width=task["width"],
        depth=task["depth"],
        resolution=task["resolution"],
        classes=task["classes"],
        input_channels=task["input_channels"],
        **task.get("options", {}),
    )
    prof = profile(model)
    return model, {"params": int(prof.params), "macs": int(prof.macs)}


def train_point(task: Mapping, model, *, progress: bool = False) -> tuple:
    """``train_epochs`` on ``train_limit`` training images; the held-out (validation)
    score is the one anything may be chosen on."""
    from mobilecv.train import train

    model, report = train(
        model,
        task["dataset"],
        task["train_epochs"],
        batch_size=task["batch_size"],
        limit=task["train_limit"],
        progress=progress,
    )
    metric = _primary_metric(report.task)
    return model, {
        "task": report.task,
        "metric": metric,
        "val_score": report.val_metrics.get(metric),
    }


def convert_point(task: Mapping, model) -> tuple:
    """The int8 conversion, calibrated on training images (uniform noise without data),
    saved as ``models_dir/NAME.tflite``."""
    from mobilecv.converters.tflite import convert

    shape = (1, *(int(d) for d in model.input_shape[1:]))
    count = task["calibration_samples"] + 64
    if task["dataset"] is not None:
        calibration = _split(task["dataset"], "train", count, model).x
    else:  # no data: uniform [0, 1) images, which convert maps onto the declared input range
        calibration = np.random.default_rng(0).random((count, *shape[1:]), dtype=np.float32)
    result = convert(
        model,
        quantize="int8",
        calibration=calibration,
        samples=task["calibration_samples"],
        verify=task.get("verify", True),
        progress=False,
    )
    path = Path(task["models_dir"]) / f"{point_name(task)}.tflite"
    result.save(path, force=True)
    return result, path


def test_score(task: Mapping, model, result, row: Mapping) -> float:
    """The int8 model's score on ``test_samples`` test images: the only place the test
    split is read, for a figure nothing is chosen on."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.evaluate import TfliteModel
    from mobilecv.tasks import get_task

    data = _split(task["dataset"], "test", task["test_samples"], model)
    scorer = get_task(row["task"])
    outputs = TfliteModel(result.tflite).predict_outputs(
        model_inputs(data.x, model), scorer.outputs
    )
    return scorer.score(outputs, data.y)[row["metric"]]


def judge_point(task: Mapping, path: Path) -> dict:
    """Host latency measured (1 thread, one timed model at a time on a machine) and the
    device's estimate, TFLM arena and fit verdict, as row columns."""
    from mobilecv import bench
    from mobilecv.bench import devices

    host = devices.get("host", calibrate=False)
    on_host = task["device"] == "host"
    with engine.measuring():
        measured = bench.run(
            path,
            host,
            threads=1,
            runs=task["runs"],
            warmup=task["warmup"],
            max_latency_ms=task["max_latency_ms"] if on_host else None,
        )
    judged = (
        measured
        if on_host
        else bench.run(path, task["device"], threads=1, max_latency_ms=task["max_latency_ms"])
    )
    est = judged["estimate"] or {}
    return dict(
        host_latency_ms=measured["latency_ms"]["p50"],
        host_latency_p90_ms=measured["latency_ms"]["p90"],
        device=judged["device"],
        device_latency_ms=est.get("latency_ms"),
        judged_latency_ms=judged["judged_latency"]["ms"],
        device_flash_bytes=est.get("flash_bytes"),
        device_ram_bytes=est.get("ram_bytes"),
        arena_bytes=judged.get("arena_bytes"),
        fits=judged["verdict"] == "fits",
        **{f"fits_{k}": v for k, v in judged["fits"].items() if f"fits_{k}" in COLUMNS},
        verdict=judged["verdict"],
        reasons=list(judged["reasons"]),
    )


def _run_point(task: dict) -> dict:
    """The trial: never raises, a failure is the row's `error`."""
    start = time.perf_counter()
    row = _empty_row(task)
    try:
        row.update(_measure_point(task))
    except Exception as exc:  # noqa: BLE001 - one bad point must not end the sweep
        row["error"] = engine.failure_line(exc)
        if os.environ.get("MOBILECV_SWEEP_TRACEBACK"):
            traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _failed_row(task: Mapping, error: str) -> dict:
    """The row of a point whose trial died (killed, out of memory, a native crash)."""
    return {**_empty_row(task), "error": error}


def _empty_row(point: Mapping) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update({k: point[k] for k in ("family", "width", "depth", "resolution")})
    row["device"] = point.get("device")
    row["reasons"] = []
    row["pareto"] = False
    return row


# --------------------------------------------------------------------------- sweep


def sweep(
    family: str,
    widths: Sequence[float],
    resolutions: Sequence[int],
    depths: Sequence[float] = (1.0,),
    device: str = "stm32f746",
    train_epochs: int = 0,
    dataset: str | None = "fashion_mnist",
    workers: int = 2,
    *,
    classes: int | None = None,
    input_channels: int | None = None,
    max_latency_ms: float | None = None,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    resume: bool = False,
    address: str | None = None,
    train_limit: int | None = 5000,
    test_samples: int | None = 2000,
    batch_size: int = 64,
    calibration_samples: int = 100,
    runs: int = 30,
    warmup: int = 5,
    progress: bool = True,
) -> list[dict]:
    """Build, convert (int8) and benchmark every grid point, each a trial on Ray.

    Returns one row per point (keys: :data:`COLUMNS`), in grid order. `dataset`
    calibrates the int8 conversion (random images when None) and, with
    `train_epochs` > 0, trains each point on `train_limit` training images and scores
    the int8 model on `test_samples` test images. `classes` / `input_channels` default
    to the dataset's. With `out_dir`, writes sweep.csv, sweep.json, pareto.png, the
    .tflite files (models/) and the run's state (trials.jsonl) there; existing outputs
    need `force`, and `resume` finishes a sweep that was stopped.

    `workers` trials run at once on each machine (each with cpu_count / workers CPUs and
    as many TensorFlow threads); `address` runs them on a Ray cluster instead of a Ray
    started on this machine (mobilecv.engine).
    """
    from mobilecv.bench import devices

    _check_options(workers, train_epochs, dataset, runs, calibration_samples, max_latency_ms)
    if resume and out_dir is None:
        raise InputError("--resume continues a sweep written to an output directory (-o)")
    dev = devices.get(device, calibrate=False)
    classes, input_channels = data_shape(dataset, classes, input_channels)
    points = grid(
        family, widths, resolutions, depths, classes=classes, input_channels=input_channels
    )
    settings = {
        "family": family,
        "device": dev.name,
        "max_latency_ms": max_latency_ms,
        "classes": classes,
        "input_channels": input_channels,
        "dataset": dataset,
        "train_epochs": train_epochs,
        "train_limit": train_limit if train_epochs else None,
        "test_samples": test_samples if train_epochs else None,
        "runs": runs,
        "threads": 1,
    }
    common = {
        "device": device if device.endswith((".yaml", ".yml")) else dev.name,
        "max_latency_ms": max_latency_ms,
        "dataset": dataset,
        "train_epochs": train_epochs,
        "train_limit": train_limit,
        "test_samples": test_samples,
        "batch_size": batch_size,
        "calibration_samples": calibration_samples,
        "runs": runs,
        "warmup": warmup,
    }
    engine.check_address(address)  # before the output folder: a wrong address writes nothing
    with _output_folder(out_dir, force, resume) as models_dir:
        state = None
        if out_dir is not None:
            state = engine.open_state(Path(out_dir) / STATE_NAME, {**settings, "points": points},
                                      resume=resume, force=True)  # fmt: skip
        tasks = [{**p, **common, "models_dir": os.fspath(models_dir)} for p in points]
        rows = _run_all(tasks, workers, address, state, progress)
        if out_dir is None:
            for row in rows:
                row["tflite"] = None
    for row in rows:
        row["device"] = row["device"] or dev.name
    mark_pareto(rows)
    if out_dir is not None:
        write_outputs(rows, out_dir, settings, force=True)
    return rows


def _check_options(workers, train_epochs, dataset, runs, calibration_samples, max_latency_ms):
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if train_epochs < 0:
        raise InputError(f"train_epochs must be >= 0, got {train_epochs}")
    if train_epochs > 0 and dataset is None:
        raise InputError("training needs a dataset (--data)")
    for name, value in (("runs", runs), ("calibration_samples", calibration_samples)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise InputError(f"max_latency_ms must be > 0, got {max_latency_ms}")


def data_shape(dataset, classes, input_channels) -> tuple[int, int]:
    """(classes, input channels): as given, else the dataset's, else ImageNet's 1000 x 3."""
    if dataset is not None and (classes is None or input_channels is None):
        from mobilecv.data import Split, load_arrays

        sample = load_arrays(dataset, Split.VALIDATION, limit=1)
        classes = sample.classes if classes is None else classes
        input_channels = int(sample.x.shape[-1]) if input_channels is None else input_channels
    return (1000 if classes is None else classes), (3 if input_channels is None else input_channels)


@contextlib.contextmanager
def _output_folder(out_dir, force: bool, resume: bool):
    """The folder the .tflite files go to: DIR/models, or a temporary one without DIR.
    Existing outputs need ``force`` (or ``resume``, which finishes them)."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="mobilecv-sweep-") as scratch:
            yield Path(scratch)
        return
    out = Path(out_dir)
    if resume and not (out / STATE_NAME).exists():
        raise InputError(f"--resume: {out / STATE_NAME} does not exist; nothing to resume")
    for name in (CSV_NAME, JSON_NAME, PLOT_NAME, STATE_NAME):
        if (out / name).exists() and not (force or resume):
            raise InputError(f"{out / name} exists; pass --force to overwrite or --resume")
    models_dir = out / MODELS_DIR
    models_dir.mkdir(parents=True, exist_ok=True)
    yield models_dir


def _run_all(tasks: list[dict], workers: int, address, state, progress: bool) -> list[dict]:
    """Every task as a trial on Ray, one row per task in task order."""
    cpus = os.cpu_count() or 1
    with engine.ray_session(address, cpus):
        return engine.run_trials(
            _run_point,
            tasks,
            key=point_name,
            failed_row=_failed_row,
            cpus_per_trial=max(1, cpus // min(workers, len(tasks))),
            state=state,
            progress=progress,
            note=lambda row: f"{point_name(row)} {'error' if row['error'] else row['verdict']}",
        )


# --------------------------------------------------------------------------- Pareto


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def pareto_front(
    points: Sequence[Mapping],
    x: str,
    y: str,
    *,
    minimize_x: bool = True,
    maximize_y: bool = True,
) -> list[int]:
    """Indices of the points no other point dominates, best x first.

    A point is dominated when another is at least as good on both axes and strictly
    better on one (by default: lower x, e.g. latency, and higher y, e.g. accuracy).
    Points missing x or y take no part.
    """
    sx = 1.0 if minimize_x else -1.0
    sy = -1.0 if maximize_y else 1.0
    # Both axes as "smaller is better".
    coords = []
    for i, p in enumerate(points):
        px, py = _number(p.get(x)), _number(p.get(y))
        if px is not None and py is not None:
            coords.append((i, sx * px, sy * py))
    front = []
    for i, ax, ay in coords:
        dominated = any(
            bx <= ax and by <= ay and (bx < ax or by < ay) for j, bx, by in coords if j != i
        )
        if not dominated:
            front.append((ax, ay, i))
    return [i for _, _, i in sorted(front)]


def _primary_metric(task_name: str) -> str:
    from mobilecv.tasks import get_task

    return get_task(task_name).primary_metric


def y_key(rows: Sequence[Mapping]) -> str:
    """'score' (the task's test metric) when any point was trained and scored, else 'macs'."""
    return "score" if any(_number(r.get("score")) is not None for r in rows) else "macs"


def higher_is_better(rows: Sequence[Mapping]) -> bool:
    """Whether a higher y is better: the scores' task says (an error such as NME is not)."""
    from mobilecv.tasks import get_task

    names = {r["task"] for r in rows if r.get("task") and _number(r.get("score")) is not None}
    return all(get_task(n).higher_is_better for n in names)


def mark_pareto(rows: list[dict]) -> list[int]:
    """Set each row's `pareto` flag: on the latency/y frontier of the points that fit."""
    y = y_key(rows)
    candidates = [i for i, r in enumerate(rows) if not r.get("error") and r.get("fits")]
    front = pareto_front(
        [rows[i] for i in candidates],
        "host_latency_ms",
        y,
        maximize_y=y != "score" or higher_is_better(rows),
    )
    chosen = {candidates[k] for k in front}
    for i, row in enumerate(rows):
        row["pareto"] = i in chosen
    return sorted(chosen, key=lambda i: rows[i]["host_latency_ms"])


# --------------------------------------------------------------------------- outputs


def to_csv(rows: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        flat["reasons"] = "; ".join(row.get("reasons") or [])
        writer.writerow(flat)
    return buf.getvalue()


def plot(
    rows: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    device: str | None = None,
    title: str | None = None,
    force: bool = False,
    x: str = "host_latency_ms",
    y: str | None = None,
    xlabel: str = "measured host latency, 1 thread, p50 (ms)",
    ylabel: str | None = None,
    chosen: Mapping | None = None,
) -> Path:
    """y (by default the test score, or MACs untrained) against x (measured host latency);
    points that do not fit the device in grey, the frontier of those that fit marked and
    connected, and a ``chosen`` point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobilecv.fileio import atomic_path

    y = y or y_key(rows)
    ok = [
        r
        for r in rows
        if not r.get("error") and _number(r.get(x)) is not None and _number(r.get(y)) is not None
    ]
    metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
    scored = y != "macs"
    percent = scored and higher_is_better(rows)
    scale = 100.0 if percent else (1.0 if scored else 1e-6)
    ylabel = (ylabel or f"test {metric} of the int8 model") + (" (%)" if percent else "")
    ylabel = ylabel if scored else "MMACs"
    device = device or next((r.get("device") for r in rows if r.get("device")), "device")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    fit = [r for r in ok if r.get("fits")]
    miss = [r for r in ok if not r.get("fits")]
    if miss:
        ax.scatter(
            [r[x] for r in miss],
            [r[y] * scale for r in miss],
            c="0.75",
            edgecolors="0.55",
            s=36,
            label=f"does not fit {device}",
            zorder=2,
        )
    if fit:
        ax.scatter(
            [r[x] for r in fit],
            [r[y] * scale for r in fit],
            c="tab:blue",
            s=36,
            label=f"fits {device}",
            zorder=3,
        )
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r[x])
    if front:
        ax.plot(
            [r[x] for r in front],
            [r[y] * scale for r in front],
            "-o",
            color="tab:red",
            mfc="none",
            ms=11,
            mew=1.6,
            label="Pareto frontier (of points that fit)",
            zorder=4,
        )
    for r in ok:
        ax.annotate(
            f"w{r['width']:g} r{r['resolution']}"
            + (f" d{r['depth']:g}" if r["depth"] != 1 else ""),
            (r[x], r[y] * scale),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            color="0.2" if r.get("fits") else "0.55",
        )
    if chosen is not None and _number(chosen.get(y)) is not None:
        ax.scatter([chosen[x]], [chosen[y] * scale], marker="*", s=260, c="gold",
                   edgecolors="k", label="chosen", zorder=5)  # fmt: skip
    lat = [r[x] for r in ok]
    if lat and min(lat) > 0 and max(lat) / min(lat) > 20:
        ax.set_xscale("log")
    if y == "macs" and ok:
        values = [r[y] for r in ok]
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
    failed = len(rows) - len(ok)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    family = next((r.get("family") for r in rows), "")
    ax.set_title(
        title
        or f"{family}: {metric if scored else 'MACs'} vs latency, fit judged for {device}"
        + (f" ({failed} point(s) failed)" if failed else "")
    )
    ax.grid(True, alpha=0.3)
    if ok:
        ax.legend(fontsize=8, loc="best")
        if not fit:
            ax.text(
                0.02, 0.97, f"no point fits {device}: no frontier", transform=ax.transAxes,
                va="top", fontsize=9, color="tab:red",
            )  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no point was measured", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def write_outputs(
    rows: Sequence[Mapping],
    out_dir: str | os.PathLike,
    settings: Mapping | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write DIR/sweep.csv, DIR/sweep.json and DIR/pareto.png, each atomically."""
    from mobilecv.fileio import write_json, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    paths = {
        "csv": write_text(out / CSV_NAME, to_csv(rows), force=force),
        "json": write_json(
            out / JSON_NAME,
            {**settings, "y": y_key(rows), "rows": [dict(r) for r in rows]},
            force=force,
        ),
        "plot": plot(rows, out / PLOT_NAME, device=settings.get("device"), force=force),
    }
    return paths

"""Hardware-aware scaling search: the width, depth and resolution (and channel divisor)
with the best held-out score that still fits a device.

- Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019: the compound space, d = a**phi, w = b**phi, r = g**phi with a*b**2*g**2 ~= 2.
- Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile", CVPR 2019:
  accuracy and the device's latency as the two objectives.
- Lin et al., "MCUNet: Tiny Deep Learning on IoT Devices", NeurIPS 2020: a search bounded
  by a microcontroller's SRAM (the real TFLite Micro arena) and flash.

Each trial is a Ray Tune trial, proposed by Optuna (TPE for the score alone, NSGA-II for
score and latency). A trial builds its point, converts it to int8 untrained and judges it
on the device (size, arena and latency do not depend on the weights); only a point that
fits is trained for a few epochs and scored on the validation split. The test split is
read once, for the chosen model after its full-length retraining. A trial that raises or
whose worker dies is a failed row; a search that was stopped resumes from DIR/tune.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray.tune import Callback

from mobilecv import engine, sweep
from mobilecv.errors import InputError

CSV_NAME = "search.csv"
JSON_NAME = "search.json"
PLOT_NAME = "pareto.png"
STATE_NAME = "trials.jsonl"  # the settings, and every finished trial's row as it ends
TUNE_NAME = "tune"  # Ray Tune's experiment folder, which --resume restores
BEST_KERAS = "best.keras"
BEST_TFLITE = "best.tflite"
OBJECTIVES = ("score", "latency")
COMPOUND_PRODUCT = 2.0  # a * b**2 * g**2: each unit of phi about doubles the MACs
COMPOUND_TOLERANCE = 0.05
INFEASIBLE_SCORE = -1.0  # below any score: what a point that does not fit reports
SEARCHED = ("width", "depth", "resolution", "divisor", "phi", "alpha", "beta", "gamma")
COLUMNS = (
    "trial",
    *SEARCHED,
    *(c for c in sweep.COLUMNS if c not in ("width", "depth", "resolution", "score")),
    "judged_latency_ms",
    "constraints",
    "chosen",
)
Row = dict[str, Any]


# --------------------------------------------------------------------------- space


@dataclass(frozen=True)
class Space:
    """What a search may choose. Without ``phi`` it searches width, depth and resolution
    within their (low, high) bounds; with ``phi`` (low, high) it searches the compound
    coefficient and an (a, b, g) triple from :func:`compound_grid`, applied to ``base``
    (width, depth, resolution). ``divisors`` (e.g. 8, 16, 32) adds the channel divisor."""

    width: tuple[float, float] = (0.25, 1.0)
    depth: tuple[float, float] = (0.5, 1.0)
    resolution: tuple[int, int] = (32, 96)
    resolution_step: int = 8
    divisors: tuple[int, ...] = ()
    phi: tuple[float, float] | None = None
    base: tuple[float, float, int] = (0.35, 1.0, 32)

    def optuna(self) -> dict:
        """The space as Optuna distributions (names are the config keys of a trial)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.phi is not None:
            space = {
                "phi": FloatDistribution(*self.phi),
                "abg": CategoricalDistribution([_triple_name(t) for t in compound_grid()]),
            }
        else:
            low, high = self.resolution
            space = {
                "width": FloatDistribution(*self.width),
                "depth": FloatDistribution(*self.depth),
                "resolution": IntDistribution(low, high, step=self.resolution_step),
            }
        if self.divisors:
            space["divisor"] = CategoricalDistribution(list(self.divisors))
        return space

    def point(self, config: Mapping) -> dict:
        """The knobs a trial's config stands for (width and depth to 3 decimals)."""
        if self.phi is not None:
            alpha, beta, gamma = (float(v) for v in str(config["abg"]).split(","))
            phi = float(config["phi"])
            width0, depth0, resolution0 = self.base
            knobs = {
                "width": width0 * beta**phi,
                "depth": depth0 * alpha**phi,
                "resolution": int(round(resolution0 * gamma**phi)),
                "phi": phi,
                "alpha": alpha,
                "beta": beta,
                "gamma": gamma,
            }
        else:
            knobs = {k: config[k] for k in ("width", "depth", "resolution")}
        knobs["width"] = round(float(knobs["width"]), 3)
        knobs["depth"] = round(float(knobs["depth"]), 3)
        knobs["resolution"] = int(knobs["resolution"])
        if "divisor" in config:
            knobs["divisor"] = int(config["divisor"])
        return knobs

    def corners(self) -> list[dict]:
        """The extreme points, which must all be buildable (checked before Ray starts)."""
        if self.phi is not None:
            triples = compound_grid()
            configs = [{"phi": phi, "abg": _triple_name(t)} for phi in self.phi for t in triples]
        else:
            configs = [
                {"width": w, "depth": d, "resolution": r}
                for w in self.width
                for d in self.depth
                for r in self.resolution
            ]
        divisors = self.divisors or (None,)
        return [
            self.point({**c, **({"divisor": v} if v else {})}) for c in configs for v in divisors
        ]


def compound_grid(
    product: float = COMPOUND_PRODUCT, tolerance: float = COMPOUND_TOLERANCE
) -> list[tuple[float, float, float]]:
    """EfficientNet's grid: (a, b, g), each >= 1 in steps of 0.05 (a up to 2, b and g up to
    1.45), with a * b**2 * g**2 within ``tolerance`` of ``product``."""
    alphas = [round(1 + 0.05 * i, 2) for i in range(21)]
    betas = [round(1 + 0.05 * i, 2) for i in range(10)]
    return [
        (a, b, g)
        for a, b, g in itertools.product(alphas, betas, betas)
        if abs(a * b * b * g * g - product) <= tolerance * product
    ]


def _triple_name(triple: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in triple)


def parse_range(text: str, kind: type, name: str) -> tuple:
    """'0.25:1.0' -> (0.25, 1.0); one value 'x' -> (x, x)."""
    parts = [p.strip() for p in str(text).split(":")]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise InputError(f"--{name} must be LOW:HIGH ({kind.__name__}s), got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise InputError(f"--{name} must be LOW:HIGH with LOW <= HIGH, got {text!r}")
    return values


def check_space(space: Space, family: str, classes: int, input_channels: int) -> None:
    """Bad bounds are one-line errors before Ray starts: every corner must build."""
    from mobilecv.registry import resolve

    low, high = space.resolution
    if space.resolution_step < 1 or (high - low) % space.resolution_step:
        raise InputError(
            f"--resolutions {low}:{high} must span whole --resolution-step "
            f"{space.resolution_step} steps"
        )
    if space.phi is not None and space.phi[0] < 0:
        raise InputError(f"--phi must be >= 0 (phi 0 is the base), got {space.phi[0]}")
    for point in space.corners():
        options = {"divisor": point["divisor"]} if "divisor" in point else {}
        try:
            resolve(
                family,
                width=point["width"],
                depth=point["depth"],
                resolution=point["resolution"],
                classes=classes,
                input_channels=input_channels,
                **options,
            )
        except (ValueError, KeyError) as exc:
            raise InputError(f"{family} {_describe(point)}: {exc}") from None


def _describe(point: Mapping) -> str:
    return " ".join(f"{k}={point[k]:g}" for k in SEARCHED if point.get(k) is not None)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Constraints:
    """The device's own verdict (flash, RAM with the real TFLM arena, ops, latency budget),
    plus optional tighter bounds on the arena and the model's flash."""

    device: str = "stm32f746"
    max_latency_ms: float | None = None
    max_arena_kb: float | None = None
    max_flash_kb: float | None = None

    def violations(self, row: Mapping) -> list[str]:
        """What keeps a measured point off the device (empty: it fits)."""
        found = [] if row.get("fits") else list(row.get("reasons") or ["does not fit"])
        arena, flash = row.get("arena_bytes"), row.get("tflite_bytes")
        if self.max_arena_kb is not None and arena is not None and arena > self.max_arena_kb * 1024:
            found.append(f"arena {arena / 1024:.1f} KB > {self.max_arena_kb:g} KB")
        if self.max_flash_kb is not None and flash is not None and flash > self.max_flash_kb * 1024:
            found.append(f"model {flash / 1024:.1f} KB > {self.max_flash_kb:g} KB of flash")
        return found

    def overshoot(self, row: Mapping) -> float:
        """How far over its tightest bound a point is (1.0 on the bound), so that a
        point that does not fit still tells the sampler which way to go."""
        ratios = [1.0]
        if self.max_arena_kb and row.get("arena_bytes"):
            ratios.append(row["arena_bytes"] / (self.max_arena_kb * 1024))
        if self.max_flash_kb and row.get("tflite_bytes"):
            ratios.append(row["tflite_bytes"] / (self.max_flash_kb * 1024))
        if self.max_latency_ms and row.get("judged_latency_ms"):
            ratios.append(row["judged_latency_ms"] / self.max_latency_ms)
        return max(ratios)


@dataclass(frozen=True)
class Settings:
    """Everything a search's trials depend on: the same settings are needed to resume."""

    family: str
    space: Space
    constraints: Constraints
    objectives: tuple[str, ...] = OBJECTIVES
    dataset: str = "fashion_mnist"
    classes: int = 10
    input_channels: int = 1
    trials: int = 20
    epochs_per_trial: int = 2
    train_limit: int | None = 5000
    batch_size: int = 64
    calibration_samples: int = 100
    runs: int = 30
    seed: int = 0
    cpus_per_trial: int = 1
    start: tuple[dict, ...] = ()  # configs tried first (e.g. the base model), then Optuna's
    extra: dict = field(default_factory=dict)

    def state(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def settings_from_options(
    family: str,
    *,
    device: str = "stm32f746",
    max_latency_ms: float | None = None,
    max_arena_kb: float | None = None,
    max_flash_kb: float | None = None,
    dataset: str = "fashion_mnist",
    widths: str = "0.25:1.0",
    depths: str = "0.5:1.0",
    resolutions: str = "32:96",
    resolution_step: int = 8,
    divisors: str | None = None,
    phi: str | None = None,
    base: str = "0.35,1.0,32",
    objectives: str = "score,latency",
    workers: int = 2,
    **rest: Any,
) -> Settings:
    """Settings from the CLI's text options, every one checked before Ray starts."""
    from mobilecv.bench import devices
    from mobilecv.registry import get

    get(family)
    dev = devices.get(device, calibrate=False)
    for name, value in (("max_latency_ms", max_latency_ms), ("max_arena_kb", max_arena_kb),
                        ("max_flash_kb", max_flash_kb)):  # fmt: skip
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    space = Space(
        width=parse_range(widths, float, "widths"),
        depth=parse_range(depths, float, "depths"),
        resolution=parse_range(resolutions, int, "resolutions"),
        resolution_step=resolution_step,
        divisors=sweep.parse_list(divisors, int, "divisors") if divisors else (),
        phi=parse_range(phi, float, "phi") if phi else None,
        base=_base(base),
    )
    classes, channels = sweep.data_shape(dataset, None, None)
    check_space(space, family, classes, channels)
    return Settings(
        family=family,
        space=space,
        constraints=Constraints(
            device if device.endswith((".yaml", ".yml")) else dev.name,  # a profile file
            max_latency_ms,
            max_arena_kb,
            max_flash_kb,
        ),
        objectives=tuple(objectives.split(",")),
        dataset=dataset,
        classes=classes,
        input_channels=channels,
        cpus_per_trial=max(1, (os.cpu_count() or 1) // workers),
        **rest,
    )


def _base(text: str) -> tuple[float, float, int]:
    try:
        width, depth, resolution = (s.strip() for s in str(text).split(","))
        return float(width), float(depth), int(resolution)
    except ValueError:
        raise InputError(f"--base must be WIDTH,DEPTH,RESOLUTION, got {text!r}") from None


# --------------------------------------------------------------------------- trial


def evaluate_point(settings: Settings, knobs: Mapping, scratch: Path) -> Row:
    """One trial's row: built, converted (int8, untrained) and judged on the device;
    trained and scored on the validation split only if it fits."""
    task = _task(settings, knobs, scratch)
    model, row = sweep.build_point(task)
    with _weights_as_if_trained(model):
        result, path = sweep.convert_point(task, model)
    row["tflite_bytes"] = result.size
    row.update(sweep.judge_point(task, path))
    row["constraints"] = settings.constraints.violations(row)
    if not row["constraints"]:
        _, trained = sweep.train_point(task, model)
        row.update(trained)
    return row


@contextlib.contextmanager
def _weights_as_if_trained(model) -> Iterator[None]:
    """Distinct random BatchNorm statistics and biases for the block, then the model's
    own weights back. Untrained, they are all 0 and 1, so every folded bias is the same
    and the converter stores one buffer for them all: measured on MobileNetV2 0.5 at
    48 px, 948,192 B untrained against 982,456 B trained (982,136 B with this)."""
    saved = model.get_weights()
    rng = np.random.default_rng(0)
    for variable in model.weights:
        name = variable.name.split("/")[-1]
        if name.startswith(("moving_mean", "bias", "beta")):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))
        elif name.startswith(("moving_variance", "gamma")):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    try:
        yield
    finally:
        model.set_weights(saved)


def _task(settings: Settings, knobs: Mapping, scratch: Path) -> dict:
    """The sweep's task dict for one point (mobilecv.sweep's build/convert/judge steps)."""
    return {
        "family": settings.family,
        "width": knobs["width"],
        "depth": knobs["depth"],
        "resolution": knobs["resolution"],
        "options": {"divisor": knobs["divisor"]} if "divisor" in knobs else {},
        "classes": settings.classes,
        "input_channels": settings.input_channels,
        "dataset": settings.dataset,
        "train_epochs": settings.epochs_per_trial,
        "train_limit": settings.train_limit,
        "batch_size": settings.batch_size,
        "calibration_samples": settings.calibration_samples,
        "verify": False,  # the float-vs-int8 check of an untrained model says nothing
        "device": settings.constraints.device,
        "max_latency_ms": settings.constraints.max_latency_ms,
        "runs": settings.runs,
        "warmup": 5,
        "models_dir": os.fspath(scratch),
    }


def objective_values(settings: Settings, row: Mapping) -> dict[str, float]:
    """What Optuna is told: the validation score (or, for a point that does not fit,
    :data:`INFEASIBLE_SCORE` times its overshoot) and the judged device latency."""
    score = row.get("val_score")
    if row.get("constraints") or score is None:
        score = INFEASIBLE_SCORE * settings.constraints.overshoot(row)
    elif not _higher_is_better(row):
        score = -float(score)
    return {
        "objective_score": float(score),
        "objective_latency_ms": float(row["judged_latency_ms"]),
    }


def _higher_is_better(row: Mapping) -> bool:
    from mobilecv.tasks import get_task

    return not row.get("task") or get_task(row["task"]).higher_is_better


def run_trial(config: dict, settings: Settings, evaluate: Callable | None = None) -> None:
    """The Ray Tune trainable: TF limited to the trial's CPUs, then one row reported."""
    from ray import tune

    engine.limit_threads(settings.cpus_per_trial)
    start = time.perf_counter()
    knobs = settings.space.point(config)
    with tempfile.TemporaryDirectory(prefix="mobilecv-search-") as scratch:
        row = (evaluate or evaluate_point)(settings, knobs, Path(scratch))
    row.update(knobs, seconds=round(time.perf_counter() - start, 2), node=engine.node_id())
    tune.report({**objective_values(settings, row), "row": json.dumps(row, default=str)})


# --------------------------------------------------------------------------- search


def search(
    settings: Settings,
    out_dir: str | os.PathLike,
    *,
    final_epochs: int = 10,
    final_limit: int | None = None,
    workers: int = 2,
    address: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    evaluate: Callable | None = None,
) -> dict:
    """Run the search, choose, retrain the chosen point ``final_epochs`` (0: not at all)
    on ``final_limit`` training images (all by default), convert and judge it, and write
    DIR/search.csv, search.json, pareto.png, best.keras and best.tflite. Returns the
    report (what search.json holds)."""
    out = Path(out_dir).absolute()
    _check_outputs(out, force, resume)
    engine.check_address(address)  # before the state file: a wrong address writes nothing
    state = engine.open_state(out / STATE_NAME, settings.state(), resume=resume, force=True)
    rows = _tune(settings, out, state, workers, address, resume, progress, evaluate)
    mark_pareto(rows, settings)
    chosen = choose(rows)
    report = {"settings": settings.state(), "rows": rows, "chosen": None, "final": None}
    if chosen is not None:
        chosen["chosen"] = True
        report["chosen"] = chosen["trial"]
        if final_epochs > 0:
            report["final"] = retrain(settings, chosen, out, final_epochs, final_limit, progress)
    write_outputs(report, out)
    return report


def _check_outputs(out: Path, force: bool, resume: bool) -> None:
    if resume and not (out / STATE_NAME).exists():
        raise InputError(f"--resume: {out / STATE_NAME} does not exist; nothing to resume")
    for name in (CSV_NAME, JSON_NAME, STATE_NAME, BEST_TFLITE):
        if (out / name).exists() and not (force or resume):
            raise InputError(f"{out / name} exists; pass --force to overwrite or --resume")
    if force and not resume and (out / TUNE_NAME).exists():
        import shutil

        shutil.rmtree(out / TUNE_NAME)


def _tune(settings, out: Path, state: Path, workers, address, resume, progress, evaluate):
    """The trials on Ray Tune with Optuna proposing them; one row per trial."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings, evaluate=evaluate),
        {"cpu": settings.cpus_per_trial},
    )
    cpus = os.cpu_count() or 1
    with engine.ray_session(address, cpus), _quiet_tune():
        concurrent = max(1, min(workers, engine.cluster_cpus() // settings.cpus_per_trial))
        callbacks = [_RowLog(state, settings.space, settings.trials, progress)]
        if resume and tune.Tuner.can_restore(os.fspath(out / TUNE_NAME)):
            tuner = tune.Tuner.restore(
                os.fspath(out / TUNE_NAME), trainable, resume_unfinished=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(settings),
                    num_samples=settings.trials,
                    max_concurrent_trials=concurrent,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_NAME,
                    storage_path=os.fspath(out),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                    verbose=0,
                    callbacks=callbacks,
                ),
            )
        results = tuner.fit()
    return [_row_of(settings, r, i) for i, r in enumerate(_in_trial_order(results))]


def _searcher(settings: Settings):
    """Optuna through Ray Tune: TPE on the score alone, NSGA-II on score and latency."""
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created"

    if settings.objectives == ("score",):
        metric, mode = "objective_score", "max"
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, n_startup_trials=_startup(settings)
        )
    else:
        metric, mode = ["objective_score", "objective_latency_ms"], ["max", "min"]
        sampler = ResumableNSGAIISampler(
            seed=settings.seed, population_size=max(2, min(10, settings.trials // 2))
        )
    return OptunaSearch(
        space=settings.space.optuna(),
        metric=metric,
        mode=mode,
        sampler=sampler,
        seed=settings.seed,
        points_to_evaluate=[dict(p) for p in settings.start] or None,
    )


class ResumableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that Ray Tune can pickle into its experiment state (Optuna 5.1's keeps a
    threading lock, which cannot be pickled, so neither the Tuner nor --resume could)."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        import threading

        self.__dict__.update(state, _thread_lock=threading.Lock())


def _startup(settings: Settings) -> int:
    return max(2, min(10, settings.trials // 3))


def _in_trial_order(results) -> list:
    return sorted(results, key=lambda r: (r.path or "", r.metrics.get("trial_id", "")))


def _row_of(settings: Settings, result, index: int) -> Row:
    """A trial's row: what it reported, or a failed row with its error line."""
    row = dict.fromkeys(COLUMNS)
    row.update(_point_or_empty(settings.space, result.config))
    row.update(family=settings.family, device=settings.constraints.device, reasons=[])
    if result.metrics and "row" in result.metrics:
        row.update(json.loads(result.metrics["row"]))
    if result.error is not None and not row.get("error"):
        row["error"] = engine.failure_line(result.error)
    row["trial"] = index
    row["pareto"] = row["chosen"] = False
    return row


def _point_or_empty(space: Space, config: Mapping | None) -> dict:
    """The knobs of a trial's config; {} for a trial that failed before it had one."""
    try:
        return space.point(config or {})
    except (KeyError, ValueError):
        return {}


class _RowLog(Callback):
    """Each finished trial's row appended to DIR/trials.jsonl as it ends (what a user can
    follow while a search runs), and the progress bar."""

    def __init__(self, state: Path, space: Space, total: int, progress: bool):
        self.state, self.space, self.total, self.progress = state, space, total, progress
        self.bar = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks; a terminal is not picklable
        return {**self.__dict__, "bar": None}

    def setup(self, **info) -> None:
        from mobilecv.progress import Progress

        self.bar = Progress("trials", self.total, "trial", enabled=self.progress, per_update=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = json.loads(trial.last_result.get("row", "{}"))
        engine.append_row(self.state, trial.trial_id, row)
        self.bar.update(note=f"{_describe(row)} {row.get('verdict', '')}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = _trial_error(trial)
        knobs = _point_or_empty(self.space, trial.config)
        engine.append_row(self.state, trial.trial_id, {**knobs, "error": error})
        self.bar.update(note=f"failed: {error}")

    def on_experiment_end(self, trials, **info) -> None:
        self.bar.close()


def _trial_error(trial) -> str:
    """The failed trial's error line, from the pickle Tune has just written beside it
    (its copy in storage comes later)."""
    import ray.cloudpickle as cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return engine.failure_line(cloudpickle.load(f))
    except Exception:  # noqa: BLE001 - no pickle (the error was not picklable): say so
        return "the trial failed (see its error.txt under DIR/tune)"


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Ray Tune's own status tables and hints off: the progress bar and the rows say it."""
    import logging

    saved = {k: os.environ.get(k) for k in _TUNE_QUIET}
    os.environ.update(_TUNE_QUIET)
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)  # a failed trial's traceback: its row has the error
    try:
        yield
    finally:
        tune_log.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_TUNE_QUIET = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1e9",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",  # the experiment state on disk within a second: --resume loses little
}


# --------------------------------------------------------------------------- choosing


def feasible(row: Mapping) -> bool:
    return not row.get("error") and not row.get("constraints") and row.get("val_score") is not None


def mark_pareto(rows: list[Row], settings: Settings) -> list[int]:
    """Each row's `pareto` flag: on the (judged latency, validation score) frontier of the
    points that fit."""
    candidates = [i for i, r in enumerate(rows) if feasible(r)]
    better_high = all(_higher_is_better(rows[i]) for i in candidates)
    front = sweep.pareto_front(
        [rows[i] for i in candidates], "judged_latency_ms", "val_score", maximize_y=better_high
    )
    chosen = {candidates[k] for k in front}
    for i, row in enumerate(rows):
        row["pareto"] = i in chosen
    return sorted(chosen)


def choose(rows: Sequence[Row]) -> Row | None:
    """The point that fits with the best validation score (the lower latency on a tie)."""
    fits = [r for r in rows if feasible(r)]
    if not fits:
        return None
    sign = 1.0 if all(_higher_is_better(r) for r in fits) else -1.0
    return max(fits, key=lambda r: (sign * r["val_score"], -r["judged_latency_ms"]))


def retrain(
    settings: Settings,
    chosen: Mapping,
    out: Path,
    epochs: int,
    limit: int | None,
    progress: bool,
) -> dict:
    """The chosen point trained at full length, saved (.keras and int8 .tflite), scored
    once on the test split and judged on the device."""
    from mobilecv.modelio import save_model

    knobs = {k: chosen[k] for k in SEARCHED if chosen.get(k) is not None}
    task = {**_task(settings, knobs, out), "train_epochs": epochs, "train_limit": limit}
    task.update(test_samples=None, verify=True)  # the converter's own check, on a trained model
    start = time.perf_counter()
    model, final = sweep.build_point(task)
    model, trained = sweep.train_point(task, model, progress=progress)
    final.update(trained)
    save_model(model, out / BEST_KERAS, force=True)
    result, path = sweep.convert_point(task, model)
    os.replace(path, out / BEST_TFLITE)
    final.update(tflite=os.fspath(out / BEST_TFLITE), tflite_bytes=result.size)
    final["test_score"] = sweep.test_score(task, model, result, final)
    final.update(sweep.judge_point(task, out / BEST_TFLITE))
    final["constraints"] = settings.constraints.violations(final)
    final.update(knobs, epochs=epochs, train_limit=limit, seconds=time.perf_counter() - start)
    return final


# --------------------------------------------------------------------------- outputs


def write_outputs(report: Mapping, out: Path) -> dict[str, Path]:
    """DIR/search.csv (every trial), search.json (the report) and pareto.png, atomically."""
    from mobilecv.fileio import write_json, write_text

    rows = report["rows"]
    return {
        "csv": write_text(out / CSV_NAME, to_csv(rows), force=True),
        "json": write_json(out / JSON_NAME, report, force=True),
        "plot": plot(report, out / PLOT_NAME),
    }


def to_csv(rows: Sequence[Row]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, **{k: "; ".join(row.get(k) or []) for k in ("reasons", "constraints")}}
        )
    return buf.getvalue()


def plot(report: Mapping, path: Path) -> Path:
    """Validation score against judged device latency: points that do not fit in grey,
    the frontier of those that fit connected, the chosen point starred."""
    settings = report["settings"]
    constraints = settings["constraints"]
    rows = [
        {**r, "fits": not r.get("constraints") and not r.get("error")}
        for r in report["rows"]
        if r.get("judged_latency_ms") is not None
    ]
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")
    fitting = sum(r["fits"] for r in rows)
    return sweep.plot(
        rows,
        path,
        device=constraints["device"],
        x="judged_latency_ms",
        y="val_score",
        xlabel=f"latency on {constraints['device']} (ms; measured on the host, estimated elsewhere)",
        ylabel=f"validation {metric} after {settings['epochs_per_trial']} epoch(s)",
        title=f"{settings['family']}: {len(report['rows'])} trials, {fitting} fit "
        f"{constraints['device']}",
        chosen=next((r for r in rows if r.get("chosen")), None),
        force=True,
    )

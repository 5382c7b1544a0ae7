"""`mobilecv run`: execute a recipe step by step, resumably, and write report.md.

Each step records a hash of its resolved config and of its input files in
``DIR/run_state.json``; a step whose hash is unchanged and whose outputs exist is not
redone. A step that fails leaves the artefacts of earlier steps intact and the run
says which step failed (exit code 1).

The steps: pretrain (optional: the same network on other classes) -> build (seeded; the
pretrained trunk moves in by layer name) -> train (inside the `train.strategy`) ->
compare (optional: the same network from scratch) -> compress -> convert -> evaluate ->
bench -> report. With several workers only the chief runs every step and writes; see
`mobilecv.distribute`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilecv.distribute import Cluster, Message, Strategy, task_from_tf_config
from mobilecv.errors import InputError, RunFailed, one_line
from mobilecv.fileio import write_json, write_text
from mobilecv.recipe import QuantMode, Recipe, dump

STEPS = (
    "pretrain",
    "build",
    "train",
    "compare",
    "compress",
    "convert",
    "evaluate",
    "bench",
    "report",
)
STATE_FILE = "run_state.json"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StepRecord:
    hash: str
    outputs: list[str]
    seconds: float
    summary: dict = field(default_factory=dict)


class Run:
    """Book-keeping for one output folder: hashes, outputs and timings per step."""

    def __init__(self, recipe: Recipe, out_dir: Path, progress: bool = True):
        self.recipe = recipe
        self.out = out_dir
        self.progress = progress
        self.state: dict[str, StepRecord] = {}
        path = out_dir / STATE_FILE
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.state = {k: StepRecord(**v) for k, v in raw.items()}
            except (ValueError, TypeError):
                self.state = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def step_hash(self, name: str, config, inputs: list[Path]) -> str:
        digest = hashlib.sha256(name.encode())
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for path in inputs:
            digest.update(_file_hash(path).encode() if path.exists() else b"missing")
        return digest.hexdigest()

    def up_to_date(self, name: str, key: str) -> bool:
        record = self.state.get(name)
        return bool(
            record
            and record.hash == key
            and all((self.out / output).exists() for output in record.outputs)
        )

    def step(self, name: str, config, inputs: list[Path], fn: Callable[[], tuple[list[str], dict]]):
        key = self.step_hash(name, config, inputs)
        if self.up_to_date(name, key):
            self.skipped.append(name)
            _say(f"[{name}] up to date, skipped", self.progress)
            return self.state[name].summary
        _say(f"[{name}] running", self.progress)
        start = time.perf_counter()
        try:
            outputs, summary = fn()
        except InputError as exc:
            raise InputError(f"step '{name}' failed: {one_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - any other failure fails the step
            raise RunFailed(f"step '{name}' failed: {_failure_line(exc)}") from exc
        record = StepRecord(key, outputs, round(time.perf_counter() - start, 2), summary)
        self.state[name] = record
        self.ran.append(name)
        write_json(self.out / STATE_FILE, {k: asdict(v) for k, v in self.state.items()}, force=True)
        _say(f"[{name}] done in {record.seconds:.1f} s", self.progress)
        return summary


def _failure_line(exc: BaseException) -> str:
    """The cause of a failed step; one that is not a known kind of failure may be a bug,
    so its type is named (the chained traceback shows under `mobilecv --debug`)."""
    if isinstance(exc, RunFailed | OSError):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


@dataclass
class Pipeline:
    """What the steps of one run share. `out` is where this process writes: the output
    folder on the chief, a temporary folder on any other worker."""

    recipe: Recipe
    out: Path
    run: Run
    cluster: Cluster
    progress: bool
    cfg: dict
    current: Path  # the model file the next step starts from
    tflites: dict[QuantMode, Path] = field(default_factory=dict)
    in_training: bool = False  # between the chief's train decision and the step's end

    @property
    def members(self) -> list[Path]:
        """The trained model and the extra ensemble members."""
        count = max(1, self.recipe.evaluate.ensemble)
        return [
            self.out / ("trained.keras" if k == 0 else f"trained_{k}.keras") for k in range(count)
        ]


def run(
    recipe: Recipe, out_dir: str | os.PathLike, *, dry_run: bool = False, progress: bool = True
) -> dict:
    """Run every step of ``recipe`` into ``out_dir``; returns a summary dict.

    Under `train.strategy: multi_worker` only the chief writes into ``out_dir``; another
    worker builds its copy of the model in a temporary folder, takes part in training,
    waits for the chief to finish, removes the folder and returns.
    """
    out = Path(out_dir)
    if dry_run:
        return plan(recipe, out)
    validate(recipe)
    cluster = Cluster.start(recipe.train.strategy)  # before any other TensorFlow work
    work = out if cluster.is_chief else Path(tempfile.mkdtemp(prefix="mobilecv-worker-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        write_text(work / "recipe.resolved.yaml", dump(recipe), force=True)
        p = Pipeline(
            recipe, work, Run(recipe, work, progress), cluster, progress, recipe.to_dict(), work
        )
        if cluster.is_chief:
            _run_as_chief(p)
        else:
            _run_as_worker(p)
    finally:
        if not cluster.is_chief:
            shutil.rmtree(work, ignore_errors=True)
    return _summary(p, out)


def _run_as_chief(p: Pipeline) -> None:
    try:
        _chief_steps(p)
    except Exception:
        # Tell waiting workers, unless this failed amid training's collective operations.
        if p.cluster.multi_worker and not p.in_training:
            with contextlib.suppress(Exception):  # the failure above is the one to report
                p.cluster.sync(Message.FAILED)
        raise
    if p.cluster.multi_worker:
        p.cluster.sync(Message.DONE)


def _chief_steps(p: Pipeline) -> None:
    recipe = p.recipe
    if recipe.pretrain.epochs > 0:
        _pretrain_step(p)
    _build_step(p, transfer=recipe.pretrain.epochs > 0)
    if recipe.train.epochs > 0:
        _train_step(p)
    if recipe.pretrain.epochs > 0 and recipe.pretrain.compare_scratch:
        _compare_step(p)
    if _compresses(recipe):
        _compress_step(p)
    _convert_step(p)
    _evaluate_step(p)
    _bench_step(p)
    _report_step(p)


def _run_as_worker(p: Pipeline) -> None:
    """A non-chief: build the model (the chief's weights replace its own), join the train
    step if the chief runs it, then wait for the chief's last word."""
    _build_step(p, transfer=False)
    message = p.cluster.sync()
    if message is Message.TRAIN:
        _train_step(p)
        message = p.cluster.sync()
    elif message is Message.SKIP:
        message = p.cluster.sync()
    if message is Message.FAILED:
        raise RunFailed(f"{p.cluster.task.name}: the chief's run failed; see the chief's log")


def _summary(p: Pipeline, out: Path) -> dict:
    chief = p.cluster.is_chief
    steps = p.run.state
    return {
        "out": str(out) if chief else None,
        "task": p.cluster.task.name,
        "chief": chief,
        "ran": p.run.ran,
        "skipped": p.run.skipped,
        "report": str(out / "report.md") if chief else None,
        "seconds": {k: v.seconds for k, v in steps.items()},
        "train": steps["train"].summary if "train" in steps else None,
        "compare": steps["compare"].summary if "compare" in steps else None,
    }


def _compresses(recipe: Recipe) -> bool:
    c = recipe.compress
    return c.prune is not None or c.prune_2by4 or c.cluster is not None or c.qat


# --------------------------------------------------------------------------- helpers


def _model_knobs(recipe: Recipe, classes: int | None = None) -> dict:
    spec = recipe.model
    knobs = {
        "width": spec.width,
        "depth": spec.depth,
        "resolution": spec.resolution,
        "classes": classes if classes is not None else spec.classes,
        "input_channels": spec.input_channels,
        "input_range": spec.input_range,
        **spec.options,
    }
    return {k: v for k, v in knobs.items() if v is not None}


def _build_model(recipe: Recipe, classes: int | None = None, weights: str | None = None):
    """The recipe's network, freshly initialised from the recipe's seed."""
    import mobilecv
    from mobilecv.train import set_seed

    set_seed(recipe.seed)
    return mobilecv.build(recipe.model.name, weights=weights, **_model_knobs(recipe, classes))


def _freeze(value: str | None):
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


def _train_splits(recipe: Recipe):
    from mobilecv.train import load_splits

    data = recipe.data
    return load_splits(
        data.dataset,
        limit=data.limit,
        classes=data.classes,
        task=recipe_task(recipe),
        scenes=recipe.task.scenes or None,
    )


def _calibration(recipe: Recipe):
    """The dataset name, or the train images (of the selected classes, or the task's)."""
    if not recipe.data.classes and recipe_task(recipe).name == "classification":
        return recipe.data.dataset
    return _train_splits(recipe).train.x


def _primary(task_name: str) -> str:
    from mobilecv.tasks import get_task

    return get_task(task_name).primary_metric


def _plot_history(history: dict, path: Path, metric: str = "accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, name in zip(axes, ("loss", metric), strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "held-out")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _test_split(recipe: Recipe):
    """The test split (of the selected classes; the task's labels), never used for anything
    but this evaluation."""
    from mobilecv.data import Split
    from mobilecv.train import load_split

    return load_split(
        recipe.data.dataset,
        Split.TEST,
        recipe.evaluate.test_samples,
        recipe.data.classes,
        task=recipe_task(recipe),
        scenes=recipe.task.scenes or None,
    )


def _test_arrays(recipe: Recipe, model) -> tuple[np.ndarray, np.ndarray]:
    """The test split as `model` takes it: its size, channels and declared input range."""
    from mobilecv.data.datasets import model_inputs

    data = _test_split(recipe)
    return model_inputs(data.x, model), np.asarray(data.y)


def _keras_top1(model, x: np.ndarray, y: np.ndarray) -> float:
    from mobilecv.evaluate import top1

    return top1(_keras_outputs(model, x)["scores"], y)


def _keras_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs on `x` (batches of 256), by its task's output names."""
    from mobilecv.tasks.base import as_outputs
    from mobilecv.train import task_of

    names = task_of(model).outputs
    parts = [
        as_outputs(model(x[i : i + 256], training=False), names) for i in range(0, len(x), 256)
    ]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _load(path: Path):
    from mobilecv.converters.tflite import load_keras_model

    return load_keras_model(path)


def weights_digest(model) -> str:
    """SHA-256 of every weight in order: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _train_as_recipe(p: Pipeline, model, splits, epochs: int, **changes):
    """`train` with the recipe's training settings; `changes` replaces some (e.g. the
    pretrain stage's batch_size, learning_rate and augment) or adds freeze/cache options."""
    from mobilecv.data.augment import from_names
    from mobilecv.train import train

    t = p.recipe.train
    settings = {
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "augment": t.augment,
        "loss_options": t.loss_options or None,
        **changes,
    }
    settings["augment"] = from_names(list(settings["augment"]), splits.train.x)
    return train(
        model,
        splits,
        epochs,
        optimizer=t.optimizer.value,
        schedule=t.schedule.value,
        progress=p.progress,
        **settings,
    )


def _convert_one(model, mode: QuantMode, recipe: Recipe, calibration):
    """The convert step's conversion of one model (also used for ensemble members)."""
    from mobilecv.converters.tflite import convert

    # Float modes use the data only to verify the result on held-out rows.
    return convert(
        model,
        quantize=mode.value,
        calibration=calibration,
        samples=recipe.convert.calibration_samples,
        io=recipe.convert.io if mode is QuantMode.INT8 else None,
        progress=False,
    )


# --------------------------------------------------------------------------- steps


def _pretrain_step(p: Pipeline) -> None:
    """Train the same network on other classes (or data); its trunk seeds the model."""
    recipe, pre = p.recipe, p.recipe.pretrain
    dataset = pre.dataset or recipe.data.dataset

    def pretrain():
        from mobilecv.modelio import save_model
        from mobilecv.train import load_splits

        splits = load_splits(dataset, limit=pre.limit, classes=pre.classes)
        model, report = _train_as_recipe(
            p,
            _build_model(recipe, classes=splits.train.classes),
            splits,
            pre.epochs,
            batch_size=pre.batch_size,
            learning_rate=pre.learning_rate,
            augment=pre.augment,
        )
        save_model(model, p.out / "pretrained.keras", force=True)
        summary = {**report.to_dict(), "classes": list(pre.classes) or "all"}
        write_json(p.out / "pretrain.json", summary, force=True)
        keys = ("val_accuracy", "train_samples", "epochs", "seconds", "classes")
        return ["pretrained.keras", "pretrain.json"], {k: summary[k] for k in keys}

    t = p.cfg["train"]
    config = {
        "model": p.cfg["model"],
        "pretrain": p.cfg["pretrain"],
        "dataset": dataset,
        "train": {k: t[k] for k in ("optimizer", "schedule")},
        "seed": recipe.seed,
    }
    p.run.step("pretrain", config, [], pretrain)


def _build_step(p: Pipeline, transfer: bool) -> None:
    recipe = p.recipe
    pretrained = p.out / "pretrained.keras" if transfer else None

    def build():
        from mobilecv.modelio import save_model
        from mobilecv.train import transfer_trunk

        model = _build_model(recipe, weights=recipe.model.weights)
        summary = {"params": int(model.count_params())}
        if pretrained is not None:
            summary["transferred_layers"] = transfer_trunk(_load(pretrained), model)
        save_model(model, p.out / "model.keras", force=True)
        return ["model.keras"], summary

    config = {"model": p.cfg["model"], "seed": recipe.seed}
    p.run.step("build", config, [pretrained] if pretrained else [], build)
    p.current = p.out / "model.keras"


def _train_step(p: Pipeline) -> None:
    """Train the model (and any ensemble members) inside the run's strategy."""
    recipe = p.recipe
    config = [p.cfg["data"], p.cfg["task"], p.cfg["train"], len(p.members), recipe.seed]
    inputs = [p.current]
    if p.cluster.multi_worker and p.cluster.is_chief:
        p.in_training = True
        current = p.run.up_to_date("train", p.run.step_hash("train", config, inputs))
        p.cluster.sync(Message.SKIP if current else Message.TRAIN)
    p.run.step("train", config, inputs, lambda: _train_members(p))
    p.in_training = False
    p.current = p.members[0]


def _train_members(p: Pipeline) -> tuple[list[str], dict]:
    from mobilecv.modelio import save_model
    from mobilecv.train import set_seed

    recipe, t = p.recipe, p.recipe.train
    splits = _train_splits(recipe)
    summary = {}
    for k, path in enumerate(p.members):
        set_seed(recipe.seed + k)
        with p.cluster.scope():
            model = _load(p.current)
            p.cluster.broadcast_weights(model)
            model, report = _train_as_recipe(
                p,
                model,
                splits,
                t.epochs,
                freeze=_freeze(t.freeze),
                cache_features=t.cache_features,
                cache_dir=p.out / "features" if t.cache_features else None,
            )
        # Every worker saves (reading mirrored BatchNorm statistics is collective).
        digest = weights_digest(model)
        save_model(model, path, force=True)
        if k == 0:
            summary = {**report.to_dict(), "weights_sha256": digest}
            write_json(p.out / "train.json", summary, force=True)
            _plot_history(report.history, p.out / "training_curves.png", _primary(report.task))
    keys = ("val_accuracy", "val_metrics", "seconds", "epochs", "train_samples", "weights_sha256")
    outputs = [m.name for m in p.members] + ["train.json", "training_curves.png"]
    return outputs, {k: summary.get(k) for k in keys}


def _compare_step(p: Pipeline) -> None:
    """The same network trained from scratch on the same images with the same settings,
    against the transferred model, both on the test split (Keras float32)."""
    recipe, t = p.recipe, p.recipe.train
    trained = p.current

    def compare():
        from mobilecv.modelio import save_model

        splits = _train_splits(recipe)
        scratch, report = _train_as_recipe(p, _build_model(recipe), splits, t.epochs)
        save_model(scratch, p.out / "scratch.keras", force=True)
        transferred = _load(trained)
        x, y = _test_arrays(recipe, transferred)
        result = {
            "test_samples": int(len(y)),
            "train_samples": report.train_samples,
            "epochs": t.epochs,
            "pretrain_classes": list(recipe.pretrain.classes) or "all",
            "classes": list(recipe.data.classes) or "all",
            "transfer_top1": _keras_top1(transferred, x, y),
            "scratch_top1": _keras_top1(scratch, x, y),
            "scratch_val_accuracy": report.val_accuracy,
        }
        write_json(p.out / "compare.json", result, force=True)
        return ["scratch.keras", "compare.json"], result

    config = [p.cfg["model"], p.cfg["data"], p.cfg["train"], p.cfg["evaluate"], recipe.seed]
    p.run.step("compare", config, [trained], compare)


def _compress_step(p: Pipeline) -> None:
    recipe, c = p.recipe, p.recipe.compress
    compressed = p.out / "compressed" / ("model.h5" if c.qat else "model.keras")
    current = p.current

    def compress_step():
        from mobilecv.compress.pipeline import compress, save_outputs

        model, report = compress(
            _load(current),
            _train_splits(recipe),
            prune=c.prune,
            prune_2by4=c.prune_2by4,
            prune_policy=c.prune_policy.value,
            prune_allocation=c.prune_allocation.value,
            cluster=c.cluster,
            qat=c.qat,
            epochs=c.epochs,
            batch_size=recipe.train.batch_size,
            learning_rate=c.learning_rate,
            progress=p.progress,
        )
        summary = report.to_dict()
        # QAT models are an .h5 plus a sidecar that rebuilds them exactly.
        written = save_outputs(model, summary, p.out / "compressed", force=True)
        write_json(p.out / "compress.json", summary, force=True)
        files = [str(Path(f).relative_to(p.out)) for f in written.values()]
        return [*files, "compress.json"], summary

    config = [p.cfg["data"], p.cfg["task"], p.cfg["compress"]]
    p.run.step("compress", config, [current], compress_step)
    p.current = compressed


def _convert_step(p: Pipeline) -> None:
    recipe, current = p.recipe, p.current
    p.tflites = {mode: p.out / f"model_{mode.value}.tflite" for mode in recipe.convert.modes}

    def convert_step():
        model = _load(current)
        calibration = _calibration(recipe)
        outputs, rows = [], {}
        for mode, path in p.tflites.items():
            result = _convert_one(model, mode, recipe, calibration)
            result.save(path, force=True)
            outputs.append(path.name)
            if recipe.convert.c_array:
                outputs += [f.name for f in result.save(path, format="c", force=True)]
            rows[mode.value] = result.to_dict()
        write_json(p.out / "convert.json", rows, force=True)
        return outputs + ["convert.json"], rows

    config = [p.cfg["data"], p.cfg["task"], p.cfg["convert"]]
    p.run.step("convert", config, [current], convert_step)


def _evaluate_step(p: Pipeline) -> None:
    recipe, current = p.recipe, p.current
    members = p.members[1:] if recipe.train.epochs > 0 else []

    def evaluate_step():
        from mobilecv.data.datasets import model_inputs
        from mobilecv.evaluate import TfliteModel, test_time_techniques
        from mobilecv.train import task_of

        model = _load(current)
        task = task_of(model)
        data = _test_split(recipe)
        x, y = model_inputs(data.x, model), data.y
        outputs = {"keras float32": _keras_outputs(model, x)}
        for mode, path in p.tflites.items():
            outputs[f"tflite {mode.value}"] = TfliteModel(path).predict_outputs(x, task.outputs)
        rows = [
            {"model": name, **task.score(out, y), "bytes": _tflite_bytes(p, name)}
            for name, out in outputs.items()
        ]
        result = {
            "task": task.name,
            "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better,
            "test_samples": len(data),
            "provenance": data.provenance,
            "metrics": rows,
        }
        files = ["evaluate.json"]
        if task.name != "classification":
            last = f"tflite {recipe.convert.modes[-1].value}"
            task.draw(data, outputs[last], p.out / "predictions.png", title=last)
            files.append("predictions.png")
        if recipe.evaluate.multi_crop or members:
            # Ensemble members are converted exactly as the main model was.
            mode = recipe.convert.modes[-1]
            calibration = _calibration(recipe) if members else None
            extra = [
                TfliteModel(_convert_one(_load(m), mode, recipe, calibration).tflite)
                for m in members
            ]
            result["test_time_model"] = f"tflite {mode.value}"
            result["test_time"] = test_time_techniques(
                [TfliteModel(p.tflites[mode]), *extra], x, y, recipe.evaluate.multi_crop
            )
        write_json(p.out / "evaluate.json", result, force=True)
        return files, result

    inputs = [current, *p.tflites.values(), *members]
    p.run.step(
        "evaluate",
        [p.cfg["data"], p.cfg["task"], p.cfg["evaluate"], p.cfg["convert"]],
        inputs,
        evaluate_step,
    )


def _tflite_bytes(p: Pipeline, name: str) -> int | None:
    mode = name.removeprefix("tflite ")
    path = next((path for m, path in p.tflites.items() if m.value == mode), None)
    return path.stat().st_size if path is not None and name.startswith("tflite ") else None


def _bench_step(p: Pipeline) -> None:
    recipe = p.recipe

    def bench_step():
        from mobilecv.bench import run as bench_run
        from mobilecv.bench.report import plots

        outputs, results = [], []
        for device in recipe.devices:
            mode = device.mode or recipe.convert.modes[-1]
            path = p.tflites.get(mode)
            if path is None:
                raise InputError(
                    f"device {device.name} asks for mode {mode.value}, which convert.modes lacks"
                )
            result = bench_run(str(path), device=device.name, max_latency_ms=device.max_latency_ms)
            name = f"bench_{device.name}.json"
            write_json(p.out / name, result, force=True)
            images = plots(result, p.out, f"bench_{device.name}", force=True)
            outputs += [name, *[Path(i).name for i in images]]
            results.append({**result, "images": [Path(i).name for i in images]})
        return outputs, {"results": results}

    p.run.step("bench", p.cfg["devices"], list(p.tflites.values()), bench_step)


def _report_step(p: Pipeline) -> None:
    def report_step():
        from mobilecv.run_report import write_report

        path = write_report(p.out, p.recipe, p.run.state)
        return [path.name], {}

    names = ("pretrain.json", "train.json", "compare.json", "evaluate.json", "convert.json")
    inputs = [p.out / n for n in names if (p.out / n).exists()]
    inputs += [p.out / f"bench_{d.name}.json" for d in p.recipe.devices]
    p.run.step("report", p.cfg, inputs, report_step)


# --------------------------------------------------------------------------- checks


def validate(recipe: Recipe) -> None:
    """Check everything that can be checked without building or training (nor starting
    TensorFlow: a multi-worker strategy must be the first TensorFlow work of a run)."""
    from mobilecv.bench import devices as bench_devices
    from mobilecv.data.datasets import resolve_name
    from mobilecv.registry import resolve

    resolve(recipe.model.name, **_model_knobs(recipe))
    task = recipe_task(recipe)
    if task.name == "classification":
        resolve_name(recipe.data.dataset)
    _validate_task(recipe, task)
    for device in recipe.devices:
        bench_devices.get(device.name, calibrate=False)
    if recipe.compress.qat and any(
        m not in (QuantMode.INT8, QuantMode.NONE) for m in recipe.convert.modes
    ):
        raise InputError("a QAT model converts only to int8 (or none); fix convert.modes")
    _validate_training(recipe)
    _validate_classes(recipe)
    _validate_pretrain(recipe)


def recipe_task(recipe: Recipe):
    """The task of the recipe's model; a recipe that names one must name that one."""
    from mobilecv.registry import get
    from mobilecv.tasks import get_task

    task = get_task(get(recipe.model.name).task)
    if recipe.task.name is not None and get_task(recipe.task.name) is not task:
        raise InputError(
            f"task.name is {recipe.task.name!r} but {recipe.model.name} gives {task.name}; "
            "choose a model of that task (see `mobilecv list`) or drop task.name"
        )
    return task


def _validate_task(recipe: Recipe, task) -> None:
    """Options of one task that another cannot honour fail here, naming the key."""
    try:
        task.loss_options(recipe.train.loss_options)
    except InputError as exc:
        raise InputError(f"train.loss_options: {exc}") from None
    if task.name == "classification":
        if recipe.task.scenes:
            raise InputError("task.scenes: scenes are for tasks beyond classification")
        return
    if recipe.data.dataset not in task.sources:
        names = " or ".join(repr(s) for s in task.sources)
        raise InputError(
            f"data.dataset: {task.name} trains on {names}, not {recipe.data.dataset!r}"
        )
    unsupported = {
        "data.classes": recipe.data.classes,
        "pretrain.epochs": recipe.pretrain.epochs,
        "train.cache_features": recipe.train.cache_features,
        "evaluate.multi_crop": recipe.evaluate.multi_crop and "multi_crop" not in task.test_time,
        "evaluate.ensemble": recipe.evaluate.ensemble > 1 and "ensemble" not in task.test_time,
    }
    for key, value in unsupported.items():
        if value:
            raise InputError(f"{key}: not available for {task.name}")
    from mobilecv.data.scenes import SceneConfig
    from mobilecv.tasks.base import scene_config

    scene_config(SceneConfig(), recipe.task.scenes)  # unknown keys and bad values fail now


def _validate_training(recipe: Recipe) -> None:
    t, e = recipe.train, recipe.evaluate
    if t.cache_features and t.augment:
        raise InputError("train.cache_features cannot be combined with train.augment")
    if t.strategy is Strategy.MULTI_WORKER:
        task_from_tf_config(os.environ.get("TF_CONFIG"))
        if t.epochs < 1:
            raise InputError("train.strategy multi_worker distributes training: set train.epochs")
        if t.cache_features:
            raise InputError(
                "train.cache_features does not run under train.strategy multi_worker "
                "(the cached head trains on one machine): use default or mirrored"
            )
    if e.ensemble < 1:
        raise InputError(f"evaluate.ensemble: must be >= 1, got {e.ensemble}")
    if e.ensemble > 1 and t.epochs < 1:
        raise InputError("evaluate.ensemble averages trained members: set train.epochs")
    if e.ensemble > 1 and _compresses(recipe):
        raise InputError(
            "evaluate.ensemble with compress: the members would not be compressed like the "
            "main model; drop one of them"
        )


def _validate_classes(recipe: Recipe) -> None:
    classes = recipe.data.classes
    if not classes:
        return
    if len(set(classes)) != len(classes) or min(classes) < 0:
        raise InputError(f"data.classes {list(classes)}: distinct class numbers >= 0 expected")
    if recipe.model.classes != len(classes):
        raise InputError(
            f"data.classes keeps {len(classes)} classes but model.classes is "
            f"{recipe.model.classes}; set model.classes: {len(classes)}"
        )


def _validate_pretrain(recipe: Recipe) -> None:
    from mobilecv.data.datasets import resolve_name

    pre = recipe.pretrain
    if pre.epochs < 0:
        raise InputError(f"pretrain.epochs: must be >= 0, got {pre.epochs}")
    if pre.epochs == 0:
        unused = [k for k in ("dataset", "classes", "limit", "augment") if getattr(pre, k)]
        if unused:
            raise InputError(
                f"pretrain.{unused[0]} is set but pretrain.epochs is 0, so nothing is pretrained"
            )
        return
    for where, value, low in (("batch_size", pre.batch_size, 1), ("limit", pre.limit, 1)):
        if value is not None and value < low:
            raise InputError(f"pretrain.{where}: must be >= {low}, got {value}")
    if pre.learning_rate <= 0:
        raise InputError(f"pretrain.learning_rate: must be > 0, got {pre.learning_rate}")
    if len(set(pre.classes)) != len(pre.classes) or min(pre.classes, default=0) < 0:
        raise InputError(f"pretrain.classes {list(pre.classes)}: distinct numbers >= 0 expected")
    if recipe.model.weights:
        raise InputError("pretrain trains the trunk itself; it cannot start from model.weights")
    if pre.dataset:
        resolve_name(pre.dataset)
    if pre.compare_scratch and recipe.train.epochs < 1:
        raise InputError("pretrain.compare_scratch compares trained models: set train.epochs")


def plan(recipe: Recipe, out: Path) -> dict:
    """--dry-run: validate and list the steps that would run."""
    validate(recipe)
    pre = recipe.pretrain.epochs > 0
    runs = {
        "pretrain": pre,
        "build": True,
        "train": recipe.train.epochs > 0,
        "compare": pre and recipe.pretrain.compare_scratch,
        "compress": bool(_compresses(recipe)),
        "convert": True,
        "evaluate": True,
        "bench": bool(recipe.devices),
        "report": True,
    }
    state = Run(recipe, out, progress=False).state if out.exists() else {}
    return {
        "recipe": recipe.name,
        "out": str(out),
        "steps": [{"step": s, "runs": runs[s], "recorded": s in state} for s in STEPS],
        "resolved": recipe.to_dict(),
    }

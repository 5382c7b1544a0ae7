"""`mobilecv run`: execute a recipe step by step, resumably, and write report.md.

Each step records a hash of its resolved config and of its input files in
``DIR/run_state.json``; a step whose hash is unchanged and whose outputs exist is not
redone. A step that fails leaves the artefacts of earlier steps intact and the run
says which step failed (exit code 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError, RunFailed
from mobilecv.fileio import write_json, write_text
from mobilecv.recipe import QuantMode, Recipe, Strategy, dump

STEPS = ("build", "train", "compress", "convert", "evaluate", "bench", "report")
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
        except (InputError, FileNotFoundError, KeyError, ValueError) as exc:
            raise InputError(f"step '{name}' failed: {_first_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - any failure becomes a failed step
            raise RunFailed(f"step '{name}' failed: {_first_line(exc)}") from exc
        record = StepRecord(key, outputs, round(time.perf_counter() - start, 2), summary)
        self.state[name] = record
        self.ran.append(name)
        write_json(self.out / STATE_FILE, {k: asdict(v) for k, v in self.state.items()}, force=True)
        _say(f"[{name}] done in {record.seconds:.1f} s", self.progress)
        return summary


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- steps


def strategy_for(kind: Strategy):
    """tf.distribute strategy for the recipe's `train.strategy`."""
    from mobilecv._tf import tf

    T = tf()
    if kind is Strategy.DEFAULT:
        return T.distribute.get_strategy()
    if kind is Strategy.MIRRORED:
        devices = [d.name for d in T.config.list_logical_devices("GPU")] or [
            d.name for d in T.config.list_logical_devices("CPU")
        ]
        return T.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise InputError("train.strategy multi_worker needs TF_CONFIG describing the cluster")
    return T.distribute.MultiWorkerMirroredStrategy()


def _model_knobs(recipe: Recipe) -> dict:
    spec = recipe.model
    knobs = {
        "width": spec.width,
        "depth": spec.depth,
        "resolution": spec.resolution,
        "classes": spec.classes,
        "input_channels": spec.input_channels,
        "input_range": spec.input_range,
        **spec.options,
    }
    return {k: v for k, v in knobs.items() if v is not None}


def _freeze(value: str | None):
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "held-out")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _test_arrays(recipe: Recipe, model) -> tuple[np.ndarray, np.ndarray]:
    """The test split as `model` takes it (its size, channels and declared input range)."""
    from mobilecv.data import Split, load_arrays
    from mobilecv.data.datasets import model_inputs

    data = load_arrays(recipe.data.dataset, Split.TEST, limit=recipe.evaluate.test_samples)
    return model_inputs(data.x, model), np.asarray(data.y)


def _load(path: Path):
    from mobilecv.converters.tflite import load_keras_model

    return load_keras_model(path)


def run(
    recipe: Recipe, out_dir: str | os.PathLike, *, dry_run: bool = False, progress: bool = True
) -> dict:
    """Run every step of ``recipe`` into ``out_dir``; returns a summary dict."""
    out = Path(out_dir)
    if dry_run:
        return plan(recipe, out)
    validate(recipe)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "recipe.resolved.yaml", dump(recipe), force=True)
    r = Run(recipe, out, progress)
    cfg = recipe.to_dict()
    np.random.seed(recipe.seed)

    def build():
        import mobilecv
        from mobilecv.modelio import save_model

        model = mobilecv.build(
            recipe.model.name, weights=recipe.model.weights, **_model_knobs(recipe)
        )
        save_model(model, out / "model.keras", force=True)
        return ["model.keras"], {"params": int(model.count_params())}

    r.step("build", cfg["model"], [], build)
    current = out / "model.keras"

    members = max(1, recipe.evaluate.ensemble)
    if recipe.train.epochs > 0:
        trained = [
            out / ("trained.keras" if k == 0 else f"trained_{k}.keras") for k in range(members)
        ]

        def train_step():
            from mobilecv._tf import tf
            from mobilecv.data.augment import from_names
            from mobilecv.modelio import save_model
            from mobilecv.train import train

            summary = {}
            for k, path in enumerate(trained):
                tf().keras.utils.set_random_seed(recipe.seed + k)
                strategy = strategy_for(recipe.train.strategy)
                with strategy.scope():
                    model = _load(current)
                    model, report = train(
                        model,
                        recipe.data.dataset,
                        recipe.train.epochs,
                        batch_size=recipe.train.batch_size,
                        learning_rate=recipe.train.learning_rate,
                        optimizer=recipe.train.optimizer.value,
                        schedule=recipe.train.schedule.value,
                        freeze=_freeze(recipe.train.freeze),
                        cache_features=recipe.train.cache_features,
                        cache_dir=out / "features",
                        augment=from_names(list(recipe.train.augment)),
                        limit=recipe.data.limit,
                        progress=progress,
                    )
                save_model(model, path, force=True)
                if k == 0:
                    summary = report.to_dict()
                    write_json(out / "train.json", summary, force=True)
                    _plot_history(report.history, out / "training_curves.png")
            return [p.name for p in trained] + ["train.json", "training_curves.png"], {
                "val_accuracy": summary.get("val_accuracy"),
                "seconds": summary.get("seconds"),
                "epochs": recipe.train.epochs,
                "train_samples": summary.get("train_samples"),
            }

        r.step("train", [cfg["data"], cfg["train"], members], [current], train_step)
        current = trained[0]

    c = recipe.compress
    if c.prune is not None or c.prune_2by4 or c.cluster is not None or c.qat:
        compressed = out / "compressed" / ("model.h5" if c.qat else "model.keras")

        def compress_step():
            from mobilecv.compress.pipeline import compress, save_outputs

            model, report = compress(
                _load(current),
                recipe.data.dataset,
                prune=c.prune,
                prune_2by4=c.prune_2by4,
                prune_policy=c.prune_policy.value,
                prune_allocation=c.prune_allocation.value,
                cluster=c.cluster,
                qat=c.qat,
                epochs=c.epochs,
                batch_size=recipe.train.batch_size,
                learning_rate=c.learning_rate,
                limit=recipe.data.limit,
                progress=progress,
            )
            summary = report.to_dict()
            # QAT models are an .h5 plus a sidecar that rebuilds them exactly.
            written = save_outputs(model, summary, out / "compressed", force=True)
            write_json(out / "compress.json", summary, force=True)
            files = [str(Path(p).relative_to(out)) for p in written.values()]
            return [*files, "compress.json"], summary

        r.step("compress", [cfg["data"], cfg["compress"]], [current], compress_step)
        current = compressed

    tflites = {mode: out / f"model_{mode.value}.tflite" for mode in recipe.convert.modes}

    def convert_step():
        from mobilecv.converters.tflite import convert

        model = _load(current)
        outputs, rows = [], {}
        for mode, path in tflites.items():
            # Float modes use the data only to verify the result on held-out rows.
            result = convert(
                model,
                quantize=mode.value,
                calibration=recipe.data.dataset,
                samples=recipe.convert.calibration_samples,
                io=recipe.convert.io if mode is QuantMode.INT8 else None,
                progress=False,
            )
            result.save(path, force=True)
            outputs.append(path.name)
            if recipe.convert.c_array:
                outputs += [p.name for p in result.save(path, format="c", force=True)]
            rows[mode.value] = result.to_dict()
        write_json(out / "convert.json", rows, force=True)
        return outputs + ["convert.json"], rows

    r.step("convert", [cfg["data"], cfg["convert"]], [current], convert_step)

    def evaluate_step():
        from mobilecv.evaluate import TfliteModel, test_time_techniques, top1

        model = _load(current)
        x, y = _test_arrays(recipe, model)
        keras_probs = np.concatenate(
            [np.asarray(model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)]
        )
        rows = [{"model": "keras float32", "accuracy": top1(keras_probs, y), "bytes": None}]
        for mode, path in tflites.items():
            acc = top1(TfliteModel(path).predict(x), y)
            rows.append(
                {"model": f"tflite {mode.value}", "accuracy": acc, "bytes": path.stat().st_size}
            )
        result = {"test_samples": int(len(y)), "accuracy": rows}
        if recipe.evaluate.multi_crop or members > 1:
            from mobilecv.converters.tflite import convert

            main = TfliteModel(tflites[recipe.convert.modes[-1]])
            extra = [
                TfliteModel(
                    convert(_load(out / f"trained_{k}.keras"), verify=False, progress=False).tflite
                )
                for k in range(1, members)
            ]
            result["test_time"] = test_time_techniques(
                [main, *extra], x, y, recipe.evaluate.multi_crop
            )
        write_json(out / "evaluate.json", result, force=True)
        return ["evaluate.json"], result

    inputs = [current, *tflites.values()]
    r.step("evaluate", [cfg["data"], cfg["evaluate"]], inputs, evaluate_step)

    def bench_step():
        from mobilecv.bench import run as bench_run
        from mobilecv.bench.report import plots

        outputs, results = [], []
        for device in recipe.devices:
            mode = device.mode or recipe.convert.modes[-1]
            path = tflites.get(mode)
            if path is None:
                raise InputError(
                    f"device {device.name} asks for mode {mode.value}, which convert.modes lacks"
                )
            result = bench_run(str(path), device=device.name, max_latency_ms=device.max_latency_ms)
            name = f"bench_{device.name}.json"
            write_json(out / name, result, force=True)
            images = plots(result, out, f"bench_{device.name}", force=True)
            outputs += [name, *[Path(i).name for i in images]]
            results.append({**result, "images": [Path(i).name for i in images]})
        return outputs, {"results": results}

    r.step("bench", cfg["devices"], list(tflites.values()), bench_step)

    def report_step():
        from mobilecv.run_report import write_report

        path = write_report(out, recipe, r.state)
        return [path.name], {}

    r.step(
        "report",
        cfg,
        [out / n for n in ("evaluate.json", "convert.json") if (out / n).exists()]
        + [out / f"bench_{d.name}.json" for d in recipe.devices],
        report_step,
    )
    return {
        "out": str(out),
        "ran": r.ran,
        "skipped": r.skipped,
        "report": str(out / "report.md"),
        "seconds": {k: v.seconds for k, v in r.state.items()},
    }


def validate(recipe: Recipe) -> None:
    """Check everything that can be checked without building or training."""
    from mobilecv.bench import devices as bench_devices
    from mobilecv.data.datasets import resolve_name
    from mobilecv.registry import resolve

    resolve(recipe.model.name, **_model_knobs(recipe))
    resolve_name(recipe.data.dataset)
    for device in recipe.devices:
        bench_devices.get(device.name, calibrate=False)
    if recipe.compress.qat and any(
        m not in (QuantMode.INT8, QuantMode.NONE) for m in recipe.convert.modes
    ):
        raise InputError("a QAT model converts only to int8 (or none); fix convert.modes")
    if recipe.train.cache_features and recipe.train.augment:
        raise InputError("train.cache_features cannot be combined with train.augment")


def plan(recipe: Recipe, out: Path) -> dict:
    """--dry-run: validate and list the steps that would run."""
    validate(recipe)
    c = recipe.compress
    steps = [
        ("build", True),
        ("train", recipe.train.epochs > 0),
        ("compress", c.prune is not None or c.prune_2by4 or c.cluster is not None or c.qat),
        ("convert", True),
        ("evaluate", True),
        ("bench", bool(recipe.devices)),
        ("report", True),
    ]
    state = Run(recipe, out, progress=False).state if out.exists() else {}
    return {
        "recipe": recipe.name,
        "out": str(out),
        "steps": [{"step": s, "runs": on, "recorded": s in state} for s, on in steps],
        "resolved": recipe.to_dict(),
    }

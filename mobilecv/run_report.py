"""report.md for a `mobilecv run` folder: readable by someone who did not run the job."""

from __future__ import annotations

import json
from pathlib import Path

from mobilecv.fileio import write_text
from mobilecv.recipe import Recipe


def _read(out: Path, name: str):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


def _kib(n) -> str:
    return "—" if n is None else f"{n / 1024:,.1f} KiB"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _ms(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _transfer_section(out: Path) -> list[str]:
    pretrain = _read(out, "pretrain.json")
    if not pretrain:
        return []
    classes = pretrain["classes"]
    lines = [
        "## Transfer learning",
        "",
        f"Pretraining: the same network on {pretrain['train_samples']:,} images of "
        f"`{pretrain['dataset']}` (classes {classes}), {pretrain['epochs']} epochs, held-out "
        f"accuracy {_pct(pretrain.get('val_accuracy'))}. Its trunk (every layer before the "
        "head) moved into the model by layer name; the head is new.",
        "",
    ]
    compare = _read(out, "compare.json")
    if compare:
        transfer, scratch = compare["transfer_top1"], compare["scratch_top1"]
        verdict = "transfer wins" if transfer > scratch else "transfer does NOT win"
        lines += [
            f"Top-1 on {compare['test_samples']:,} test images of classes {compare['classes']}, "
            f"both trained on the same {compare['train_samples']:,} images for "
            f"{compare['epochs']} epochs ({verdict}, {100 * (transfer - scratch):+.2f} pt):",
            "",
            "| model | top-1 (Keras float32) |",
            "|---|---:|",
            f"| pretrained trunk, new head | {_pct(transfer)} |",
            f"| same network from scratch | {_pct(scratch)} |",
            "",
        ]
    return lines


# Figures of a metrics row that are counts, not scores.
_COUNTS = ("present_objects", "objects", "samples")


def _figure(name: str, value) -> str:
    """A score as a percentage, except errors (NME, point error: fractions; count error:
    objects a scene), which are plain numbers."""
    if value is None:
        return "—"
    return f"{value:.4f}" if name in ("nme", "point_error", "count_error") else _pct(value)


def _training_section(out: Path) -> list[str]:
    train = _read(out, "train.json")
    if not train:
        return []
    figures = (
        ", ".join(
            f"{k} {_figure(k, v)}"
            for k, v in (train.get("val_metrics") or {}).items()
            if k not in _COUNTS
        )
        or f"accuracy {_pct(train.get('val_accuracy'))}"
    )
    source = f" ({train['provenance']})" if train.get("provenance") else ""
    return [
        "## Training",
        "",
        f"{train['epochs']} epochs on {train['train_samples']:,} training images{source}, "
        f"held-out validation on {train['val_samples']:,} images carved from the training "
        f"split: {figures}; {train['seconds']:.0f} s.",
        "",
        "![training curves](training_curves.png)",
        "",
    ]


def _evaluation_section(out: Path) -> list[str]:
    evaluation = _read(out, "evaluate.json")
    if not evaluation:
        return []
    convert = _read(out, "convert.json") or {}
    task = evaluation.get("task", "classification")
    metric = evaluation.get("primary_metric", "accuracy")
    rows = evaluation["metrics"]
    others = [k for k in rows[0] if k not in ("model", "bytes", metric, *_COUNTS)]
    source = f" ({evaluation['provenance']})" if evaluation.get("provenance") else ""
    lines = [
        "## Test metrics and size",
        "",
        f"Task {task}: {metric} on {evaluation['test_samples']:,} images of the test "
        f"split{source}, never used for training, calibration or tuning. Agreement is the "
        "converter's check of the .tflite against the Keras model on held-out inputs, in "
        "LiteRT, by the task's figure.",
        "",
        f"| model | {metric} | vs float | "
        + "".join(f"{k} | " for k in others)
        + "size | agreement with Keras | file |",
        "|---|---:|---:|" + "---:|" * len(others) + "---:|---:|---|",
    ]
    base = rows[0][metric]
    for row in rows:
        mode = row["model"].replace("tflite ", "")
        agreement = ((convert.get(mode) or {}).get("verification") or {}).get("agreement") or {}
        agreed = ", ".join(f"{k} {_figure(k, v)}" for k, v in agreement.items()) or "—"
        file = f"[model_{mode}.tflite](model_{mode}.tflite)" if row["bytes"] else "model (Keras)"
        delta = row[metric] - base
        shown = f"{delta:+.4f}" if metric == "nme" else f"{100 * delta:+.2f} pt"
        lines.append(
            f"| {row['model']} | {_figure(metric, row[metric])} | {shown} | "
            + "".join(f"{_figure(k, row.get(k))} | " for k in others)
            + f"{_kib(row['bytes'])} | {agreed} | {file} |"
        )
    lines.append("")
    if (out / "predictions.png").exists():
        lines += ["![predictions on test scenes](predictions.png)", ""]
    lines += _test_time_lines(evaluation)
    notes = [n for conv in convert.values() for n in conv.get("notes", [])]
    if notes:
        lines += ["Converter notes:", "", *[f"- {n}" for n in notes], ""]
    return lines


def _test_time_lines(evaluation: dict) -> list[str]:
    if not evaluation.get("test_time"):
        return []
    representation = evaluation.get("test_time_model", "tflite")
    lines = [
        f"### Test-time techniques ({representation})",
        "",
        f"Every model here runs as {representation}: ensemble members are converted "
        "with the main model's mode and settings.",
        "",
        "| technique | top-1 | ms per image | cost vs single crop |",
        "|---|---:|---:|---:|",
    ]
    for row in evaluation["test_time"]:
        lines.append(
            f"| {row['technique']} | {_pct(row['accuracy'])} | {row['ms_per_image']:.3f} | "
            f"{row['cost_vs_single']:.1f}x |"
        )
    return [*lines, ""]


def write_report(out: Path, recipe: Recipe, state: dict) -> Path:
    lines = [f"# {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    m = recipe.model
    lines += [
        f"Model `{m.name}` (width {m.width or 'default'}, depth {m.depth or 'default'}, "
        f"resolution {m.resolution or 'default'}, {m.input_channels or 3} input channel(s), "
        f"{m.classes or 'default'} classes), data `{recipe.data.dataset}`. "
        "The resolved recipe is [recipe.resolved.yaml](recipe.resolved.yaml); "
        "rerunning `mobilecv run recipe.resolved.yaml -o THIS_FOLDER` redoes only what changed.",
        "",
    ]
    lines += _transfer_section(out)
    lines += _training_section(out)
    compress = _read(out, "compress.json")
    if compress:
        lines += ["## Compression", "", "```json", json.dumps(compress, indent=1)[:4000], "```", ""]
    lines += _evaluation_section(out)
    c_files = sorted(p.name for p in out.glob("model_*.cc"))
    if c_files:
        lines += [
            "C arrays for TFLite Micro: "
            + ", ".join(f"[{n}]({n}) / [{n[:-3]}.h]({n[:-3]}.h)" for n in c_files),
            "",
        ]
    bench = [(d.name, _read(out, f"bench_{d.name}.json")) for d in recipe.devices]
    if any(result for _, result in bench):
        lines += [
            "## Devices",
            "",
            "| device | model | verdict | latency ms (p50) | estimated ms | arena / activations | flash | measured |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for name, result in bench:
            if not result:
                continue
            est = result.get("estimate") or {}
            lat = (result.get("latency_ms") or {}).get("p50")
            arena = (
                result.get("arena_bytes")
                or est.get("arena_bytes")
                or est.get("peak_activation_bytes")
            )
            lines.append(
                f"| {name} | {Path(result['model']).name} | **{result['verdict']}** | {_ms(lat)} | "
                f"{_ms(est.get('latency_ms'))} | {_kib(arena)} | {_kib(est.get('flash_bytes'))} | "
                f"{', '.join(result.get('measured') or []) or 'estimated only'} |"
            )
        lines.append("")
        for name, result in bench:
            if result and result.get("reasons"):
                lines += [f"- {name}: " + "; ".join(result["reasons"])]
        lines.append("")
        for name, _ in bench:
            for image in sorted(out.glob(f"bench_{name}*.png")):
                lines.append(f"![{image.stem}]({image.name})")
        lines.append("")
    timings = ", ".join(f"{k} {v.seconds:.0f} s" for k, v in state.items())
    lines += ["## Steps", "", f"Time per step: {timings}.", ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n", force=True)
    return path

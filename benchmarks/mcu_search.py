"""MCUNet's experiment at our scale (issue 17, section 4): under one microcontroller's
budget, does a search over width, depth and resolution beat the best plain width-scaled
MobileNetV2?

Lin et al., "MCUNet: Tiny Deep Learning on IoT Devices", NeurIPS 2020, report 61.8%
ImageNet top-1 under 320 KB SRAM and 1 MB flash on an STM32F746, against 49.0% for a
scaled MobileNetV2 under the same budget. Here: Fashion-MNIST, full int8, the stm32f746
profile (320 KB SRAM, 1 MB flash) with the real TFLite Micro arena counted.

- (b) the baseline: plain MobileNetV2 (depth 1) over a width x resolution grid that
  reaches past the budget on both axes (0.5 never fits 1 MB of flash; at 0.45 the arena
  is 279 KB at 112 px and more than 320 KB at 128), so its choice is the best
  width-scaled MobileNetV2 that fits at its best fitting resolution; every point is
  judged on the device untrained and each one that fits is trained the same short
  budget and scored on the validation split.
- (a) `mobilecv search` (mobilecv.search): TPE over width, depth and resolution (and
  the channel divisor, where the family takes one) under the same constraints and the
  same short training. A trial that does not fit is judged untrained and costs only a
  conversion, not training; the table's fit/trials column says how many points each
  side trained.
- Each side's choice (best validation top-1 among the points that fit) is retrained at
  the same full length, converted to int8 and scored once on the test split.

Usage:
    python benchmarks/mcu_search.py [--quick] [--json] [--out DIR] [--no-readme]
        [--render JSON] [--work DIR]

Writes DIR/mcu_search[_quick].json and .md and mcu_search[_quick]_pareto.png
atomically, and rewrites the README section between `<!-- mcu_search:begin -->` and
`<!-- mcu_search:end -->` (not for --quick).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from _support import common

PACKAGES = ("tensorflow", "tf_keras", "ai-edge-litert", "tflite-micro", "ray", "optuna")
DEVICE = "stm32f746"
FAMILY = "mobilenet_v2"
MIN_GAIN_POINTS = 1.0  # the target: (a) beats (b) by at least this
FULL = {
    "widths": "0.25,0.35,0.45,0.5",
    "resolutions": "32,48,64,80,96,112,128",
    "search_trials": 27,
    "epochs_per_trial": 2,
    "train_limit": 3000,
    "final_epochs": 3,
    "final_limit": 15000,
}
QUICK = {
    "widths": "0.25,0.35",
    "resolutions": "32,48",
    "search_trials": 6,
    "epochs_per_trial": 1,
    "train_limit": 500,
    "final_epochs": 1,
    "final_limit": 1000,
}
SEARCH_SPACE = {"widths": "0.2:0.75", "depths": "0.3:1.0", "resolutions": "32:128"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 15 minutes, to check the script")
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                       help=f"default {value}")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="keep both searches' folders here")
    common.add_output_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------ the two sides


def baseline_settings(args):
    """(b): the width x resolution grid of plain MobileNetV2, each point a start point."""
    from mobilecv import sweep

    widths = sweep.parse_list(args.widths, float, "widths")
    resolutions = sweep.parse_list(args.resolutions, int, "resolutions")
    grid = tuple({"width": w, "depth": 1.0, "resolution": r} for w in widths for r in resolutions)
    settings = _settings(
        args,
        widths=f"{min(widths)}:{max(widths)}",
        depths="1:1",
        resolutions=f"{min(resolutions)}:{max(resolutions)}",
        resolution_step=_step(resolutions),
    )
    return replace(settings, trials=len(grid), start=grid)


def search_settings(args, trials: int):
    """(a): TPE over width, depth and resolution (and divisor, if the family has it)."""
    return replace(_settings(args, **search_space()), trials=trials)


def search_space() -> dict:
    from mobilecv.registry import get

    divisors = {"divisors": "8,16,32"} if "divisor" in get(FAMILY).options() else {}
    return {**SEARCH_SPACE, **divisors}


def _settings(args, **space):
    from mobilecv import search

    return search.settings_from_options(
        FAMILY, device=DEVICE, dataset="fashion_mnist", objectives="score",
        epochs_per_trial=args.epochs_per_trial, train_limit=args.train_limit, seed=args.seed,
        **space,
    )  # fmt: skip


def _step(resolutions) -> int:
    import math

    low = min(resolutions)
    return math.gcd(*(r - low for r in resolutions)) or 8


def run_side(name: str, settings, args, work: Path) -> dict:
    from mobilecv import search

    common.log(f"== {name}: {settings.trials} trials, then the choice retrained")
    report = search.search(
        settings, work / name, final_epochs=args.final_epochs, final_limit=args.final_limit,
        force=True,
    )  # fmt: skip
    return {"report": report, "dir": str(work / name)}


# ------------------------------------------------------------------ result


def summary(side: dict) -> dict:
    report = side["report"]
    final = report["final"] or {}
    rows = report["rows"]
    return {
        "trials": len(rows),
        "fit": sum(1 for r in rows if not r.get("error") and not r.get("constraints")),
        "failed": sum(1 for r in rows if r.get("error")),
        "chosen": {k: final.get(k) for k in ("width", "depth", "resolution", "divisor")},
        "val_top1_proxy": next((r["val_score"] for r in rows if r.get("chosen")), None),
        "test_top1": final.get("test_score"),
        "val_top1": final.get("val_score"),
        "arena_kb": final["arena_bytes"] / 1024 if final.get("arena_bytes") else None,
        "flash_kb": final["tflite_bytes"] / 1024 if final.get("tflite_bytes") else None,
        "macs_m": final["macs"] / 1e6 if final.get("macs") else None,
        "latency_ms": final.get("judged_latency_ms"),
        "fits": final.get("constraints") == [],
        "constraints": final.get("constraints"),
    }


def targets(rows: dict) -> list[dict]:
    a, b = rows["(a) mobilecv search"], rows["(b) width-scaled MobileNetV2"]
    gain = (
        None
        if a["test_top1"] is None or b["test_top1"] is None
        else 100 * (a["test_top1"] - b["test_top1"])
    )
    return [
        {
            "target": f"(a) beats (b) by >= {MIN_GAIN_POINTS:g} point of int8 test top-1 on {DEVICE}",
            "measured": "no model fits" if gain is None else f"{gain:+.2f} points",
            "pass": gain is not None and gain >= MIN_GAIN_POINTS,
        },
        {
            "target": f"both chosen models fit {DEVICE} (real TFLM arena + runtime <= 320 KB, flash <= 1 MB)",
            "measured": ", ".join(f"{k[:3]} {'fits' if r['fits'] else r['constraints']}" for k, r in rows.items()),
            "pass": all(r["fits"] for r in rows.values()),
        },
    ]  # fmt: skip


COLUMNS = [
    ("model", "<30"), ("width", ">6"), ("depth", ">6"), ("res", ">5"), ("div", ">4"),
    ("MMACs", ">7"), ("flash KB", ">9"), ("arena KB", ">9"), ("f746 ms", ">8"),
    ("val proxy", ">10"), ("test top-1", ">11"), ("fit/trials", ">11"),
]  # fmt: skip


def cells(name: str, row: dict) -> list[str]:
    chosen = row["chosen"]
    return [
        name,
        common.fmt(chosen.get("width"), ".3g"),
        common.fmt(chosen.get("depth"), ".3g"),
        common.fmt(chosen.get("resolution"), "d"),
        common.fmt(chosen.get("divisor"), "d"),
        common.fmt(row["macs_m"], ".2f"),
        common.fmt(row["flash_kb"], ".1f"),
        common.fmt(row["arena_kb"], ".1f"),
        common.fmt(row["latency_ms"], ".1f"),
        common.fmt(row["val_top1_proxy"], ".4f"),
        common.fmt(row["test_top1"], ".4f"),
        f"{row['fit']}/{row['trials']}",
    ]


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Fashion-MNIST, full int8, {DEVICE} (320 KB SRAM, 1 MB flash; arena measured by the "
        "real TFLite Micro interpreter). Both sides: the same short training per trial "
        f"({cfg['epochs_per_trial']} epoch(s) on {cfg['train_limit']} images, chosen on the "
        f"validation split), the choice retrained {cfg['final_epochs']} epochs on "
        f"{cfg['final_limit']} images and scored once on the 10,000 test images.",
        "",
        *common.markdown_table(result["rows"], COLUMNS, cells),
        "",
        *common.target_bullets(result["targets"]),
        "",
        f"Search space of (a): {_space_text(result['space'])}, TPE. The grid of (b): widths "
        f"{cfg['widths']} x resolutions {cfg['resolutions']} px, depth 1. fit/trials: the "
        "points that fitted and so were trained, of those judged. f746 ms: the estimate for "
        f"{DEVICE}, not a measurement.",
        "",
        f"Plot: `benchmarks/out/{result['pareto_png']}` (every trial of (a): validation top-1 "
        "against the estimated latency, the choice marked).",
        "",
        f"Wall time {result['wall_seconds'] / 60:.1f} min on {result['machine'].get('cpu', 'this machine')}.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _space_text(space: dict) -> str:
    return ", ".join(f"{key.removesuffix('s')} {value}" for key, value in space.items())


def finish(result: dict, args) -> int:
    return common.publish_and_print(args, "mcu_search", result, markdown(result))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    wall, out_dir, stem = common.start_run(args, "mcu_search")
    work = Path(args.work or tempfile.mkdtemp(prefix="mobilecv-mcu-"))
    baseline = baseline_settings(args)
    sides = {"(b) width-scaled MobileNetV2": run_side("baseline", baseline, args, work)}
    sides["(a) mobilecv search"] = run_side(
        "search", search_settings(args, args.search_trials), args, work
    )
    png = out_dir / f"{stem}_pareto.png"
    shutil.copyfile(work / "search" / "pareto.png", png)
    result = {
        "rows": {name: summary(side) for name, side in sides.items()},
        "space": search_space(),
        "pareto_png": png.name,
        "trials": {name: side["report"]["rows"] for name, side in sides.items()},
    }
    result["targets"] = targets(result["rows"])
    result.update(common.run_metadata(args, PACKAGES, wall))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

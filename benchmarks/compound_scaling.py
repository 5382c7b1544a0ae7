"""Compound scaling at our scale (issue 17, section 3): EfficientNet's Figure 8 on
Fashion-MNIST.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019: scaling depth d = alpha**phi, width w = beta**phi and resolution r = gamma**phi
together (alpha * beta**2 * gamma**2 ~= 2, their grid search found 1.2 / 1.1 / 1.15)
beats scaling any one of them at equal FLOPs.

Base: mobilenet_v2 width 0.35, depth 1.0, 32 px, 1 channel, 10 classes. Each MAC level
(a multiple of the base's MACs, mobilecv.profiling) is reached four ways: width only, depth
only, resolution only, and compound (phi solved for the level, with the paper's
(alpha, beta, gamma) and with the one a small grid search at phi = 1 picks on the
VALIDATION split). mobilecv.scaling.match_macs solves each knob on its grid (width in
steps of 0.01, channels rounded to multiples of 8; depth in steps of 0.05, repeats
ceil'd; whole pixels; phi in steps of 0.02); a way that cannot come within 5% of a level
is reported as such and not trained.

Every point trains the same fixed budget (mobilecv.train.train: epochs, images, batch,
rate, cosine schedule) for each seed and is scored on a slice of the TEST split (nothing
here is chosen on it; the grid search chooses on validation). Host latency: the float
.tflite in LiteRT on 1 thread (measured); pixel1: mobilecv.bench.estimate (an estimate).
Fashion-MNIST is 28 x 28: every resolution here (>= 32 px) is upsampled.

Usage:
    python benchmarks/compound_scaling.py [--quick] [--json] [--out DIR] [--no-readme]
        [--render JSON]

Writes DIR/compound_scaling[_quick].json, .md and .png atomically, and rewrites the README
section between `<!-- compound_scaling:begin -->` and `<!-- compound_scaling:end -->`
(not for --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _support import common

import mobilecv

PACKAGES = ("tensorflow", "tf_keras", "ai-edge-litert", "numpy")
DEVICES = ("pixel1",)
FAMILY = "mobilenet_v2"
BASE = {"width": 0.35, "depth": 1.0, "resolution": 32}
PAPER = (1.2, 1.1, 1.15)
# (alpha, beta, gamma) with alpha * beta**2 * gamma**2 within 5% of 2; the paper's first.
GRID = (PAPER, (1.4, 1.1, 1.1), (1.1, 1.2, 1.1), (1.1, 1.1, 1.2), (1.5, 1.05, 1.1))
TOLERANCE = 0.05
MAX_MULTIPLIER = 4.0  # mobilecv.scaling's limit on width and depth
# (low, high, step) searched by match_macs. Steps fine enough to reach every distinct
# network: 0.01 of width is < 8 channels of the widest stage; depth's breakpoints
# (ceil(d * repeats), repeats <= 4) are at least 1/12 apart.
KNOB_GRID = {
    "width": (BASE["width"], 1.6, 0.01),
    "depth": (BASE["depth"], MAX_MULTIPLIER, 0.05),
    "resolution": (BASE["resolution"], 128, 1),
}
# Levels that every one-knob way can reach within 5% except depth at 8x (depth 4.0, the
# library's limit, gives 3.55x): 2x and 3x are out of resolution's reach (33 px is 2.26x,
# 48 px 2.70x, 49 px 3.35x) and 2x of width's (0.555 is 1.86x, the next step 2.3x+).
FULL = {
    "levels": "2.6,3.5,8",
    "seeds": 2,
    "grid_triples": 4,
    "grid_seeds": 1,
    "epochs": 1,
    "train_limit": 2048,
    "val_limit": 2000,
    "test_limit": 5000,
    "latency_runs": 30,
}
QUICK = {
    "levels": "2.6,3.5",
    "seeds": 1,
    "grid_triples": 2,
    "grid_seeds": 1,
    "epochs": 1,
    "train_limit": 512,
    "val_limit": 500,
    "test_limit": 1000,
    "latency_runs": 5,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 8 minutes, to check the script")
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                       help=f"default {value} ({QUICK[key]} with --quick)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak rate (cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are consecutive")
    p.add_argument("--resume", metavar="JSON",
                   help="go on from a stopped run's _partial.json (its settings, its points)")  # fmt: skip
    common.add_output_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 1 <= args.grid_triples <= len(GRID):
        p.error(f"--grid-triples must be 1..{len(GRID)}")
    return args


# ------------------------------------------------------------------ MACs and matching


class Macs:
    """MACs of a knob setting, each setting built once (a build is ~1 s)."""

    def __init__(self):
        self.seen: dict[tuple, int] = {}

    def __call__(self, knobs: dict) -> int:
        from mobilecv._tf import get_keras
        from mobilecv.profiling import profile

        key = (knobs["width"], knobs["depth"], knobs["resolution"])
        if key not in self.seen:
            get_keras().backend.clear_session()
            self.seen[key] = int(profile(build(knobs)).macs)
        return self.seen[key]


def build(knobs: dict):
    return mobilecv.build(FAMILY, input_channels=1, classes=10, **knobs)


def compound_knobs(phi: float, triple: tuple[float, float, float]) -> dict:
    from mobilecv.scaling import compound_scale

    scale = compound_scale(phi, *triple, base_resolution=BASE["resolution"])
    return {"width": round(BASE["width"] * scale.width, 6),
            "depth": round(BASE["depth"] * scale.depth, 6), "resolution": scale.resolution}  # fmt: skip


def way_knobs(way: str, value: float, triple) -> dict:
    if triple is not None:
        return compound_knobs(value, triple)
    return {**BASE, way: int(value) if way == "resolution" else value}


def way_range(way: str, triple) -> tuple[float, float, float]:
    if triple is None:
        return KNOB_GRID[way]
    alpha, beta, _ = triple  # phi up to where depth or width would pass the library's limit
    top = min(math.log(MAX_MULTIPLIER / BASE["depth"]) / math.log(alpha),
              math.log(MAX_MULTIPLIER / BASE["width"]) / math.log(beta), 8.0)  # fmt: skip
    return 0.0, math.floor(min(top, 5.0) * 50) / 50, 0.02


def match_point(way: str, triple, level: float, macs: Macs, base_macs: int) -> dict:
    """The knob of ``way`` whose MACs are nearest ``level`` x the base's."""
    from mobilecv.scaling import match_macs

    knob = "phi" if triple is not None else way
    match = match_macs(lambda v: macs(way_knobs(way, v, triple)), round(level * base_macs),
                       *way_range(way, triple))  # fmt: skip
    return {"way": way, "level": level, "knob": knob, "value": match.value,
            "knobs": way_knobs(way, match.value, triple), "macs": match.macs,
            "target_macs": match.target, "off": round(match.off, 4),
            "within": match.within(TOLERANCE), "triple": triple}  # fmt: skip


def matched_points(levels, ways: dict, macs: Macs, base_macs: int) -> dict:
    points = {}
    for level in levels:
        for way, triple in ways.items():
            point = match_point(way.split(" ")[0], triple, level, macs, base_macs)
            point["way"] = way
            mark = "" if point["within"] else f"  NOT within {TOLERANCE:.0%}: not trained"
            common.log(f"{level:g}x {way}: {point['knob']} {point['value']:g} -> "
                       f"{point['macs']:,} MACs ({point['off']:+.1%}){mark}")  # fmt: skip
            points[f"{level:g}x {way}"] = point
    return points


# ------------------------------------------------------------------ data and training


def load_data(args):
    from mobilecv.data.datasets import Split
    from mobilecv.train import Splits, load_split

    train = load_split("fashion_mnist", Split.TRAIN, args.train_limit)
    validation = load_split("fashion_mnist", Split.VALIDATION, args.val_limit)
    test = load_split("fashion_mnist", Split.TEST, args.test_limit)
    return Splits(train, validation, ()), test


def train_once(knobs: dict, seed: int, splits, test, args) -> tuple[object, dict]:
    """One training of the fixed budget; validation top-1, and test top-1 when ``test``."""
    from mobilecv._tf import get_keras
    from mobilecv.train import evaluate, set_seed, train

    get_keras().backend.clear_session()
    set_seed(seed)
    model = build(knobs)
    model, report = train(model, splits, args.epochs, batch_size=args.batch_size,
                          learning_rate=args.lr, schedule="cosine", progress=False)  # fmt: skip
    run = {"seed": seed, "val_top1": round(float(report.val_accuracy), 4),
           "train_seconds": report.seconds}  # fmt: skip
    if test is not None:
        run["test_top1"] = round(float(evaluate(model, test)["accuracy"]), 4)
    return model, run


def seeds(args) -> list[int]:
    return list(range(args.seed, args.seed + args.seeds))


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values)}


def grid_search(splits, args, macs: Macs, base_macs: int) -> dict:
    """(alpha, beta, gamma) at phi = 1, each trained for every seed, scored on validation."""
    rows = {}
    for triple in GRID[: args.grid_triples]:
        knobs = compound_knobs(1.0, triple)
        common.log(f"== grid {triple}: {knobs}")
        grid_seeds = seeds(args)[: args.grid_seeds]
        runs = [train_once(knobs, s, splits, None, args)[1] for s in grid_seeds]
        rows[" / ".join(f"{v:g}" for v in triple)] = {
            "triple": triple, "constraint": round(triple[0] * triple[1] ** 2 * triple[2] ** 2, 3),
            "knobs": knobs, "macs": macs(knobs), "macs_x": round(macs(knobs) / base_macs, 3),
            "runs": runs, "val_top1": summary(runs, "val_top1"),
        }  # fmt: skip
    winner = max(rows, key=lambda name: rows[name]["val_top1"]["mean"])
    return {"rows": rows, "winner": winner, "winner_triple": rows[winner]["triple"]}


def latency(model, workdir: Path, name: str, runs: int) -> dict:
    """Float .tflite: host p50 on 1 thread (measured) and the pixel1 estimate."""
    from converters.tflite import convert

    path = workdir / f"{name.replace(' ', '_').replace('/', '')}.tflite"
    path.write_bytes(convert(model, "none", verify=False, progress=False).tflite)
    figures = common.device_figures([path], DEVICES, runs, tflm=False)
    return {"host_p50_ms": round(figures["host_p50_ms"], 3),
            "pixel1_ms": round(figures["estimate_ms"]["pixel1"], 3), "bytes": figures["bytes"]}  # fmt: skip


def train_point(point: dict, splits, test, args, workdir: Path, name: str) -> None:
    common.log(f"== {name}: {point['knobs']}")
    runs, model = [], None
    for seed in seeds(args):
        model, run = train_once(point["knobs"], seed, splits, test, args)
        runs.append(run)
    point["runs"] = runs
    point["test_top1"] = summary(runs, "test_top1")
    point.update(latency(model, workdir, name, args.latency_runs))


# ------------------------------------------------------------------ verdict


def verdict_for(points: dict, level: float, compound_way: str) -> dict | None:
    """Compound against the best one-knob way at one level: a clear win or loss only when
    the seeds' ranges do not overlap."""
    at = {p["way"]: p for p in points.values() if p["level"] == level and "test_top1" in p}
    singles = [at[w] for w in ("width", "depth", "resolution") if w in at]
    if compound_way not in at or not singles:
        return None
    best = max(singles, key=lambda p: p["test_top1"]["mean"])
    mine, theirs = at[compound_way]["test_top1"], best["test_top1"]
    if mine["min"] > theirs["max"]:
        word = "compound wins"
    elif mine["max"] < theirs["min"]:
        word = f"{best['way']} wins"
    else:
        word = "no clear winner"
    return {"level": level, "compound": compound_way, "best_single": best["way"],
            "difference": round(mine["mean"] - theirs["mean"], 4), "word": word,
            "missing": [w for w in ("width", "depth", "resolution") if w not in at]}  # fmt: skip


def verdicts(result: dict) -> list[dict]:
    ways = [w for w in result["ways"] if w.startswith("compound")]
    found = [
        verdict_for(result["points"], level, way) for level in result["levels"] for way in ways
    ]
    return [v for v in found if v is not None]


def verdict_line(v: dict) -> str:
    missing = f" ({', '.join(v['missing'])} not trained)" if v["missing"] else ""
    return (f"{v['level']:g}x, {v['compound']} vs best one-knob way ({v['best_single']}){missing}: "
            f"{v['difference'] * 100:+.1f} points of top-1 -> {v['word']}")  # fmt: skip


def overall(found: list[dict]) -> str:
    wins = [f"{v['level']:g}x ({v['compound']})" for v in found if v["word"] == "compound wins"]
    if not found:
        return "no level had compound and a one-knob way both trained"
    if not wins:
        return "compound scaling does not clearly win at any level here"
    return f"compound scaling wins clearly at {', '.join(wins)} of {len(found)} comparisons"


# ------------------------------------------------------------------ pictures


MARKERS = {
    "width": "s",
    "depth": "^",
    "resolution": "o",
    "compound paper": "*",
    "compound grid": "D",
}


def plot(result: dict, path: Path) -> str:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("macs", "MACs (millions)", 1e-6), ("host_p50_ms", "host ms (LiteRT, 1 thread)", 1),
              ("pixel1_ms", "pixel1 ms (estimate)", 1))  # fmt: skip
    base = result["points"].get("1x base")
    for ax, (key, label, factor) in zip(axes, panels, strict=True):
        for way in result["ways"]:
            trained = [p for p in result["points"].values() if p["way"] == way and "test_top1" in p]
            chain = ([base] if base else []) + sorted(trained, key=lambda p: p["macs"])
            xs = [p[key] * factor for p in chain]
            ys = [p["test_top1"]["mean"] * 100 for p in chain]
            err = [[(p["test_top1"]["mean"] - p["test_top1"]["min"]) * 100 for p in chain],
                   [(p["test_top1"]["max"] - p["test_top1"]["mean"]) * 100 for p in chain]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err, marker=MARKERS.get(way, "x"), capsize=3, label=way)
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"mobilenet_v2 0.35/32 px scaled on Fashion-MNIST, {result['config']['seeds']} "
                 "seed(s): bars span the seeds (cf. EfficientNet Fig. 8)")  # fmt: skip
    fig.tight_layout()
    common.save_png(fig, path, dpi=90)
    return str(common.shown_path(path))


# ------------------------------------------------------------------ tables


COLUMNS = (
    ("point", "<22"),
    ("knobs w/d/px", ">18"),
    ("MACs", ">12"),
    ("off", ">7"),
    ("top-1 mean", ">13"),
    ("seeds min-max", ">15"),
    ("host ms", ">9"),
    ("pixel1 ms", ">10"),
)
GRID_COLUMNS = (
    ("alpha / beta / gamma", "<20"),
    ("a*b^2*g^2", ">10"),
    ("knobs w/d/px", ">18"),
    ("MACs x", ">7"),
    ("val top-1", ">10"),
    ("seeds min-max", ">15"),
)


def knob_text(knobs: dict) -> str:
    return f"{knobs['width']:.3f}/{knobs['depth']:.2f}/{knobs['resolution']}"


def row_cells(name: str, p: dict) -> list[str]:
    if "test_top1" not in p:  # out of reach, or the run was stopped before it
        why = f"> {TOLERANCE:.0%} off" if not p["within"] else "run stopped"
        return [name, knob_text(p["knobs"]), f"{p['macs']:,}", f"{p['off']:+.1%}",
                "not trained", why, "-", "-"]  # fmt: skip
    top = p["test_top1"]
    return [name, knob_text(p["knobs"]), f"{p['macs']:,}", f"{p['off']:+.1%}",
            f"{top['mean'] * 100:.2f}", f"{top['min'] * 100:.1f}-{top['max'] * 100:.1f}",
            f"{p['host_p50_ms']:.3f}", f"{p['pixel1_ms']:.2f}"]  # fmt: skip


def grid_cells(name: str, g: dict) -> list[str]:
    top = g["val_top1"]
    return [name, f"{g['constraint']:.3f}", knob_text(g["knobs"]), f"{g['macs_x']:.2f}",
            f"{top['mean'] * 100:.2f}", f"{top['min'] * 100:.1f}-{top['max'] * 100:.1f}"]  # fmt: skip


def settings_lines(result: dict) -> list[str]:
    cfg, grid = result["config"], result["grid"]
    budget = (f"{cfg['epochs']} epoch(s) of {cfg['train_limit']:,} train images, batch "
              f"{cfg['batch_size']}, Adam {cfg['lr']:g} with cosine decay, seeds "
              f"{', '.join(map(str, range(cfg['seed'], cfg['seed'] + cfg['seeds'])))}")  # fmt: skip
    return [
        f"- Base: `{FAMILY}` width {BASE['width']}, depth {BASE['depth']}, {BASE['resolution']} px, "
        f"1 channel, 10 classes: {result['base_macs']:,} MACs. Levels "
        f"{', '.join(f'{v:g}x' for v in result['levels'])} its MACs, each way matched within "
        f"{TOLERANCE:.0%} or not trained.",
        f"- Every point: {budget}. Top-1 on the first {cfg['test_limit']:,} images of the TEST "
        f"split (nothing is chosen on it); the grid search scores {cfg['val_limit']:,} "
        "VALIDATION images.",
        f"- Grid search at phi = 1: winner {grid['winner']} on validation (the paper's "
        f"{' / '.join(f'{v:g}' for v in PAPER)}).",
        "- Fashion-MNIST is 28 x 28: every input here (32 px and up) is upsampled, so more "
        "pixels add no detail, only larger feature maps; part of why resolution may help "
        "less here than on ImageNet. At 32 px the network's total stride is 32, so one "
        "more pixel (33) grows every feature map by one row and column: resolution's MACs "
        "move in large steps just above 32 px.",
    ]


def caveat_lines(result: dict) -> list[str]:
    """What the numbers cannot say, from the numbers."""
    base = result["points"]["1x base"]["test_top1"]["mean"]
    grid_x = [g["macs_x"] for g in result["grid"].get("rows", {}).values()]
    missed = [n for n, p in result["points"].items() if not p["within"]]
    lines = [f"- The budget is far from convergence (the base reaches {base * 100:.1f}% test "
             "top-1): this compares what each way learns in one short fixed budget, where a "
             "bigger network is also a slower learner, not converged accuracy."]  # fmt: skip
    if grid_x:
        lines.append(f"- phi = 1 under alpha * beta^2 * gamma^2 ~= 2 gives {min(grid_x):.2f}x to "
                     f"{max(grid_x):.2f}x the base's MACs here, not 2x: depth is ceil(d * "
                     "repeats), so any d > 1 adds a block to every stage, and any resolution "
                     "above 32 px adds a row and column to every feature map.")  # fmt: skip
    if missed:
        lines.append(f"- Out of 5% reach, so not trained: {', '.join(missed)}. Compound's first "
                     "step above phi = 0 is that same jump; depth stops at 3.55x (depth 4.0, "
                     "mobilecv's limit).")  # fmt: skip
    if result["config"]["grid_seeds"] < result["config"]["seeds"]:
        lines.append(f"- The grid search trained {result['config']['grid_seeds']} seed per triple "
                     "(time): a margin smaller than the seed ranges above picks by noise.")  # fmt: skip
    return lines


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"Measured by `benchmarks/compound_scaling.py` on {machine['date']} "
        f"({machine['cpus']} shared cores, {machine['cpu']}); run time "
        f"{result['wall_seconds'] / 60:.1f} min.",
        "",
        *settings_lines(result),
        "",
        *common.markdown_table(result["points"], COLUMNS, row_cells),
        "",
        "Grid search for (alpha, beta, gamma) at phi = 1 (validation top-1):",
        "",
        *common.markdown_table(result["grid"]["rows"], GRID_COLUMNS, grid_cells),
        "",
        f"**Verdict: {result['overall']}.** A difference inside the seeds' ranges is no "
        "clear winner.",
        "",
        *[f"- {verdict_line(v)}" for v in result["verdicts"]],
        f"- Verdict: {result['overall']}.",
        "",
        *caveat_lines(result),
        "",
        f"Picture: `{result['picture']}` (top-1 against MACs, measured host latency and "
        "estimated pixel1 latency). Host ms: the float .tflite in LiteRT on 1 thread while "
        "other jobs shared the cores; pixel1 ms: mobilecv.bench.estimate, not a measurement.",
        "",
    ]
    return "\n".join(lines)


def finish(result: dict, args) -> int:
    result["verdicts"] = verdicts(result)  # a --render re-judges the rows it reads
    result["overall"] = overall(result["verdicts"])
    common.publish(args, "compound_scaling", result, markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    quick = " [QUICK]" if result["config"]["quick"] else ""
    print("\n".join(settings_lines(result)) + quick)
    print("\n".join(common.text_table(result["points"], COLUMNS, row_cells)))
    print("\ngrid search at phi = 1 (validation):")
    print("\n".join(common.text_table(result["grid"]["rows"], GRID_COLUMNS, grid_cells)))
    print()
    for v in result["verdicts"]:
        print(verdict_line(v))
    print(f"verdict: {result['overall']}")
    print("\n".join(caveat_lines(result)))
    print(f"picture: {result['picture']}")
    return 0


# ------------------------------------------------------------------ run


def checkpoint(result: dict, args, wall: float, path: Path) -> None:
    """The result so far, renderable with --render if a later step fails."""
    from mobilecv.fileio import write_json

    partial = {**result, "picture": "", **common.run_metadata(args, PACKAGES, wall)}
    write_json(path, partial, force=True)


def by_priority(result: dict) -> list[str]:
    """Untrained reachable points, the levels where compound can be compared first."""
    points = result["points"]
    comparable = {p["level"] for p in points.values() if p["way"].startswith("compound") and p["within"]}  # fmt: skip
    todo = [n for n, p in points.items() if p["within"] and "runs" not in p]
    return sorted(todo, key=lambda n: points[n]["level"] not in comparable)  # stable


def resume(args) -> int:
    """Train what a stopped run left, from its partial result; the wall time adds up."""
    result = json.loads(Path(args.resume).read_text())
    for key, value in result["config"].items():
        if key not in ("resume", "quick"):
            setattr(args, key, value)
    args.quick = result["config"]["quick"]
    wall = time.perf_counter() - result["wall_seconds"]  # the stopped run's time counts
    out_dir = Path(args.out)
    stem = common.output_stem("compound_scaling", args.quick)
    splits, test = load_data(args)
    with tempfile.TemporaryDirectory(prefix="mobilecv-compound-") as workdir:
        for name in by_priority(result):
            train_point(result["points"][name], splits, test, args, Path(workdir), name)
            checkpoint(result, args, wall, out_dir / f"{stem}_partial.json")
    result["picture"] = plot(result, out_dir / f"{stem}.png")
    result.update(common.run_metadata(args, PACKAGES, wall))
    return finish(result, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:  # the picture is drawn again beside the re-written result
        result = json.loads(Path(args.render).read_text())
        stem = common.output_stem("compound_scaling", result["config"]["quick"])
        Path(args.out).mkdir(parents=True, exist_ok=True)
        result["picture"] = plot(result, Path(args.out) / f"{stem}.png")
        return finish(result, args)
    if args.resume:
        return resume(args)
    wall, out_dir, stem = common.start_run(args, "compound_scaling")
    levels = [float(v) for v in args.levels.split(",")]
    splits, test = load_data(args)
    macs = Macs()
    result = {"levels": levels, "ways": [], "base_macs": macs(BASE), "grid": {}, "points": {}}
    result["points"]["1x base"] = {
        "way": "base", "level": 1.0, "knob": "-", "value": 0, "knobs": BASE,
        "macs": result["base_macs"], "target_macs": result["base_macs"], "off": 0.0,
        "within": True, "triple": None,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mobilecv-compound-") as workdir:
        # The base first: a failure in training or latency shows in minutes, not at the end.
        train_point(result["points"]["1x base"], splits, test, args, Path(workdir), "1x base")
        started = time.perf_counter()
        result["grid"] = grid_search(splits, args, macs, result["base_macs"])
        result["grid_seconds"] = round(time.perf_counter() - started, 1)
        ways = {"width": None, "depth": None, "resolution": None, "compound paper": PAPER}
        if tuple(result["grid"]["winner_triple"]) != PAPER:
            ways["compound grid"] = tuple(result["grid"]["winner_triple"])
        result["ways"] = list(ways)
        result["points"].update(matched_points(levels, ways, macs, result["base_macs"]))
        for name, point in result["points"].items():
            if point["within"] and "runs" not in point:
                train_point(point, splits, test, args, Path(workdir), name)
                checkpoint(result, args, wall, out_dir / f"{stem}_partial.json")
    result["picture"] = plot(result, out_dir / f"{stem}.png")
    result.update(common.run_metadata(args, PACKAGES, wall))
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

"""int8 efficiency on the host (issue 17, section 5): which MobileNetV2 choices make int8
fast in LiteRT/XNNPACK on this CPU.

- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018;
  Howard et al., "Searching for MobileNetV3", ICCV 2019 (h-swish, squeeze-excite);
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (full-integer int8).

Every model is timed float and int8 in LiteRT on 1 thread (mobilecv.bench, one child
process a measurement). The reference for how fast int8 can go here is one large 1x1
CONV_2D (256 -> 256 channels at 56 x 56), timed in the same run; a model's int8
efficiency is its MACs per int8 second over the reference's. The machine is shared: the
float and int8 files of a pair are measured back to back (alternating which goes first),
every pair once a round over several rounds, and ratios are medians of per-round ratios.

Rows: keras.applications MobileNetV2 1.0/224 and MobileNet 1.0/224 (weights=None, random
calibration), then a small MobileNetV2 for Fashion-MNIST and its variants (channel
divisor, fixed batch 1 against the converter's dynamic batch, per-tensor weights,
activation, squeeze-excite, expansion ratio). Each variant that changes the network is
trained the same short seeded budget; its int8 PTQ model is scored on the test split.

Usage:
    python benchmarks/int8_efficiency.py [--quick] [--json] [--out DIR] [--no-readme]
        [--render JSON]

Writes DIR/int8_efficiency[_quick].json, .md and .png atomically and rewrites the README
section between `<!-- int8_efficiency:begin -->` and `<!-- int8_efficiency:end -->`
(not for --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from _support import common

PACKAGES = common.LITERT_PACKAGES
NAME = "int8_efficiency"
REFERENCE = "1x1 conv 256->256 @56"
# (channels, side) of the reference op.
REFERENCE_SHAPE = (256, 56)
KERAS_ROWS = {"keras MobileNetV2 1.0/224": "MobileNetV2", "keras MobileNet 1.0/224": "MobileNet"}
BASE = "base (div 8, relu6, e6)"
# Network variants: mobilenet_v2 options on top of the base. Each is trained.
NETWORKS = {
    BASE: {},
    "divisor 16": {"divisor": 16},
    "divisor 32": {"divisor": 32},
    "hard-swish": {"activation": "hard_swish"},
    "swish": {"activation": "swish"},
    "SE 0.25": {"se_ratio": 0.25},
    "expansion 4": {"expansion": 4},
    "expansion 3": {"expansion": 3},
}
# Conversion variants of a trained network: (network, fixed batch 1, per-channel).
CONVERSIONS = {
    "fixed batch 1": (BASE, True, True),
    "per-tensor": (BASE, False, False),
    "div 32 + fixed batch 1": ("divisor 32", True, True),
}
MAX_RATIO = 0.40
MIN_EFFICIENCY = 0.70
MAX_TOP1_LOSS = 0.005
# --quick: these rows only (each conversion costs ~0.5 min on the shared machine).
QUICK_ROWS = (REFERENCE, BASE, "hard-swish", "fixed batch 1")
FULL = {"epochs": 2, "train_limit": 3000, "val_limit": 500, "test_limit": 2000, "rounds": 4,
        "runs": 15}  # fmt: skip
QUICK = {"epochs": 1, "train_limit": 1000, "val_limit": 200, "test_limit": 500, "rounds": 2,
         "runs": 5}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 8 minutes, to check the script")
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"default {FULL[key]} ({QUICK[key]} with --quick)")  # fmt: skip
    p.add_argument("--width", type=float, default=0.5, help="base width multiplier")
    p.add_argument("--resolution", type=int, default=96, help="base input side (px)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak rate (cosine decay)")
    p.add_argument("--calibration", type=int, default=200, help="int8 calibration images")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs a measurement")
    p.add_argument("--seed", type=int, default=0)
    common.add_output_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------ models and files


def reference_model():
    """The runtime's best case: one large 1x1 convolution."""
    import tf_keras as K

    channels, side = REFERENCE_SHAPE
    inputs = K.Input((side, side, channels), name="input")
    outputs = K.layers.Conv2D(channels, 1, name="conv_1x1")(inputs)
    return K.Model(inputs, outputs, name="conv1x1")


def keras_application(name: str):
    import tf_keras as K

    return getattr(K.applications, name)(weights=None)


def fixed_batch(model):
    """The same network with its input built for batch 1 (the converter then writes
    static shapes; by default a Keras model's batch axis converts as dynamic)."""
    from mobilecv._tf import get_keras
    from mobilecv.modelinfo import get_info, set_info

    K = get_keras("keras3" if _keras3(model) else "tf_keras")
    inputs = K.Input(batch_shape=(1, *model.input_shape[1:]), name="input")
    wrapped = K.Model(inputs, model(inputs), name=f"{model.name}_batch1")
    return set_info(wrapped, get_info(model))


def _keras3(model) -> bool:
    from mobilecv._tf import is_keras3_model

    return is_keras3_model(model)


def write_pair(
    model, calibration, samples: int, per_channel: bool, stem: Path, verify: bool
) -> dict:
    """Float and int8 .tflite of ``model`` as STEM_float.tflite / STEM_int8.tflite."""
    from mobilecv.converters.tflite import convert

    paths = {}
    for mode in ("none", "int8"):
        result = convert(
            model,
            mode,
            calibration=calibration if mode == "int8" else None,
            samples=samples,
            per_channel=per_channel or mode != "int8",  # per-tensor is an int8 choice
            verify=verify,
            progress=False,
        )
        path = stem.with_name(f"{stem.name}_{'float' if mode == 'none' else 'int8'}.tflite")
        path.write_bytes(result.tflite)
        paths["float" if mode == "none" else "int8"] = path
    return paths


def random_calibration(model, count: int) -> np.ndarray:
    shape = model.input_shape[1:]
    return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def macs_of(model) -> int:
    from mobilecv.profiling import profile

    return int(profile(model).macs)


# ------------------------------------------------------------------ training and scoring


def train_network(options: dict, splits, args):
    """Build the base with ``options``, train it the fixed seeded budget."""
    import mobilecv
    from mobilecv.train import set_seed, train

    set_seed(args.seed)
    model = mobilecv.build(
        "mobilenet_v2", width=args.width, resolution=args.resolution, classes=10,
        input_channels=1, **options,
    )  # fmt: skip
    if args.epochs == 0:  # --epochs 0: latency only, random weights, no top-1
        return model, None
    model, report = train(
        model, splits, args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, schedule="cosine", progress=False,
    )  # fmt: skip
    return model, {"seconds": round(report.seconds, 1), "val_top1": report.val_accuracy,
                   "params": int(model.count_params())}  # fmt: skip


def int8_top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from mobilecv.evaluate import TfliteModel, top1

    return top1(TfliteModel(path, threads=1).predict(x), y)


def trained_rows(args, workdir: Path, test) -> tuple[dict, dict]:
    """Every network variant trained, converted, scored; conversion variants too.
    Rows (without timings) and their file pairs."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.train import evaluate, load_splits

    splits = load_splits("fashion_mnist", limit=args.train_limit, val_limit=args.val_limit)
    rows, files, models = {}, {}, {}
    for name, options in _chosen(NETWORKS, args).items():
        common.log(f"== {name}: train {args.epochs} epoch(s) on {args.train_limit} images")
        model, training = train_network(options, splits, args)
        models[name] = model
        x = model_inputs(test.x, model)
        files[name] = write_pair(
            model, "fashion_mnist", args.calibration, True, workdir / _slug(name), False
        )
        scored = training is not None
        rows[name] = {"options": options, "macs": macs_of(model), "training": training,
                      "float_top1": evaluate(model, test)["accuracy"] if scored else None,
                      "int8_top1": int8_top1(files[name]["int8"], x, test.y) if scored else None}  # fmt: skip
        common.log(f"   {name}: {training}, int8 test {rows[name]['int8_top1']}")
    for name, (network, batch1, per_channel) in _chosen(CONVERSIONS, args).items():
        common.log(f"== {name}: convert {network}")
        model = fixed_batch(models[network]) if batch1 else models[network]
        files[name] = write_pair(
            model, "fashion_mnist", args.calibration, per_channel, workdir / _slug(name), False
        )
        x = model_inputs(test.x, models[network])
        rows[name] = {**rows[network], "network": network, "fixed_batch": batch1,
                      "per_channel": per_channel,
                      "int8_top1": int8_top1(files[name]["int8"], x, test.y)
                      if rows[network]["training"] else None}  # fmt: skip
    return rows, files


def _chosen(rows: dict, args) -> dict:
    return {k: v for k, v in rows.items() if not args.quick or k in QUICK_ROWS}


def reference_rows(workdir: Path, args) -> tuple[dict, dict]:
    """The 1x1 conv and the keras.applications models: random weights and calibration."""
    rows, files = {}, {}
    builders = {REFERENCE: reference_model, **{
        row: (lambda n=name: keras_application(n)) for row, name in KERAS_ROWS.items()}}  # fmt: skip
    for row, build in _chosen(builders, args).items():
        common.log(f"== {row}: convert")
        model = build()
        files[row] = write_pair(model, random_calibration(model, 32), 32, True,
                                workdir / _slug(row), verify=False)  # fmt: skip
        rows[row] = {"macs": macs_of(model)}
    return rows, files


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# ------------------------------------------------------------------ timing


def p50_ms(path: Path, args) -> float:
    from mobilecv.bench.harness import RunConfig, measure

    result = measure(path, RunConfig(threads=1, runs=args.runs, warmup=args.warmup))
    if not result.get("ok"):
        raise SystemExit(f"error: LiteRT could not run {path}: {result.get('error')}")
    return float(result["latency_ms"]["p50"])


def time_pairs(files: dict, args) -> dict:
    """Per row, per round: float and int8 p50 ms, measured back to back (the order
    alternating by round), every pair once a round, the row order rotating."""
    names = list(files)
    samples = {name: {"float": [], "int8": []} for name in names}
    for r in range(args.rounds):
        common.log(f"== timing round {r + 1}/{args.rounds}")
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            kinds = ("float", "int8") if r % 2 == 0 else ("int8", "float")
            for kind in kinds:
                samples[name][kind].append(p50_ms(files[name][kind], args))
    return samples


def op_mix(path: Path) -> dict:
    """The int8 graph's ops by type: count and share of the MACs (CONV_2D runs at the
    reference's speed at best; depthwise convs, adds and small layers do not)."""
    from mobilecv.tflite_graph import load

    ops = load(path).ops
    total = sum(op.macs for op in ops) or 1
    mix: dict[str, dict] = {}
    for op in ops:
        entry = mix.setdefault(op.opcode, {"count": 0, "mac_share": 0.0})
        entry["count"] += 1
        entry["mac_share"] += op.macs / total
    return {k: {"count": v["count"], "mac_share": round(v["mac_share"], 4)}
            for k, v in sorted(mix.items(), key=lambda kv: -kv[1]["mac_share"])}  # fmt: skip


def mix_line(name: str, row: dict) -> str:
    shares = ", ".join(
        f"{op} {v['count']}x {v['mac_share']:.0%}" for op, v in row["int8_ops"].items()
    )
    return f"- {name}: int8 ops (count, share of MACs): {shares}."


def summarise_timing(rows: dict, samples: dict) -> None:
    """float/int8 medians, the int8/float ratio and the efficiency against the
    reference (medians of per-round values: a round's files ran close in time)."""
    ref = samples[REFERENCE]
    ref_rate = [rows[REFERENCE]["macs"] / ms for ms in ref["int8"]]
    for name, row in rows.items():
        s = samples[name]
        row["float_ms"] = statistics.median(s["float"])
        row["int8_ms"] = statistics.median(s["int8"])
        row["ratio"] = statistics.median(i / f for i, f in zip(s["int8"], s["float"], strict=True))
        row["efficiency"] = statistics.median(
            row["macs"] / ms / rate for ms, rate in zip(s["int8"], ref_rate, strict=True)
        )
        row["samples_ms"] = s


# ------------------------------------------------------------------ targets and output


def target_candidates(rows: dict) -> dict:
    base = rows[BASE]["int8_top1"]
    return {
        name: row for name, row in rows.items()
        if "int8_top1" in row
        and (base is None or row["int8_top1"] >= base - MAX_TOP1_LOSS)
    }  # fmt: skip


def meets(row: dict) -> bool:
    return row["ratio"] <= MAX_RATIO and row["efficiency"] >= MIN_EFFICIENCY


def closest(rows: dict) -> str:
    """The family row nearest the target: the smallest shortfall, ratio and efficiency
    each measured as a fraction of its bound."""
    family = {n: r for n, r in rows.items() if "int8_top1" in r}

    def shortfall(row):
        return max(0.0, row["ratio"] / MAX_RATIO - 1) + max(
            0.0, 1 - row["efficiency"] / MIN_EFFICIENCY
        )

    return min(family, key=lambda n: shortfall(family[n]))


def targets(rows: dict) -> list[dict]:
    base = rows[BASE]["int8_top1"]
    candidates = target_candidates(rows)
    passing = [n for n, r in candidates.items() if meets(r)]
    name = passing[0] if passing else closest(rows)
    row = rows[name]
    measured = (f"{name}: int8/float {row['ratio']:.2f}, efficiency {row['efficiency']:.0%}, "
                f"int8 top-1 {common.fmt(row['int8_top1'], '.4f')} vs base "
                f"{common.fmt(base, '.4f')}")  # fmt: skip
    out = [{
        "target": f"a MobileNetV2-family configuration with int8/float <= {MAX_RATIO:.2f}, "
                  f"int8 efficiency >= {MIN_EFFICIENCY:.0%}, <= {100 * MAX_TOP1_LOSS:.1f} "
                  "points top-1 below the base",
        "measured": measured if passing else f"none; closest {measured}",
        "pass": bool(passing),
    }]  # fmt: skip
    for label in [k for k in KERAS_ROWS if k in rows]:
        r = rows[label]
        out.append({"target": f"{label} (the issue's reference point, not a target)",
                    "measured": f"int8/float {r['ratio']:.2f}, efficiency {r['efficiency']:.0%}",
                    "pass": r["ratio"] <= MAX_RATIO})  # fmt: skip
    return out


COLUMNS = [
    ("choice", "<26"),
    ("MMACs", ">8"),
    ("float ms", ">10"),
    ("int8 ms", ">9"),
    ("int8/float", ">11"),
    ("int8 eff.", ">10"),
    ("int8 top-1", ">11"),
    ("float top-1", ">12"),
]


def row_cells(name: str, row: dict) -> list[str]:
    fmt = common.fmt
    return [name, f"{row['macs'] / 1e6:.1f}", f"{row['float_ms']:.2f}", f"{row['int8_ms']:.2f}",
            f"{row['ratio']:.2f}", f"{row['efficiency']:.0%}", fmt(row.get("int8_top1"), ".4f"),
            fmt(row.get("float_top1"), ".4f")]  # fmt: skip


def settings_lines(result: dict) -> list[str]:
    cfg = result["config"]
    ref = result["rows"][REFERENCE]
    base = (
        f'- Base: `mobilecv.build("mobilenet_v2", width={cfg["width"]:g}, resolution='
        f"{cfg['resolution']}, classes=10, input_channels=1)`; "
    )
    if cfg["epochs"] == 0:
        trained = (
            "random weights (`--epochs 0`): latencies only, no top-1. The top-1 of each "
            "network after 2 epochs on 3000 images (seed 0, int8 on 2000 test images) is in "
            "`int8_efficiency_trained_log.txt`, from a run that stopped before its timings."
        )
    else:
        trained = (
            f"each network row trained {cfg['epochs']} epoch(s) on {cfg['train_limit']} "
            f"Fashion-MNIST images (validation {cfg['val_limit']}, seed {cfg['seed']}, Adam "
            f"{cfg['lr']:g}, cosine), int8 PTQ on {cfg['calibration']} images, top-1 on "
            f"{cfg['test_limit']} test images."
        )
    return [
        base + trained,
        f"- LiteRT, 1 thread: {cfg['rounds']} rounds x {cfg['runs']} timed runs a file; "
        "ms are medians of per-round p50s, ratios medians of per-round ratios. Reference "
        f"{REFERENCE}: {ref['macs'] / 1e6:.0f} MMACs, int8 {ref['int8_ms']:.2f} ms = "
        f"{ref['macs'] / ref['int8_ms'] / 1e6:.1f} GMAC/s (float {ref['float_ms']:.2f} ms).",
    ]


def mix_lines(result: dict) -> list[str]:
    rows = result["rows"]
    names = dict.fromkeys([REFERENCE, BASE, closest(rows)])
    return [mix_line(n, rows[n]) for n in names if "int8_ops" in rows[n]]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Measured by `benchmarks/int8_efficiency.py` on {m['date']} ({m['cpus']} shared "
        f"cores, {m['cpu']}); run time {result['wall_seconds'] / 60:.1f} min.",
        "",
        *settings_lines(result),
        "",
        *common.markdown_table(result["rows"], COLUMNS, row_cells),
        "",
        *common.target_bullets(result["targets"]),
        "",
        *mix_lines(result),
        "",
        f"Plot: `{result['picture']}`. int8 efficiency = (model MACs / int8 s) / (reference "
        "MACs / reference int8 s). Rows without top-1 are untrained (random weights).",
        "",
    ]
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> str:
    plt = common.pyplot()
    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.5), sharey=True)
    y = np.arange(len(names))
    axes[0].barh(y, [rows[n]["ratio"] for n in names], color="tab:blue")
    axes[0].axvline(MAX_RATIO, color="k", ls="--", lw=1)
    axes[0].set_xlabel("int8 / float latency (lower is better)")
    axes[1].barh(y, [100 * rows[n]["efficiency"] for n in names], color="tab:orange")
    axes[1].axvline(100 * MIN_EFFICIENCY, color="k", ls="--", lw=1)
    axes[1].set_xlabel("int8 efficiency, % of the 1x1 conv's MAC/s")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle("LiteRT int8 on 1 thread (dashed: the issue's targets)")
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)
    return str(common.shown_path(path))


def finish(result: dict, args) -> int:
    result["targets"] = targets(result["rows"])
    common.publish(args, NAME, result, markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    quick = " [QUICK]" if result["config"]["quick"] else ""
    print("\n".join(settings_lines(result)) + quick)
    print("\n".join(common.text_table(result["rows"], COLUMNS, row_cells)))
    for target in result["targets"]:
        print(common.target_line(target))
    print("\n".join(mix_lines(result)))
    print(f"picture: {result['picture']}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    wall, out_dir, stem = common.start_run(args, NAME)
    from mobilecv.train import load_split

    test = load_split("fashion_mnist", "test", limit=args.test_limit)
    with tempfile.TemporaryDirectory(prefix="mobilecv-int8eff-") as tmp:
        rows, files = reference_rows(Path(tmp), args)
        trained, trained_files = trained_rows(args, Path(tmp), test)
        rows.update(trained)
        files.update(trained_files)
        summarise_timing(rows, time_pairs(files, args))
        for name, row in rows.items():
            row["int8_ops"] = op_mix(files[name]["int8"])
    result = {"rows": rows, "picture": plot(rows, out_dir / f"{stem}.png")}
    result.update(common.run_metadata(args, PACKAGES, wall))
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

"""Measured compression results: MobileNetV2 (width 0.5, 32 px, 1 channel) on Fashion-MNIST.

Trains the float model on the Fashion-MNIST TRAIN split (the library carves a
held-out validation split from it), then derives nine .tflite variants from it and
measures each on the untouched 10k TEST split:

    float32, dynamic, float16, int8 PTQ, QAT int8, 50% pruned + int8,
    80% pruned + int8, 2:4 + int8, 16-cluster + int8

Every fine-tune (QAT, pruning, clustering) starts from the trained float weights and
fine-tunes on the train split only. Columns: top-1 on the test set, .tflite bytes,
gzip -9 bytes, 1-thread LiteRT latency (p50, measured in a child process by
`mobilecv.bench.run`) and the drop vs float32 in points. The issue's targets are
checked and printed as PASS/MISS.

Sparse inference: XNNPACK's sparse (NCHW, "Fast Sparse ConvNets") path cannot be
switched on from Python; the TFLite XNNPACK delegate hints it to XNNPACK by itself
when the model stores weights in sparse form (DENSIFY ops, i.e. the converter's
`Optimize.EXPERIMENTAL_SPARSITY`, `converters.tflite.convert(..., sparse=True)`),
and XNNPACK then uses it only if the subgraph qualifies (3x3 stride-2 stem conv with
3 input channels and padding 1 on each side, >= 2/3 zeros in the 1x1 convs). This
script measures dense vs pruned vs sparse-encoded float32 models, both as built
(1 channel, 32 px: the stem does not qualify) and as a weight-sharing twin built to
qualify (3 channels, 33 px, so SAME padding is 1 on each side).

Usage:
    python benchmarks/compression.py [--quick] [--epochs N] [--finetune-epochs N]
        [--json] [--out DIR] [--no-readme]

Writes DIR/compression[_quick].json, .md and .png atomically and rewrites the README
section between `<!-- compression:begin -->` and `<!-- compression:end -->`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mobilecv  # noqa: E402
from mobilecv.fileio import atomic_path, write_json, write_text  # noqa: E402

MODEL = {"name": "mobilenet_v2", "width": 0.5, "resolution": 32, "classes": 10, "input_channels": 1}
README_BEGIN = "<!-- compression:begin -->"
README_END = "<!-- compression:end -->"

# (row name, compress() keyword arguments or None for post-training only, quantize mode)
ROWS = [
    ("float32", None, "none"),
    ("dynamic", None, "dynamic"),
    ("float16", None, "float16"),
    ("int8 PTQ", None, "int8"),
    ("QAT int8", {"qat": True}, "int8"),
    ("50% pruned + int8", {"prune": 0.5}, "int8"),
    ("80% pruned + int8", {"prune": 0.8}, "int8"),
    ("2:4 + int8", {"prune_2by4": True}, "int8"),
    ("16-cluster + int8", {"cluster": 16}, "int8"),
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few epochs on a train subset (< 10 min)")
    p.add_argument("--epochs", type=int, help="float training epochs (default 15, quick 2)")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        help="epochs per QAT/prune/cluster fine-tune (default 2, quick 1)",
    )
    p.add_argument(
        "--train-limit", type=int, help="training images (default all 54,000; quick 6,000)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak float learning rate (cosine decay)")
    p.add_argument("--finetune-lr", type=float, default=2e-4)
    p.add_argument("--calibration-samples", type=int, default=500)
    p.add_argument("--runs", type=int, default=100, help="timed LiteRT runs per model")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"), help="output directory")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", help="also save the float and 80%%-pruned weights (.npz) here")
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only re-render the table, Markdown, PNG and README section from a results JSON",
    )
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 15
    if args.finetune_epochs is None:
        args.finetune_epochs = 1 if args.quick else 2
    if args.train_limit is None and args.quick:
        args.train_limit = 6000
    for name in ("epochs", "finetune_epochs", "batch_size", "calibration_samples", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(**overrides):
    spec = {**MODEL, **overrides}
    return mobilecv.build(spec.pop("name"), **spec)


def fresh_from(weights, **overrides):
    """A new model holding the trained float weights: each fine-tune starts from them."""
    model = build(**overrides)
    model.set_weights(weights)
    return model


def test_images(test, resolution: int, channels: int) -> np.ndarray:
    from mobilecv.data.datasets import prepare_images

    return prepare_images(test.x, resolution, channels, 1.0 / 255.0).numpy()


def tflite_top1(data: bytes, x: np.ndarray, y: np.ndarray, desc: str) -> float:
    from tqdm import tqdm

    from mobilecv.evaluate import TfliteModel, top1

    model = TfliteModel(data, threads=1)
    chunks = np.array_split(np.arange(len(x)), 20)
    probs = []
    for idx in tqdm(chunks, desc=f"test {desc}", file=sys.stderr, leave=False):
        probs.append(model.predict(x[idx]))
    return top1(np.concatenate(probs), y)


def latency_p50(data: bytes, workdir: Path, name: str, runs: int) -> float:
    import mobilecv.bench as bench

    path = workdir / (name.replace(" ", "_").replace("%", "pct").replace(":", "by") + ".tflite")
    path.write_bytes(data)
    result = bench.run(path, device="host", threads=1, runs=runs, warmup=10)
    return float(result["latency_ms"]["p50"])


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def conversion_summary(result) -> dict:
    d = result.to_dict()
    return {k: d[k] for k in ("mode", "io", "qat", "sparse", "bytes", "verification", "notes")}


def cosine_lr(args, train_samples: int):
    from mobilecv._tf import get_keras
    from mobilecv.train import steps_per_epoch

    K = get_keras("tf_keras")
    steps = args.epochs * steps_per_epoch(train_samples, args.batch_size)
    # Keras optimizers take a schedule wherever they take a rate; decaying to 1% of the
    # peak over the run is worth ~1 point over a constant rate at this epoch count.
    return K.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps, alpha=0.01)


# --------------------------------------------------------------------------- stages


def train_float(args, splits):
    from mobilecv.data.augment import Mirror
    from mobilecv.train import train

    model = build()
    log(f"== training {MODEL['name']} on {len(splits.train)} images for {args.epochs} epochs")
    model, report = train(
        model,
        splits,
        args.epochs,
        batch_size=args.batch_size,
        learning_rate=cosine_lr(args, len(splits.train)),
        augment=Mirror(),
    )
    return model, report


def finetune(args, splits, weights, kwargs):
    from mobilecv.compress.pipeline import compress

    model = fresh_from(weights)
    start = time.perf_counter()
    model, report = compress(
        model,
        splits,
        epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        learning_rate=args.finetune_lr,
        **kwargs,
    )
    seconds = time.perf_counter() - start
    last = report.stages[-1]
    return model, {
        "technique": {k: v for k, v in kwargs.items()},
        "epochs": args.finetune_epochs,
        "learning_rate": args.finetune_lr,
        "seconds": round(seconds, 1),
        "val_accuracy_before": report.stages[0].val_accuracy,
        "val_accuracy_after": last.val_accuracy,
        "kernel_sparsity": last.sparsity,
        "max_unique_weights": last.max_unique_weights,
        "qat_scheme": report.qat_scheme,
    }


def sparse_inference(args, weights, pruned80_weights, x, y, workdir: Path) -> dict:
    """Dense vs pruned vs sparse-encoded float32 latency in LiteRT (default XNNPACK)."""
    from converters.tflite import convert

    def variant(label, model, sparse, x_eval):
        res = convert(model, "none", calibration="fashion_mnist", samples=16, sparse=sparse)
        row = {
            "model": label,
            "sparse_encoding": res.sparse,
            "tflite_bytes": res.size,
            "gzip_bytes": gzip_size(res.tflite),
            "latency_p50_ms": latency_p50(res.tflite, workdir, "sparse_" + label, args.runs),
            "top1": None if x_eval is None else tflite_top1(res.tflite, x_eval, y, label),
            "runtime": res.verification.runtime if res.verification else None,
            "notes": res.notes,
        }
        log(f"   {label}: {row['latency_p50_ms']:.3f} ms, sparse={row['sparse_encoding']}")
        return row

    rows = []
    for label, w, sparse in (
        (AS_BUILT_DENSE, weights, False),
        (AS_BUILT_PRUNED, pruned80_weights, False),
        (AS_BUILT_SPARSE, pruned80_weights, True),
    ):
        rows.append(variant(label, fresh_from(w), sparse, x))
    # Latency probe only (no top-1: the weights were trained at 32 px on one channel).
    for label, w, sparse in (
        (TWIN_DENSE, weights, False),
        (TWIN_PRUNED, pruned80_weights, False),
        (TWIN_SPARSE, pruned80_weights, True),
    ):
        rows.append(variant(label, twin(w), sparse, None))
    return {
        "question": "does a pruned float32 model run faster than the dense one in LiteRT?",
        "threads": 1,
        "rows": rows,
    }


AS_BUILT_DENSE = "dense, as built (1 ch, 32 px)"
AS_BUILT_PRUNED = "80% pruned, dense encoding"
AS_BUILT_SPARSE = "80% pruned, sparse encoding (DENSIFY)"
TWIN_RESOLUTION = 225  # odd: SAME padding of every stride-2 layer is then 1 on each side
TWIN_DENSE = f"dense twin (3 ch, {TWIN_RESOLUTION} px)"
TWIN_PRUNED = f"80% pruned twin (3 ch, {TWIN_RESOLUTION} px), dense encoding"
TWIN_SPARSE = f"80% pruned twin (3 ch, {TWIN_RESOLUTION} px), sparse encoding (DENSIFY)"


def twin(weights):
    """The same weights in a 3-channel, 225 px model, whose stem meets XNNPACK's sparse-path
    rules; parameters do not depend on resolution, and the stem kernel is spread over three
    channels. At 225 px the convolutions do ~50x the work of 32 px, the regime the
    "Fast Sparse ConvNets" kernels were written for."""
    model = build(input_channels=3, resolution=TWIN_RESOLUTION)
    adapted = []
    for w, target in zip(weights, model.get_weights(), strict=True):
        if w.shape != target.shape:  # stem kernel (3, 3, 1, C) -> (3, 3, 3, C)
            w = np.repeat(w, 3, axis=2) / 3.0
        adapted.append(w)
    model.set_weights(adapted)
    return model


# --------------------------------------------------------------------------- report


def check_targets(rows: dict) -> list[dict]:
    float_top1 = rows["float32"]["top1"]
    r80 = rows["80% pruned + int8"]
    return [
        {
            "target": "float32 top-1 >= 92%",
            "measured": f"{100 * float_top1:.2f}%",
            "pass": float_top1 >= 0.92,
        },
        {
            "target": "int8 PTQ drop <= 0.5 points",
            "measured": f"{rows['int8 PTQ']['drop_points']:.2f}",
            "pass": rows["int8 PTQ"]["drop_points"] <= 0.5,
        },
        {
            "target": "QAT int8 drop <= 0.3 points",
            "measured": f"{rows['QAT int8']['drop_points']:.2f}",
            "pass": rows["QAT int8"]["drop_points"] <= 0.3,
        },
        {
            "target": "80% pruned + int8 drop <= 1.0 point",
            "measured": f"{r80['drop_points']:.2f}",
            "pass": r80["drop_points"] <= 1.0,
        },
        {
            "target": "80% pruned + int8 gzip <= 10% of float32 .tflite",
            "measured": f"{r80['gzip_bytes']:,} B = "
            f"{100 * r80['gzip_bytes'] / rows['float32']['tflite_bytes']:.1f}%",
            "pass": r80["gzip_bytes"] <= 0.10 * rows["float32"]["tflite_bytes"],
        },
    ]


def table_lines(result: dict) -> list[str]:
    lines = [
        "| model | top-1 (10k test) | .tflite bytes | gzip bytes | latency p50 (ms, 1 thread) | drop vs float (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['name']} | {100 * row['top1']:.2f}% | {row['tflite_bytes']:,} | "
            f"{row['gzip_bytes']:,} | {row['latency_p50_ms']:.3f} | {row['drop_points']:+.2f} |"
        )
    return lines


def markdown(result: dict) -> str:
    t = result["training"]
    cfg = result["config"]
    label = "QUICK RUN (subset, few epochs; not the real result)" if cfg["quick"] else "full run"
    out = [
        f"Measured by `benchmarks/compression.py` ({label}) on {result['machine']['date']}, "
        f"{result['machine']['cpus']} shared CPU cores.",
        "",
        f"MobileNetV2 width {MODEL['width']}, {MODEL['resolution']} px, {MODEL['input_channels']} "
        f"input channel, {t['params']:,} parameters. Trained {t['epochs']} epochs on "
        f"{t['train_samples']:,} Fashion-MNIST train images (batch {cfg['batch_size']}, Adam, cosine "
        f"decay from {cfg['lr']:g}, mirror augmentation) in {t['seconds'] / 60:.1f} min "
        f"({t['seconds'] / t['epochs']:.0f} s/epoch); held-out validation top-1 "
        f"{100 * t['val_accuracy']:.2f}% on {t['val_samples']:,} images carved from train. "
        f"Each compressed row fine-tunes the trained float model for {cfg['finetune_epochs']} "
        f"epoch(s) at learning rate {cfg['finetune_lr']:g}; int8 rows are full-integer (int8 I/O), "
        f"calibrated on {cfg['calibration_samples']} train images. Top-1 is measured in LiteRT on "
        f"the 10,000-image test split, used for nothing else. Whole run: "
        f"{result['wall_seconds'] / 60:.1f} min.",
        "",
        *table_lines(result),
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for tgt in result["targets"]:
        out.append(f"| {tgt['target']} | {tgt['measured']} | {'PASS' if tgt['pass'] else 'MISS'} |")
    sp = result.get("sparse_inference")
    if sp:
        out += [
            "",
            "Sparse inference (float32, LiteRT default XNNPACK delegate, 1 thread):",
            "",
            "| model | sparse encoding | .tflite bytes | latency p50 (ms) | top-1 |",
            "|---|---|---:|---:|---:|",
        ]
        for row in sp["rows"]:
            out.append(
                f"| {row['model']} | {'yes' if row['sparse_encoding'] else 'no'} | "
                f"{row['tflite_bytes']:,} | {row['latency_p50_ms']:.3f} | "
                + ("n/a (latency probe)" if row["top1"] is None else f"{100 * row['top1']:.2f}%")
                + " |"
            )
        out += ["", sp["finding"]]
    return "\n".join(out) + "\n"


def sparse_finding(sp: dict) -> str:
    r = {row["model"]: row for row in sp["rows"]}

    def speed(dense: str, other: str) -> str:
        a, b = r[dense]["latency_p50_ms"], r[other]["latency_p50_ms"]
        return f"{a:.3f} -> {b:.3f} ms ({a / b:.2f}x speed-up)"

    best = max(
        r[AS_BUILT_DENSE]["latency_p50_ms"] / r[AS_BUILT_SPARSE]["latency_p50_ms"],
        r[TWIN_DENSE]["latency_p50_ms"] / r[TWIN_SPARSE]["latency_p50_ms"],
    )
    verdict = (
        f"Verdict on this host: the pruned float32 model is not measurably faster (best {best:.2f}x, "
        "within run-to-run noise); either XNNPACK did not take its sparse path here or it gains "
        "nothing on this x86 CPU. Pruning buys size here, not float32 speed."
        if best < 1.1
        else f"Verdict on this host: sparse inference gives up to {best:.2f}x."
    )

    return (
        "No Python switch turns XNNPACK's sparse path on, and none is needed: the TFLite XNNPACK "
        "delegate passes XNN_FLAG_HINT_SPARSE_INFERENCE to XNNPACK by itself when the model holds "
        "sparse (DENSIFY) weights, i.e. when it was converted with `converters.tflite.convert(..., "
        "sparse=True)` (Optimize.EXPERIMENTAL_SPARSITY); LiteRT's `CpuOptions.xnnpack_flags` takes "
        "delegate flags, none of which is a sparse switch. XNNPACK then uses its NCHW sparse "
        "kernels only for a subgraph that starts with a 3x3 stride-2 conv on 3 input channels with "
        "padding 1 on each side and has >= 2/3 zeros in its 1x1 convs. As built (1 channel, "
        f"32 px) the model cannot qualify: dense -> 80% pruned, sparse-encoded "
        f"{speed(AS_BUILT_DENSE, AS_BUILT_SPARSE)}; pruned with dense encoding "
        f"{speed(AS_BUILT_DENSE, AS_BUILT_PRUNED)}. The twin with the same weights at 3 channels "
        f"and {TWIN_RESOLUTION} px meets the stem rule: dense -> sparse-encoded "
        f"{speed(TWIN_DENSE, TWIN_SPARSE)}; pruned with dense encoding "
        f"{speed(TWIN_DENSE, TWIN_PRUNED)}. Sparse encoding also shrinks the float32 file "
        f"({r[AS_BUILT_DENSE]['tflite_bytes']:,} -> {r[AS_BUILT_SPARSE]['tflite_bytes']:,} B). "
        "For int8 the converter's sparse encoding breaks XNNPACK (see the 80% row's notes), so the "
        "int8 rows use dense weights and rely on gzip for the zeros. " + verdict
    )


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        ax.scatter(row["tflite_bytes"] / 1024, 100 * row["top1"], marker="o", color="tab:blue")
        ax.scatter(row["gzip_bytes"] / 1024, 100 * row["top1"], marker="x", color="tab:orange")
        ax.annotate(row["name"], (row["gzip_bytes"] / 1024, 100 * row["top1"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax.scatter([], [], marker="o", color="tab:blue", label=".tflite")
    ax.scatter([], [], marker="x", color="tab:orange", label="gzip -9")
    ax.axhline(100 * result["rows"][0]["top1"], color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("size (KiB, log scale)")
    ax.set_ylabel("top-1 on the 10k test split (%)")
    quick = " (quick run)" if result["config"]["quick"] else ""
    ax.set_title(f"MobileNetV2 0.5, 32 px, Fashion-MNIST: accuracy vs size{quick}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def update_readme(md: str, readme: Path) -> bool:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        log(f"README markers not found in {readme}; section not written")
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    write_text(readme, f"{head}{README_BEGIN}\n{md}{README_END}{tail}", force=True)
    return True


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        if result["sparse_inference"].get("rows"):
            result["sparse_inference"]["finding"] = sparse_finding(result["sparse_inference"])
        return finish(result, args)
    from tqdm import tqdm

    from converters.tflite import convert
    from mobilecv._tf import tf
    from mobilecv.data.datasets import Split, load_arrays
    from mobilecv.train import evaluate, load_splits

    wall = time.perf_counter()
    tf().random.set_seed(args.seed)
    np.random.seed(args.seed)
    splits = load_splits("fashion_mnist", limit=args.train_limit)
    test = load_arrays("fashion_mnist", Split.TEST)
    x_test = test_images(test, MODEL["resolution"], MODEL["input_channels"])

    model, train_report = train_float(args, splits)
    weights = model.get_weights()
    if args.weights_dir:
        Path(args.weights_dir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.weights_dir) / "float.npz", *weights)
    keras_test = evaluate(model, test)["accuracy"]
    log(
        f"== trained in {train_report.seconds:.0f} s; val top-1 {train_report.val_accuracy:.4f}, "
        f"Keras test top-1 {keras_test:.4f}"
    )

    rows: dict[str, dict] = {}
    pruned80_weights = None
    stages = tqdm(ROWS, desc="variants", file=sys.stderr, unit="model")
    with tempfile.TemporaryDirectory(prefix="mobilecv-compression-") as tmp:
        workdir = Path(tmp)
        for name, kwargs, mode in stages:
            stages.set_postfix_str(name)
            log(f"== {name}")
            info = None
            source = model
            if kwargs is not None:
                source, info = finetune(args, splits, weights, kwargs)
                if kwargs.get("prune") == 0.8:
                    pruned80_weights = source.get_weights()
                    if args.weights_dir:
                        np.savez(Path(args.weights_dir) / "pruned80.npz", *pruned80_weights)
            res = convert(
                source,
                mode,
                calibration="fashion_mnist",
                samples=args.calibration_samples,
            )
            row = {
                "name": name,
                "top1": tflite_top1(res.tflite, x_test, test.y, name),
                "tflite_bytes": res.size,
                "gzip_bytes": gzip_size(res.tflite),
                "latency_p50_ms": latency_p50(res.tflite, workdir, name, args.runs),
                "conversion": conversion_summary(res),
                "finetune": info,
            }
            rows[name] = row
            log(
                f"   top-1 {row['top1']:.4f}, {row['tflite_bytes']:,} B, gzip {row['gzip_bytes']:,} B, "
                f"p50 {row['latency_p50_ms']:.3f} ms"
                + (f"; notes: {res.notes}" if res.notes else "")
            )
        log("== sparse inference")
        try:
            sparse = sparse_inference(args, weights, pruned80_weights, x_test, test.y, workdir)
            sparse["finding"] = sparse_finding(sparse)
        except Exception as exc:  # keep the main table even if the side experiment fails
            log(f"sparse-inference experiment failed: {exc!r}")
            sparse = {"rows": [], "finding": f"sparse-inference experiment failed: {exc!r}"}

    float_top1 = rows["float32"]["top1"]
    for row in rows.values():
        row["drop_points"] = round(100 * (float_top1 - row["top1"]), 2)
    result = {
        "config": {
            k: v
            for k, v in vars(args).items()
            if k not in ("json", "out", "no_readme", "render", "weights_dir")
        },
        "model": MODEL,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "training": {
            "epochs": train_report.epochs,
            "batch_size": train_report.batch_size,
            "train_samples": train_report.train_samples,
            "val_samples": train_report.val_samples,
            "params": int(model.count_params()),
            "seconds": train_report.seconds,
            "val_accuracy": train_report.val_accuracy,
            "keras_test_accuracy": keras_test,
            "history": train_report.history,
        },
        "rows": list(rows.values()),
        "targets": check_targets(rows),
        "sparse_inference": sparse,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    return finish(result, args)


def finish(result: dict, args) -> int:
    """Write JSON, Markdown, PNG (and the README section), then print the table."""
    quick = result["config"]["quick"]
    stem = "compression_quick" if quick else "compression"
    out_dir = Path(args.out)
    md = markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{stem}.json", result, force=True)
    write_text(out_dir / f"{stem}.md", md, force=True)
    write_plot(result, out_dir / f"{stem}.png")
    if not args.no_readme:
        update_readme(md, ROOT / "README.md")

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        t = result["training"]
        print(
            f"mobilenet_v2 w0.5 32px: {t['epochs']} epochs on {t['train_samples']:,} images, "
            f"training {t['seconds']:.0f} s, whole run {result['wall_seconds']:.0f} s"
            + (" [QUICK]" if quick else "")
        )
        print("\n".join(table_lines(result)))
        for tgt in result["targets"]:
            print(f"{'PASS' if tgt['pass'] else 'MISS'}  {tgt['target']}: {tgt['measured']}")
        print(result["sparse_inference"]["finding"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measured compression results: MobileNetV2 (width 0.5, 32 px, 1 channel) on Fashion-MNIST.

Trains the float model on the Fashion-MNIST TRAIN split (the library carves a
held-out validation split from it), then derives ten .tflite variants from it and
measures each on the untouched 10k TEST split:

    float32, dynamic, float16, int8 PTQ, QAT int8, 50% pruned + int8,
    80% pruned + int8, 80% pruned + int8 per-tensor, 2:4 + int8, 16-cluster + int8

Every fine-tune (QAT, pruning, clustering) starts from the trained float weights and
fine-tunes on the train split only. Pruning gets its own, longer fine-tune with a
cosine-decayed rate: the mask grows over the first 75% of it and the weights recover
in the rest. The per-tensor row is the same 80%-pruned model converted with one weight
scale per tensor: per-channel int8 stores two float32 scales and two int64 zero points
per output channel, which on this model is about a fifth of the gzipped file (the
run prints the breakdown). Columns: top-1 on the test set, .tflite bytes, gzip -9
bytes, 1-thread LiteRT latency (p50, measured in a child process by
`mobilecv.bench.run`) and the drop vs float32 in points. The issue's targets are
checked and printed as PASS/MISS.

Sparse inference: XNNPACK's sparse (NCHW, "Fast Sparse ConvNets") path cannot be
switched on from Python; the TFLite XNNPACK delegate hints it to XNNPACK by itself
when the model stores weights in sparse form (DENSIFY ops, i.e. the converter's
`Optimize.EXPERIMENTAL_SPARSITY`, `mobilecv.converters.tflite.convert(..., sparse=True)`),
and XNNPACK then uses it only if the subgraph qualifies (3x3 stride-2 stem conv with
3 input channels and padding 1 on each side, >= 2/3 zeros in the 1x1 convs). This
script measures dense vs pruned vs sparse-encoded float32 models, both as built
(1 channel, 32 px: the stem does not qualify) and as a weight-sharing twin built to
qualify (3 channels, 33 px, so SAME padding is 1 on each side).

Usage:
    python benchmarks/compression.py [--quick] [--epochs N] [--finetune-epochs N]
        [--prune-epochs N] [--json] [--out DIR] [--no-readme]

Writes DIR/compression[_quick].json, .md and .png atomically and rewrites the README
section between `<!-- compression:begin -->` and `<!-- compression:end -->`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _support import common

import mobilecv
from mobilecv.fileio import write_text

MODEL = {"name": "mobilenet_v2", "width": 0.5, "resolution": 32, "classes": 10, "input_channels": 1}

# Fine-tunes, each from the trained float weights: compress() keyword arguments.
FINETUNES = {
    "qat": {"qat": True},
    "prune50": {"prune": 0.5},
    "prune80": {"prune": 0.8},
    "prune2by4": {"prune_2by4": True},
    "cluster16": {"cluster": 16},
}
PRUNING = ("prune50", "prune80", "prune2by4")
# (row name, fine-tune or None for post-training only, convert() keyword arguments)
ROWS = [
    ("float32", None, {"quantize": "none"}),
    ("dynamic", None, {"quantize": "dynamic"}),
    ("float16", None, {"quantize": "float16"}),
    ("int8 PTQ", None, {"quantize": "int8"}),
    ("QAT int8", "qat", {"quantize": "int8"}),
    ("50% pruned + int8", "prune50", {"quantize": "int8"}),
    ("80% pruned + int8", "prune80", {"quantize": "int8"}),
    ("80% pruned + int8 per-tensor", "prune80", {"quantize": "int8", "per_channel": False}),
    ("2:4 + int8", "prune2by4", {"quantize": "int8"}),
    ("16-cluster + int8", "cluster16", {"quantize": "int8"}),
]
PRUNED80_ROWS = ("80% pruned + int8", "80% pruned + int8 per-tensor")
QUICK_VAL = 2000  # held-out images per evaluation in --quick runs (full runs: all 6,000)
CROP_PADDING = 2  # reflect-pad random crop; the float model and the pruning fine-tunes
AUGMENT_LABEL = f"mirror, {CROP_PADDING}-px random crop"
# Weight input (position 1) of each op, as gzip_breakdown groups it.
WEIGHT_PARTS = {
    "CONV_2D": "kernels",
    "FULLY_CONNECTED": "kernels",
    "DEPTHWISE_CONV_2D": "depthwise",
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few epochs on a train subset (< 10 min)")
    p.add_argument("--epochs", type=int, help="float training epochs (default 50, quick 2)")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        help="epochs per QAT/cluster fine-tune (default 2, quick 1)",
    )
    p.add_argument(
        "--prune-epochs", type=int, help="epochs per pruning fine-tune (default 10, quick 1)"
    )
    p.add_argument(
        "--train-limit", type=int, help="training images (default all 54,000; quick 4,000)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak float learning rate (cosine decay)")
    p.add_argument("--finetune-lr", type=float, default=2e-4, help="QAT/cluster rate (constant)")
    p.add_argument("--prune-lr", type=float, default=1e-3, help="peak pruning rate (cosine decay)")
    p.add_argument(
        "--prune-allocation",
        choices=("uniform", "erk"),
        default="erk",
        help="how the target sparsity is spread over layers",
    )
    p.add_argument(
        "--calibration-samples", type=int, help="int8 calibration images (default 500, quick 200)"
    )
    p.add_argument("--runs", type=int, default=100, help="timed LiteRT runs per model")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=str(common.OUT), help="output directory")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--weights-dir",
        help="also save the float weights and training report, and the 80%%-pruned weights, here",
    )
    p.add_argument(
        "--float-from",
        metavar="DIR",
        help="skip float training: reuse float.npz and float.json that --weights-dir saved",
    )
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only re-render the table, Markdown, PNG and README section from a results JSON",
    )
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 50
    if args.finetune_epochs is None:
        args.finetune_epochs = 1 if args.quick else 2
    if args.prune_epochs is None:
        args.prune_epochs = 1 if args.quick else 10
    if args.calibration_samples is None:
        args.calibration_samples = 200 if args.quick else 500
    if args.train_limit is None and args.quick:
        args.train_limit = 4000
    for name in (
        "epochs",
        "finetune_epochs",
        "prune_epochs",
        "batch_size",
        "calibration_samples",
        "runs",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --------------------------------------------------------------------------- helpers


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

    return prepare_images(test.x, resolution, channels).numpy()


def tflite_top1(data: bytes, x: np.ndarray, y: np.ndarray, desc: str) -> float:
    from mobilecv.evaluate import TfliteModel, top1
    from mobilecv.progress import Progress

    model = TfliteModel(data, threads=1)
    chunks = np.array_split(np.arange(len(x)), 20)
    probs = []
    # The caller logs the figure: only a live bar, no line of its own in a log file.
    with Progress(f"test {desc}", len(chunks), "chunk", summary=False) as bar:
        for idx in chunks:
            probs.append(model.predict(x[idx]))
            bar.update()
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
    keys = ("mode", "io", "qat", "sparse", "per_channel", "bytes", "verification", "notes")
    return {k: d[k] for k in keys}


def convert_row(model, args, convert_kwargs: dict, sparse: bool):
    from mobilecv.converters.tflite import convert

    return convert(
        model,
        calibration="fashion_mnist",
        samples=args.calibration_samples,
        sparse=sparse,
        **convert_kwargs,
    )


def sparse_encoded(model, args, convert_kwargs) -> dict:
    """The same conversion with the converter's sparse (DENSIFY) weight encoding."""
    res = convert_row(model, args, convert_kwargs, sparse=True)
    return {
        "sparse": res.sparse,  # False when LiteRT refused it and the converter fell back
        "tflite_bytes": res.size,
        "gzip_bytes": gzip_size(res.tflite),
        "runtime": res.verification.runtime if res.verification else None,
        "notes": res.notes,
    }


def gzip_breakdown(data: bytes) -> dict:
    """gzip -9 bytes of each part of a dense-encoded int8 file, each compressed on its own.

    kernels: conv/dense weights (what pruning zeroes); depthwise: depthwise kernels
    (tfmot leaves them dense); biases; quant_params: every scale and zero point. Also
    the order-0 entropy of the kernels (mask + values), a floor no byte coder beats.
    """
    from mobilecv import tflite_graph

    graph = tflite_graph.load(data)
    parts: dict[str, list[bytes]] = {"kernels": [], "depthwise": [], "biases": []}
    for op in graph.ops:
        weights = WEIGHT_PARTS.get(op.opcode)
        if weights is None:
            continue
        for position, part in ((1, weights), (2, "biases")):
            if len(op.inputs) > position and op.inputs[position] >= 0:
                stored = graph.data(graph.tensors[op.inputs[position]])
                if stored is not None:
                    parts[part].append(bytes(stored))
    quant = b"".join(
        np.asarray(t.scale, np.float32).tobytes() + np.asarray(t.zero_point, np.int64).tobytes()
        for t in graph.tensors
    )
    out = {name: gzip_size(b"".join(chunks)) for name, chunks in parts.items()}
    out["quant_params"] = gzip_size(quant)
    out["quant_params_raw"] = len(quant)
    kernel = np.frombuffer(b"".join(parts["kernels"]), np.int8)
    out["kernel_entropy_bytes"] = int(np.ceil(_order0_entropy_bits(kernel) / 8))
    out["total"] = gzip_size(data)
    return out


def _order0_entropy_bits(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() * values.size)


def cosine_lr(args, train_samples: int):
    from mobilecv._tf import get_keras
    from mobilecv.train import steps_per_epoch

    K = get_keras("tf_keras")
    steps = args.epochs * steps_per_epoch(train_samples, args.batch_size)
    # Keras optimizers take a schedule wherever they take a rate; decaying to 1% of the
    # peak over the run is worth ~1 point over a constant rate at this epoch count.
    return K.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps, alpha=0.01)


# --------------------------------------------------------------------------- stages


def augmentation():
    from mobilecv.data.augment import Mirror, RandomCrop, compose

    return compose(Mirror(), RandomCrop(CROP_PADDING))


def train_float(args, splits):
    from mobilecv.train import train

    model = build()
    common.log(
        f"== training {MODEL['name']} on {len(splits.train)} images for {args.epochs} epochs"
    )
    model, report = train(
        model,
        splits,
        args.epochs,
        batch_size=args.batch_size,
        learning_rate=cosine_lr(args, len(splits.train)),
        augment=augmentation(),
    )
    return model, report


def save_float(folder: Path, weights, report) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "float.npz", *weights)
    # The rate is a schedule object; its config is what a reader needs.
    config = json.dumps(report.to_dict(), indent=2, default=lambda o: o.get_config())
    write_text(folder / "float.json", config, force=True)


def load_float(folder: Path):
    """The float model and training report that an earlier run saved with --weights-dir."""
    from mobilecv.train import TrainReport

    try:
        with np.load(folder / "float.npz") as npz:
            weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        report = TrainReport(**json.loads((folder / "float.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"error: --float-from {folder}: {exc}") from None
    model = fresh_from(weights)
    common.log(
        f"== reusing float weights from {folder} ({report.epochs} epochs, {report.seconds:.0f} s)"
    )
    return model, report


def finetune_settings(args, key: str) -> dict:
    """compress() arguments besides the technique: pruning fine-tunes longer, cosine."""
    if key in PRUNING:
        settings = {
            "epochs": args.prune_epochs,
            "learning_rate": args.prune_lr,
            "schedule": "cosine",
            "augment": augmentation(),
        }
        if key != "prune2by4":  # 2:4 is the same pattern in every layer
            settings["prune_allocation"] = args.prune_allocation
        return settings
    return {"epochs": args.finetune_epochs, "learning_rate": args.finetune_lr}


def finetune(args, splits, weights, key: str):
    from mobilecv.compress.pipeline import compress

    kwargs = FINETUNES[key]
    settings = finetune_settings(args, key)
    model = fresh_from(weights)
    start = time.perf_counter()
    model, report = compress(
        model,
        splits,
        batch_size=args.batch_size,
        **kwargs,
        **settings,
    )
    seconds = time.perf_counter() - start
    last = report.stages[-1]
    return model, {
        "technique": dict(kwargs),
        **settings,
        "augment": AUGMENT_LABEL if "augment" in settings else None,
        "seconds": round(seconds, 1),
        "val_accuracy_before": report.stages[0].val_accuracy,
        "val_accuracy_after": last.val_accuracy,
        "kernel_sparsity": last.sparsity,
        "max_unique_weights": last.max_unique_weights,
        "qat_scheme": report.qat_scheme,
        "layer_targets": last.details.get("layer_targets"),
    }


def sparse_inference(args, weights, pruned80_weights, x, y, workdir: Path, dense_row) -> dict:
    """Dense vs pruned vs sparse-encoded float32 latency in LiteRT (default XNNPACK).

    The dense as-built model is the main table's float32 row; --quick skips the twin.
    """
    from mobilecv.converters.tflite import convert

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
        common.log(f"   {label}: {row['latency_p50_ms']:.3f} ms, sparse={row['sparse_encoding']}")
        return row

    rows = [
        {
            "model": AS_BUILT_DENSE,
            "sparse_encoding": False,
            **{k: dense_row[k] for k in ("tflite_bytes", "gzip_bytes", "latency_p50_ms", "top1")},
            "runtime": dense_row["conversion"]["verification"]["runtime"],
            "notes": dense_row["conversion"]["notes"],
        }
    ]
    for label, w, sparse in (
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
        if not args.quick:
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
    float_bytes = rows["float32"]["tflite_bytes"]
    targets = [
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
    ]
    for name in PRUNED80_ROWS:
        row = rows[name]
        targets += [
            {
                "target": f"{name} drop <= 1.0 point",
                "measured": f"{row['drop_points']:.2f}",
                "pass": row["drop_points"] <= 1.0,
            },
            {
                "target": f"{name} gzip <= 10% of float32 .tflite",
                "measured": f"{row['gzip_bytes']:,} B = {100 * row['gzip_bytes'] / float_bytes:.1f}%",
                "pass": row["gzip_bytes"] <= 0.10 * float_bytes,
            },
        ]
    return targets


def breakdown_text(result: dict) -> str:
    """Where the gzipped bytes of the two 80%-pruned rows go, against the 10% budget."""
    rows = {row["name"]: row for row in result["rows"]}
    budget = 0.10 * rows["float32"]["tflite_bytes"]
    parts = []
    for name in PRUNED80_ROWS:
        b = rows[name].get("gzip_breakdown")
        if not b:
            return ""
        text = (
            f"{name}: pruned kernels {b['kernels']:,} B (order-0 entropy floor "
            f"{b['kernel_entropy_bytes']:,} B), depthwise kernels {b['depthwise']:,} B, biases "
            f"{b['biases']:,} B, scales and zero points {b['quant_params']:,} B "
            f"({b['quant_params_raw']:,} B raw)"
        )
        enc = rows[name].get("sparse_encoded")
        if enc and enc["sparse"]:
            text += (
                f"; with the converter's sparse (DENSIFY) encoding the file is "
                f"{enc['tflite_bytes']:,} B, gzip {enc['gzip_bytes']:,} B ({enc['runtime']} runtime)"
            )
        elif enc:
            text += "; sparse encoding was refused by LiteRT's default runtime: " + "; ".join(
                enc["notes"]
            )
        parts.append(text)
    return (
        f"Where the gzip bytes go (each part compressed on its own; the 10% budget is "
        f"{budget:,.0f} B): " + "; ".join(parts) + "."
    )


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


def run_time_text(result: dict) -> str:
    minutes = f"{result['wall_seconds'] / 60:.1f} min"
    if result["training"].get("reused"):
        return (
            f"This run reused the float model of an earlier run (--float-from) and took {minutes}"
        )
    return f"Whole run: {minutes}"


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
        f"decay from {cfg['lr']:g}, {AUGMENT_LABEL} augmentation) in "
        f"{t['seconds'] / 60:.1f} min ({t['seconds'] / t['epochs']:.0f} s/epoch); held-out "
        f"validation top-1 {100 * t['val_accuracy']:.2f}% on {t['val_samples']:,} images carved "
        f"from train. QAT and clustering fine-tune the trained float model for "
        f"{cfg['finetune_epochs']} epoch(s) at a constant {cfg['finetune_lr']:g}; each pruning row "
        f"fine-tunes it for {cfg['prune_epochs']} epochs from {cfg['prune_lr']:g} with cosine "
        f"decay (sparsity spread over layers: {cfg['prune_allocation']}). int8 rows are "
        f"full-integer (int8 I/O), calibrated on {cfg['calibration_samples']} train images, with "
        f"per-channel weight scales unless the row says per-tensor. Top-1 is measured in LiteRT on "
        f"the 10,000-image test split, used for nothing else. {run_time_text(result)}.",
        "",
        *table_lines(result),
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for tgt in result["targets"]:
        out.append(f"| {tgt['target']} | {tgt['measured']} | {'PASS' if tgt['pass'] else 'MISS'} |")
    breakdown = breakdown_text(result)
    if breakdown:
        out += ["", breakdown]
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

    twin_measured = TWIN_DENSE in r
    best = r[AS_BUILT_DENSE]["latency_p50_ms"] / r[AS_BUILT_SPARSE]["latency_p50_ms"]
    if twin_measured:
        best = max(best, r[TWIN_DENSE]["latency_p50_ms"] / r[TWIN_SPARSE]["latency_p50_ms"])
    twin = (
        f"The twin with the same weights at 3 channels and {TWIN_RESOLUTION} px meets the stem "
        f"rule: dense -> sparse-encoded {speed(TWIN_DENSE, TWIN_SPARSE)}; pruned with dense "
        f"encoding {speed(TWIN_DENSE, TWIN_PRUNED)}. "
        if twin_measured
        else f"(The {TWIN_RESOLUTION} px twin that meets the stem rule is measured in full runs only.) "
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
        "sparse (DENSIFY) weights, i.e. when it was converted with `mobilecv.converters.tflite.convert(..., "
        "sparse=True)` (Optimize.EXPERIMENTAL_SPARSITY); LiteRT's `CpuOptions.xnnpack_flags` takes "
        "delegate flags, none of which is a sparse switch. XNNPACK then uses its NCHW sparse "
        "kernels only for a subgraph that starts with a 3x3 stride-2 conv on 3 input channels with "
        "padding 1 on each side and has >= 2/3 zeros in its 1x1 convs. As built (1 channel, "
        f"32 px) the model cannot qualify: dense -> 80% pruned, sparse-encoded "
        f"{speed(AS_BUILT_DENSE, AS_BUILT_SPARSE)}; pruned with dense encoding "
        f"{speed(AS_BUILT_DENSE, AS_BUILT_PRUNED)}. {twin}Sparse encoding also shrinks the float32 file "
        f"({r[AS_BUILT_DENSE]['tflite_bytes']:,} -> {r[AS_BUILT_SPARSE]['tflite_bytes']:,} B). "
        "The main table's rows are converted with dense weights, so every gzip figure measures the "
        "same encoding; the 80% rows' sparse-encoded sizes follow the gzip breakdown. " + verdict
    )


def write_plot(result: dict, path: Path) -> None:
    fig, ax = common.pyplot().subplots(figsize=(7, 4.5))
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
    common.save_png(fig, path, dpi=120)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        if result["sparse_inference"].get("rows"):
            result["sparse_inference"]["finding"] = sparse_finding(result["sparse_inference"])
        return finish(result, args)
    from mobilecv._tf import tf
    from mobilecv.data.datasets import Split, load_arrays
    from mobilecv.progress import Progress
    from mobilecv.train import evaluate, load_splits

    wall = time.perf_counter()
    tf().random.set_seed(args.seed)
    np.random.seed(args.seed)
    splits = load_splits(
        "fashion_mnist", limit=args.train_limit, val_limit=QUICK_VAL if args.quick else None
    )
    test = load_arrays("fashion_mnist", Split.TEST)
    x_test = test_images(test, MODEL["resolution"], MODEL["input_channels"])

    if args.float_from:
        model, train_report = load_float(Path(args.float_from))
    else:
        model, train_report = train_float(args, splits)
    weights = model.get_weights()
    if args.weights_dir:
        save_float(Path(args.weights_dir), weights, train_report)
    keras_test = evaluate(model, test)["accuracy"]
    common.log(
        f"== trained in {train_report.seconds:.0f} s; val top-1 {train_report.val_accuracy:.4f}, "
        f"Keras test top-1 {keras_test:.4f}"
    )

    rows: dict[str, dict] = {}
    tuned: dict[str, tuple] = {}  # fine-tune key -> (model, info), shared by rows
    stages = Progress("variants", len(ROWS), "model")
    with stages, tempfile.TemporaryDirectory(prefix="mobilecv-compression-") as tmp:
        workdir = Path(tmp)
        for name, key, convert_kwargs in ROWS:
            stages.note(name)
            common.log(f"== {name}")
            info = None
            source = model
            if key is not None:
                if key not in tuned:
                    tuned[key] = finetune(args, splits, weights, key)
                    if key == "prune80" and args.weights_dir:
                        np.savez(
                            Path(args.weights_dir) / "pruned80.npz", *tuned[key][0].get_weights()
                        )
                source, info = tuned[key]
            started = time.perf_counter()
            # Dense weights in every row, so each gzip figure measures the same encoding;
            # the 80% rows also record the converter's sparse encoding below.
            res = convert_row(source, args, convert_kwargs, sparse=False)
            row = {
                "name": name,
                "top1": tflite_top1(res.tflite, x_test, test.y, name),
                "tflite_bytes": res.size,
                "gzip_bytes": gzip_size(res.tflite),
                "latency_p50_ms": latency_p50(res.tflite, workdir, name, args.runs),
                "conversion": conversion_summary(res),
                "finetune": info,
            }
            if name in PRUNED80_ROWS:
                row["gzip_breakdown"] = gzip_breakdown(res.tflite)
                if not args.quick:  # informative only; quick runs must stay under 10 min
                    row["sparse_encoded"] = sparse_encoded(source, args, convert_kwargs)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows[name] = row
            common.log(
                f"   top-1 {row['top1']:.4f}, {row['tflite_bytes']:,} B, gzip {row['gzip_bytes']:,} B, "
                f"p50 {row['latency_p50_ms']:.3f} ms, {row['seconds']:.0f} s"
                + (f" (+ fine-tune {info['seconds']:.0f} s)" if info else "")
                + (f"; notes: {res.notes}" if res.notes else "")
            )
            stages.update()
        common.log("== sparse inference")
        try:
            pruned80_weights = tuned["prune80"][0].get_weights()
            sparse = sparse_inference(
                args, weights, pruned80_weights, x_test, test.y, workdir, rows["float32"]
            )
            sparse["finding"] = sparse_finding(sparse)
        except Exception as exc:  # keep the main table even if the side experiment fails
            common.log(f"sparse-inference experiment failed: {exc!r}")
            sparse = {"rows": [], "finding": f"sparse-inference experiment failed: {exc!r}"}

    float_top1 = rows["float32"]["top1"]
    for row in rows.values():
        row["drop_points"] = round(100 * (float_top1 - row["top1"]), 2)
    result = {
        "config": common.run_config(
            args, ("json", "out", "no_readme", "render", "weights_dir", "float_from")
        ),
        "model": MODEL,
        "machine": {k: v for k, v in common.machine().items() if k in ("cpus", "platform", "date")},
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
            "reused": bool(args.float_from),
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
    stem = common.output_stem("compression", quick)
    md = markdown(result)
    common.write_result(args.out, stem, result, md)
    write_plot(result, Path(args.out) / f"{stem}.png")
    if not args.no_readme:
        common.update_readme("compression", md)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        t = result["training"]
        print(
            f"mobilenet_v2 w0.5 32px: {t['epochs']} epochs on {t['train_samples']:,} images, "
            f"training {t['seconds']:.0f} s. {run_time_text(result)}"
            + (" [QUICK]" if quick else "")
        )
        print("\n".join(table_lines(result)))
        for tgt in result["targets"]:
            print(common.target_line(tgt))
        breakdown = breakdown_text(result)
        if breakdown:
            print(breakdown)
        print(result["sparse_inference"]["finding"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

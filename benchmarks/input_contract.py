"""EfficientNet-Lite0 on Fashion-MNIST: float and int8 top-1 under the input contract.

efficientnet_lite0 at width 0.5, 32 px, 1 channel, 10 classes, trained twice the same
way (same seed, images, epochs, schedule) on the Fashion-MNIST TRAIN split:

- fixed: the model declares `unit` ([0, 1]); its graph maps that to Lite's
  (p - 127) / 128 and every stage (training, calibration, evaluation) feeds [0, 1].
- old contract: the graph scales pixels ((x - 127) / 128, as `pixels` builds it) but the
  pipeline feeds [0, 1], as before issue 11: the stem sees [-0.992, -0.984].

Each row: Keras float32 top-1 and int8 top-1 (post-training, int8 I/O, calibrated on
train images, run in LiteRT) on the untouched 10k TEST split, the drop in points, and
how many of the 256 int8 levels the stem conv's input takes on 256 test images. The
issue's target (int8 drop <= 0.5 points for the fixed model) is printed as PASS/MISS.

Usage:
    python benchmarks/input_contract.py [--quick] [--epochs N] [--json] [--out DIR]

Writes DIR/input_contract[_quick].json atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _support import common

import mobilecv

MODEL = {
    "name": "efficientnet_lite0",
    "width": 0.5,
    "resolution": 32,
    "classes": 10,
    "input_channels": 1,
}
STEM_IMAGES = 256
TARGET_DROP_POINTS = 0.5
# row -> (range the graph is built for, range every stage feeds)
CONTRACTS = {
    "fixed (declares unit, fed [0, 1])": ("unit", (0.0, 1.0)),
    "old (pixels graph fed [0, 1])": ("pixels", (0.0, 1.0)),
}
PACKAGES = ("tensorflow", "tf_keras", "keras", "ai-edge-litert", "numpy", "mobilecv")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and images (< 10 min)")
    p.add_argument("--epochs", type=int, help="training epochs per row (default 5, quick 2)")
    p.add_argument("--train-limit", type=int, help="training images (default all; quick 6,000)")
    p.add_argument("--test-limit", type=int, help="test images (default all 10,000)")
    p.add_argument("--calibration-samples", type=int, default=500, help="int8 calibration images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=str(common.OUT), help="output directory")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 5
    if args.train_limit is None and args.quick:
        args.train_limit = 6000
    for name in ("epochs", "calibration_samples", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def build_for(contract: str):
    """The model of one row: built for one range, told it is fed another."""
    from mobilecv.modelinfo import ModelInfo, get_info, set_info

    graph_range, fed = CONTRACTS[contract]
    spec = dict(MODEL)
    model = mobilecv.build(spec.pop("name"), input_range=graph_range, **spec)
    info = get_info(model)
    # The old contract: every stage feeds [0, 1] whatever the graph expects.
    return set_info(model, ModelInfo(input_range=fed, task=info.task, source=info.source))


def run_row(contract: str, args, splits, test) -> dict:
    from mobilecv._tf import tf
    from mobilecv.converters.tflite import convert
    from mobilecv.data.datasets import model_inputs
    from mobilecv.evaluate import TfliteModel, stem_input_levels, top1
    from mobilecv.train import evaluate, train

    tf().keras.utils.set_random_seed(args.seed)
    model = build_for(contract)
    started = time.perf_counter()
    model, report = train(
        model,
        splits,
        args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        schedule="cosine",
        progress=False,
    )
    common.log(f"   trained in {report.seconds:.0f} s, val top-1 {report.val_accuracy:.4f}")
    float_top1 = evaluate(model, test)["accuracy"]
    result = convert(
        model,
        "int8",
        calibration="fashion_mnist",
        samples=args.calibration_samples,
        progress=False,
    )
    x = model_inputs(test.x, model)
    int8_top1 = top1(TfliteModel(result.tflite).predict(x), test.y)
    return {
        "contract": contract,
        "graph_range": CONTRACTS[contract][0],
        "fed_range": list(CONTRACTS[contract][1]),
        "float_top1": float_top1,
        "int8_top1": int8_top1,
        "drop_points": round(100 * (float_top1 - int8_top1), 2),
        "stem_int8_levels": stem_input_levels(result.tflite, x[:STEM_IMAGES]),
        "val_top1": report.val_accuracy,
        "train_seconds": report.seconds,
        "tflite_bytes": result.size,
        "verification": result.verification.to_dict() if result.verification else None,
        "params": int(model.count_params()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table_lines(result: dict) -> list[str]:
    lines = [
        f"{'contract':<36} {'float top-1':>11} {'int8 top-1':>10} {'drop (pts)':>10} "
        f"{'stem int8 levels':>16}"
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['contract']:<36} {r['float_top1']:>11.4f} {r['int8_top1']:>10.4f} "
            f"{r['drop_points']:>10.2f} {r['stem_int8_levels']:>16}"
        )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    from mobilecv.data.datasets import Split, load_arrays
    from mobilecv.train import load_splits

    wall = time.perf_counter()
    splits = load_splits("fashion_mnist", limit=args.train_limit)
    test = load_arrays("fashion_mnist", Split.TEST, limit=args.test_limit)
    rows = []
    for contract in CONTRACTS:
        common.log(f"== {contract}")
        rows.append(run_row(contract, args, splits, test))
        r = rows[-1]
        common.log(
            f"   float {r['float_top1']:.4f}, int8 {r['int8_top1']:.4f}, stem levels {r['stem_int8_levels']}"
        )
    fixed = rows[0]
    result = {
        "config": common.run_config(args, ("json", "out")),
        "model": MODEL,
        "data": {
            "dataset": "fashion_mnist",
            "train_samples": len(splits.train),
            "val_samples": len(splits.validation),
            "test_samples": len(test),
        },
        "machine": common.machine(PACKAGES),
        "rows": rows,
        "target": {
            "target": f"int8 drop <= {TARGET_DROP_POINTS} points (fixed contract)",
            "measured": fixed["drop_points"],
            "pass": fixed["drop_points"] <= TARGET_DROP_POINTS,
        },
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    common.write_result(args.out, common.output_stem("input_contract", args.quick), result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"efficientnet_lite0 w0.5 32px 1ch on Fashion-MNIST: {args.epochs} epochs on "
        f"{len(splits.train):,} images, test {len(test):,} images, "
        f"{result['wall_seconds'] / 60:.1f} min" + (" [QUICK]" if args.quick else "")
    )
    print("\n".join(table_lines(result)))
    print(common.target_line(result["target"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

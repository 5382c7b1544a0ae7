"""`make demo`: the default recipe end to end on the real Fashion-MNIST.

Trains a small MobileNetV2, quantises it to int8, converts it (with a C array for
TFLite Micro), evaluates float and int8 on the 10k test split, benchmarks on this host,
a Pixel-1-class phone and an STM32H743, writes report.md, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mobilecv import recipe
from mobilecv.profiling import format_table, profile
from mobilecv.runner import run

DEFAULT_RECIPE = "mobilenet_v2_fashion_int8"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe name or path")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="recipe override (repeatable)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    loaded = recipe.load(args.recipe, args.overrides)
    summary = run(loaded, args.out)
    out = Path(args.out)

    from mobilecv.converters.tflite import load_keras_model

    print()
    print(
        format_table(profile(load_keras_model(out / "model.keras"), name=loaded.model.name), top=8)
    )
    evaluation = json.loads((out / "evaluate.json").read_text())
    rows = evaluation["metrics"]
    print(f"\nTop-1 on {evaluation['test_samples']:,} Fashion-MNIST test images:")
    for row in rows:
        size = f"{row['bytes']:>10,} B" if row["bytes"] else " " * 12
        drop = 100 * (row["accuracy"] - rows[0]["accuracy"])
        print(f"  {row['model']:<16} {100 * row['accuracy']:6.2f}%  {drop:+5.2f} pt  {size}")
    print("\nDevices:")
    for device in loaded.devices:
        bench = json.loads((out / f"bench_{device.name}.json").read_text())
        p50 = (bench.get("latency_ms") or {}).get("p50")
        latency = (
            f"measured p50 {p50:.3f} ms"
            if p50
            else f"estimated {bench['estimate']['latency_ms']:.2f} ms"
        )
        reasons = "; ".join(bench.get("reasons") or [])
        print(f"  {device.name:<10} {bench['verdict']:<13} {latency}  {reasons}")
    print(
        f"\nReport: {out / 'report.md'}   (steps run: {', '.join(summary['ran']) or 'none, all up to date'})"
    )
    print(f"Total: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

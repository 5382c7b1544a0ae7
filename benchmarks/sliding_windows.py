"""Sliding windows: every crop through the window classifier vs one convolutional pass.

Two window classifiers with random weights (latency and MACs do not depend on the
weights):
- the course's example: 14x14x3 windows, conv 5x5x16, 2x2 max pool, FC 400, FC 400,
  softmax over 4 (window stride 2);
- the registered lenet5 at 32 px, 1 channel, 10 classes (window stride 4).

For each image size, `mobilecv.fully_conv` gives the MACs of both ways (profiling's
rules, batch 1), and LiteRT measures both ways' latency in the same run, 1 thread, one
pinned core, float32 and int8 (full integer, calibrated on 100 random images):
- naive, loop: the window model (batch 1) invoked once per crop from a Python loop;
- naive, batched: the window model resized to a batch of all crops, one invoke;
- convolutional: the fully convolutional model built for the image size, one invoke.
Crops are cut and inputs quantised before timing. Each repeat runs the three ways in
turn (so load from other processes hits all three alike); the figures are medians over
the repeats. The run also checks that the grids agree: float32 naive vs convolutional
(max abs difference), int8 convolutional vs float32 Keras (arg-max agreement per cell).

Usage:
    python benchmarks/sliding_windows.py [--quick] [--repeats N] [--json] [--out DIR]

Writes DIR/sliding_windows[_quick].json atomically (CPU model, versions and date in it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np
from _support import common

import mobilecv

# model name -> image sizes to slide over (the first is the smallest the brief asks for)
SIZES = {"course": (28, 64, 128), "lenet5": (64, 128)}
MODES = ("none", "int8")
CALIBRATION_ROWS = 100
VERIFY_ROWS = 16


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (< 10 min)")
    p.add_argument("--repeats", type=int, help="timed repeats per way (default 51, quick 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=str(common.OUT))
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 51
    return args


# --------------------------------------------------------------------------- models


def window_models(seed: int) -> dict:
    from mobilecv._tf import get_keras
    from mobilecv.fully_conv import course_example

    get_keras("tf_keras").utils.set_random_seed(seed)
    return {
        "course": course_example("tf_keras"),
        "lenet5": mobilecv.build("lenet5", resolution=32, classes=10),
    }


def convert(model, mode: str, rng) -> bytes:
    from mobilecv.converters.tflite import convert as to_tflite

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    rows = rng.random((CALIBRATION_ROWS + VERIFY_ROWS, *shape), dtype=np.float32)
    result = to_tflite(
        model, quantize=mode, calibration=rows, samples=CALIBRATION_ROWS, progress=False
    )
    if result.notes:
        common.log(f"   {model.name} {mode}: {'; '.join(result.notes)}")
    return result.tflite


# --------------------------------------------------------------------------- LiteRT


class Runner:
    """One LiteRT interpreter (1 thread) and its input, quantised once before timing.

    batched: resize the model's batch to all rows of `x` (for `once`); otherwise the
    model keeps batch 1 (for `each`).
    """

    def __init__(self, data: bytes, x: np.ndarray, batched: bool):
        from ai_edge_litert.interpreter import Interpreter

        from mobilecv._tf import silenced_stderr
        from mobilecv.converters.tflite import quantize_input

        with silenced_stderr():
            self.interp = Interpreter(model_content=data, num_threads=1)
            detail = self.interp.get_input_details()[0]
            if batched and tuple(detail["shape"]) != x.shape:
                self.interp.resize_tensor_input(detail["index"], x.shape)
            self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]
        self.x = quantize_input(x, self.input)

    def once(self) -> np.ndarray:
        """The whole input in one invoke."""
        self.interp.set_tensor(self.input["index"], self.x)
        self.interp.invoke()
        return self.interp.get_tensor(self.output["index"])

    def each(self) -> np.ndarray:
        """One invoke per row of the input (batch 1), outputs stacked."""
        outs = []
        for i in range(len(self.x)):
            self.interp.set_tensor(self.input["index"], self.x[i : i + 1])
            self.interp.invoke()
            outs.append(self.interp.get_tensor(self.output["index"])[0])
        return np.stack(outs)

    def result(self, raw: np.ndarray) -> np.ndarray:
        from mobilecv.converters.tflite import dequantize

        return dequantize(raw, self.output)


def timed(ways: dict, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Milliseconds of each way (median, min, max); every repeat runs all ways in turn."""
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(warmup + repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            if repeat >= warmup:
                samples[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}
        for name, ms in samples.items()
    }


@contextlib.contextmanager
def pinned_to_one_core():
    """Pin this process to one core while timing (restored after); yields the core."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    saved = os.sched_getaffinity(0)
    core = min(saved)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, saved)


# --------------------------------------------------------------------------- one row


def crops(image: np.ndarray, geometry, grid) -> np.ndarray:
    """Every window of one (H, W, C) image, row-major over the grid."""
    (wh, ww) = geometry.window
    origins = [geometry.origin(r, c) for r in range(grid[0]) for c in range(grid[1])]
    return np.stack([image[top : top + wh, left : left + ww] for top, left in origins])


def measure_row(model, name: str, size: int, window_tflite: dict, args, rng) -> dict:
    from mobilecv.fully_conv import sliding_window_cost, to_fully_convolutional

    channels = int(model.inputs[0].shape[-1])
    cost = sliding_window_cost(model, size)
    conv_model = to_fully_convolutional(model, (size, size, channels))
    image = rng.random((1, size, size, channels), dtype=np.float32)
    windows = crops(image[0], cost.geometry, cost.grid)
    keras_grid = np.asarray(conv_model(image, training=False))[0]
    row = {"model": name, **cost.to_json(), "latency_ms": {}, "check": {}}
    for mode in MODES:
        conv = Runner(convert(conv_model, mode, rng), image, batched=True)
        loop = Runner(window_tflite[mode], windows, batched=False)
        batch = Runner(window_tflite[mode], windows, batched=True)
        ways = dict(zip(WAYS, (loop.each, batch.once, conv.once), strict=True))
        with pinned_to_one_core() as core:
            row["latency_ms"][mode] = timed(ways, args.repeats, args.warmup)
        row["pinned_core"] = core
        row["check"][mode] = agreement(conv, loop, batch, keras_grid, cost.grid)
        medians = {way: round(t["median"], 3) for way, t in row["latency_ms"][mode].items()}
        common.log(f"   {name} {size}px {mode}: median ms {medians}; {row['check'][mode]}")
    return row


def agreement(conv, loop, batch, keras_grid, grid) -> dict:
    """How the three ways' grids compare (outside the timing)."""
    conv_grid = conv.result(conv.once())[0]
    loop_grid = loop.result(loop.each()).reshape(*grid, -1)
    batch_grid = batch.result(batch.once()).reshape(*grid, -1)
    return {
        "max_abs_conv_vs_naive_loop": float(np.abs(conv_grid - loop_grid).max()),
        "max_abs_naive_batched_vs_loop": float(np.abs(batch_grid - loop_grid).max()),
        "max_abs_conv_vs_keras": float(np.abs(conv_grid - keras_grid).max()),
        "argmax_agreement_conv_vs_keras": float(
            np.mean(conv_grid.argmax(-1) == keras_grid.argmax(-1))
        ),
    }


# --------------------------------------------------------------------------- report


WAYS = ("naive_loop", "naive_batched", "convolutional")


def table_lines(result: dict) -> list[str]:
    """Medians (and each way's best repeat, the least disturbed by other processes)."""
    head = (
        f"{'model':<7} {'image':>5} {'grid':>6} {'windows':>7} {'naive MACs':>14} "
        f"{'conv MACs':>14} {'MACs x':>6} | {'type':<7} {'loop ms':>9} {'batch ms':>9} "
        f"{'conv ms':>8} {'loop/conv':>9} {'batch/conv':>10} | {'best: loop/conv':>15} "
        f"{'batch/conv':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        macs = (
            f"{r['model']:<7} {r['image'][0]:>5} {'x'.join(map(str, r['grid'])):>6} "
            f"{r['windows']:>7,} {r['naive_macs']:>14,} {r['convolutional_macs']:>14,} "
            f"{r['naive_over_convolutional']:>6.2f}"
        )
        for i, mode in enumerate(MODES):
            t = r["latency_ms"][mode]
            loop, batch, conv = (t[way]["median"] for way in WAYS)
            best_loop, best_batch, best_conv = (t[way]["min"] for way in WAYS)
            lines.append(
                (macs if i == 0 else " " * len(macs))
                + f" | {'float32' if mode == 'none' else mode:<7} {loop:>9.3f} {batch:>9.3f} "
                f"{conv:>8.3f} {loop / conv:>9.1f} {batch / conv:>10.1f} | "
                f"{best_loop / best_conv:>15.1f} {best_batch / best_conv:>10.1f}"
            )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    models = window_models(args.seed)
    rows = []
    for name, model in models.items():
        common.log(f"== {name}")
        window_tflite = {mode: convert(model, mode, rng) for mode in MODES}
        for size in SIZES[name]:
            rows.append(measure_row(model, name, size, window_tflite, args, rng))
    result = {
        "config": common.run_config(args, ("json", "out")),
        "ways": {
            "naive_loop": "window model, batch 1, one invoke per crop from a Python loop",
            "naive_batched": "window model resized to a batch of all crops, one invoke",
            "convolutional": "fully convolutional model at the image size, one invoke",
        },
        "timing": "LiteRT 1 thread, one pinned core, ways interleaved in every repeat; "
        "milliseconds per way: median (the table), min and max over the repeats",
        # other processes share the cores: the ratios are measured side by side, the
        # absolute times depend on the load
        "machine": common.machine(common.LITERT_PACKAGES, python_apart=True, load_average=True),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    common.write_result(args.out, common.output_stem("sliding_windows", args.quick), result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    print(
        f"Sliding windows, naive vs convolutional: {m['cpu']}, LiteRT "
        f"{m['versions']['ai_edge_litert']}, 1 thread, median of {args.repeats} repeats, "
        f"{m['date']}, load average {m['load_average_1_5_15_min'][0]} on {m['cpus']} cores"
        + (" [QUICK]" if args.quick else "")
    )
    print("\n".join(table_lines(result)))
    print(
        "loop: the window model invoked once per crop (Python loop); batch: one invoke on all "
        "crops; conv: one invoke of the fully convolutional model. ms and the first ratios: "
        "medians; best: ratio of each way's fastest repeat. "
        f"Whole run {result['wall_seconds']:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

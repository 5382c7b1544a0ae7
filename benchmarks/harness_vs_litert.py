"""Does mobilecv's harness time the same thing as LiteRT's own benchmark tool?

For each model, run our child-process harness (ondevice.py) and `litert-benchmark`
(shipped in ai-edge-litert) with the same threads, warmup and run count, alternating
them three times on the same core, and print the ratio of their p50s (target: within
10%) plus the harness's own timing-loop overhead per inference.

    .venv/bin/python benchmarks/harness_vs_litert.py [--out DIR]

Writes DIR/harness_vs_litert.json atomically (with the machine: CPU model, versions, date).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import common

from mobilecv.bench.harness import RunConfig, measure
from mobilecv.bench.samples import cached_model, mobilenet_v2, tiny_mobilenet

RUNS, WARMUP, REPEATS = 100, 10, 3
PACKAGES = ("tensorflow", "tf_keras", "keras", "ai-edge-litert", "numpy")


def litert_cli() -> list[str]:
    exe = Path(sys.executable).with_name("litert-benchmark")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("litert-benchmark")
    if found:
        return [found]
    return [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model"]


def run_litert(path: Path, core: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = ["taskset", "-c", str(core), *litert_cli(), f"--model={path}", f"--num_runs={RUNS}",
               f"--warmup_runs={WARMUP}", "--num_threads=1", f"--result_json={out}"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        return json.loads(out.read_text())["latency"]["median_ms"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(common.OUT), help="output directory")
    args = p.parse_args(argv)
    wall = time.perf_counter()
    core = min(os.sched_getaffinity(0))
    cases = [
        ("mnv2_0.35_r96", lambda: mobilenet_v2(0.35, 96), "none"),
        ("mnv2_0.5_r128", lambda: mobilenet_v2(0.5, 128), "none"),
        ("mnv2_0.5_r128", lambda: mobilenet_v2(0.5, 128), "int8"),
        ("mnv2_1.0_r128", lambda: mobilenet_v2(1.0, 128), "none"),
        ("tiny_r96_w32_b6", lambda: tiny_mobilenet(96, 3, 32, 6, seed=7), "int8"),
    ]
    print(
        f"threads=1, core {core}, {WARMUP} warmup + {RUNS} runs, best p50 of {REPEATS} alternating repeats"
    )
    print(
        f"{'model':<22} {'harness p50':>12} {'litert p50':>11} {'ratio':>7} {'loop overhead':>14}"
    )
    ratios, rows = [], []
    for name, build, q in cases:
        path = cached_model(name, build, q)
        ours, theirs, overhead = [], [], []
        for _ in range(REPEATS):
            r = measure(path, RunConfig(threads=1, runs=RUNS, warmup=WARMUP, cores=(core,)))
            if not r.get("ok"):
                raise SystemExit(f"{name}: harness failed: {r['error']}")
            ours.append(r["latency_ms"]["p50"])
            overhead.append(r["loop_overhead_us"])
            theirs.append(run_litert(path, core))
        o, t = min(ours), min(theirs)
        ratios.append(o / t)
        label = f"{name}_{'fp32' if q == 'none' else q}"
        ov = min(overhead)
        rows.append(
            {
                "model": label,
                "harness_p50_ms": o,
                "litert_p50_ms": t,
                "ratio": o / t,
                "loop_overhead_us": ov,
            }
        )
        print(
            f"{label:<22} {o:>10.3f}ms {t:>9.3f}ms {o / t:>7.3f} {ov:>8.2f} us ({ov / 1000 / o:.3%})"
        )
    worst = max(abs(r - 1) for r in ratios)
    print(f"worst |ratio - 1|: {worst:.1%} (target <= 10%)")
    print(
        "litert-benchmark reports milliseconds rounded to 0.01, so sub-ms models carry rounding error."
    )
    result = {
        "config": {"threads": 1, "core": core, "runs": RUNS, "warmup": WARMUP, "repeats": REPEATS},
        "machine": common.machine(PACKAGES),
        "rows": rows,
        "worst_abs_ratio_error": worst,
        "target": 0.10,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    common.write_result(args.out, "harness_vs_litert", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the main job on the built-in defaults.

Build mobilenet_v2 (width 0.5, 160 px), profile it, export a float32 .tflite that is
verified in LiteRT, benchmark it on this host, and print one summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

import mobilecv
from mobilecv.profile import format_table, profile

DEFAULTS = {"name": "mobilenet_v2", "width": 0.5, "resolution": 160}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--runs", type=int, default=30, help="timed LiteRT runs on this host")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="demo", unit="step", file=sys.stderr)
    started = time.perf_counter()

    steps.set_postfix_str("build")
    model = mobilecv.build(
        DEFAULTS["name"], width=DEFAULTS["width"], resolution=DEFAULTS["resolution"]
    )
    keras_path = out / "mobilenet_v2_w0.5_r160.keras"
    from mobilecv.modelio import save_model

    save_model(model, keras_path, force=True)
    steps.update()

    steps.set_postfix_str("profile")
    prof = profile(model, name=DEFAULTS["name"], width=DEFAULTS["width"])
    (out / "profile.json").write_text(json.dumps(prof.to_json(), indent=1))
    steps.update()

    steps.set_postfix_str("convert")
    from converters.tflite import convert

    result = convert(model, quantize="none", progress=False)
    tflite_path = out / "mobilenet_v2_w0.5_r160.tflite"
    result.save(tflite_path, force=True)
    steps.update()

    steps.set_postfix_str("bench")
    from mobilecv.bench import run as bench_run

    bench = bench_run(str(tflite_path), device="host", threads=1, runs=args.runs, warmup=3)
    (out / "bench.json").write_text(json.dumps(bench, indent=1, default=str))
    steps.update()
    steps.close()

    print(format_table(prof, top=10))
    print()
    v = result.verification
    lat = bench.get("latency_ms") or {}
    summary = [
        (
            "model",
            f"{DEFAULTS['name']} width {DEFAULTS['width']} resolution {DEFAULTS['resolution']}",
        ),
        ("params", f"{prof.params:,}"),
        ("MACs", f"{prof.macs:,}"),
        (
            "peak activations",
            f"{prof.activation_bytes:,} B float32 / {prof.activation_bytes_int8:,} B int8",
        ),
        ("keras file", f"{keras_path} ({keras_path.stat().st_size:,} B)"),
        ("tflite (float32)", f"{tflite_path} ({result.size:,} B)"),
        (
            "LiteRT vs Keras",
            f"max abs error {v.max_abs_error:.2e} on {v.samples} {v.data} inputs"
            if v
            else "not verified",
        ),
        (
            "host latency, 1 thread",
            f"p50 {lat.get('p50', float('nan')):.2f} ms, p90 {lat.get('p90', float('nan')):.2f} ms over {bench.get('runs')} runs",
        ),
        ("verdict on host", f"{bench.get('verdict')}"),
        ("total time", f"{time.perf_counter() - started:.1f} s"),
    ]
    width = max(len(k) for k, _ in summary)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

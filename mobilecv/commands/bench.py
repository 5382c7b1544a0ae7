"""`mobilecv bench` and `mobilecv devices`: thin wrappers over mobilecv.bench."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option

POSITIVE = click.FloatRange(min=0, min_open=True)


def _cores(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        cores = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        cores = (-1,)
    if not cores or min(cores) < 0:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of core ids", param_hint="--cores"
        )
    return cores


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--device",
    "-d",
    default="host",
    show_default=True,
    help="Device profile name (see `mobilecv devices`) or a profile .yaml.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Interpreter threads.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Timed runs (host only).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Untimed warm-up runs.",
)
@click.option("--time-budget", type=POSITIVE, default=None, help="Stop timing after S seconds.")
@click.option("--cores", default=None, help="CPU affinity for the measured run, e.g. 0 or 0,1.")
@click.option(
    "--memory-limit-mb",
    type=POSITIVE,
    default=None,
    help="Address-space limit (RLIMIT_AS) for the measured child process.",
)
@click.option(
    "--inputs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help=".npy file per model input (repeat in input order); default random.",
)
@click.option(
    "--max-latency-ms", type=POSITIVE, default=None, help="Latency budget for the verdict."
)
@click.option(
    "--fail-if-not-fit",
    is_flag=True,
    help="Exit 1 unless every model fits (a verdict of 'unknown' is not a fit).",
)
@click.option(
    "--timeout",
    type=POSITIVE,
    default=120.0,
    show_default=True,
    help="Kill a measured run after S seconds.",
)
@click.option(
    "--import",
    "import_",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Merge a result measured on the real device (ondevice.py JSON or benchmark_model log).",
)
@click.option(
    "--report",
    type=click.Path(file_okay=False),
    default=None,
    help="Write report.md and PNG plots into this directory.",
)
@force_option("an existing report")
@json_option("the result(s)")
@handle_errors
def bench(models, device, threads, runs, warmup, time_budget, cores, memory_limit_mb, inputs,
          max_latency_ms, fail_if_not_fit, timeout, import_, report, force, as_json) -> None:  # fmt: skip
    """Will MODEL.tflite fit on DEVICE, and how fast is it? Measures on `host` (in a
    child process), runs TFLite Micro for MCU profiles, estimates the rest."""
    from mobilecv.bench import Verdict, from_import, load_result, run
    from mobilecv.bench import devices as dev
    from mobilecv.errors import InputError

    if not models and not import_:
        raise click.UsageError("give at least one MODEL.tflite (or --import RESULT)")
    if import_ and len(models) > 1:
        raise InputError("--import merges one device result: give at most one model")
    dev.get(device, calibrate=False)  # an unknown device fails before any model is read
    imported = load_result(import_) if import_ else None
    results = []
    if imported is not None and not models:
        results.append(from_import(imported, max_latency_ms))
    for model in models:
        results.append(
            run(
                model,
                device,
                threads,
                runs,
                warmup,
                cores=_cores(cores),
                memory_limit_mb=memory_limit_mb,
                time_budget_s=time_budget,
                inputs=inputs,
                max_latency_ms=max_latency_ms,
                timeout_s=timeout,
                imported=imported,
            )  # fmt: skip
        )
    if report:
        from mobilecv.bench import report as rep

        path = rep.write(results, report, force)
        click.echo(f"report: {path}", err=True)
    if as_json:
        slim = [
            {k: v for k, v in r.items() if k not in ("samples_ms", "live_bytes")} for r in results
        ]
        echo_json(slim[0] if len(slim) == 1 else slim)
    else:
        for r in results:
            _print(r)
    if fail_if_not_fit and any(r["verdict"] != Verdict.FITS for r in results):
        sys.exit(1)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f} ms"


def _print(r: dict) -> None:
    lat = r["latency_ms"]
    est = r["estimate"]
    click.echo(f"{Path(r['model']).name} on {r['device']}: {r['verdict']}")
    if "latency_ms" in r["measured"]:
        click.echo(
            f"  measured  p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  "
            f"mean {_ms(lat['mean'])}  ({r['runs']} runs, {r['threads']} thread(s))"
        )
    if r.get("init_ms") is not None:
        rss = r.get("peak_rss_mb")
        click.echo(
            f"  measured  init {r['init_ms']:.2f} ms  first inference {_ms(r.get('first_inference_ms'))}  "
            f"peak RSS {'–' if rss is None else f'+{rss:.1f} MB'}"
        )
    if r.get("arena_bytes") is not None:
        click.echo(f"  measured  TFLM arena {r['arena_bytes']} bytes (smallest that works)")
    if est:
        click.echo(
            f"  estimated latency {est['latency_ms']:.3f} ms  activations {est['peak_activation_bytes']} B  "
            f"flash {est['flash_bytes']} B  RAM {est['ram_bytes']} B"
        )
    judged = r.get("judged_latency") or {}
    if judged.get("ms") is not None:
        click.echo(f"  latency judged by the {judged['source']} figure, {judged['ms']:.3f} ms")
    for reason in r["reasons"]:
        click.echo(f"  - {reason}")
    for note in r.get("notes", []):
        click.echo(f"  note: {note}")


@click.command("devices")
@json_option("the profiles")
@handle_errors
def devices(as_json: bool) -> None:
    """List the device profiles `mobilecv bench --device` accepts (host uncalibrated here)."""
    from mobilecv.bench import devices as dev

    profiles = [dev.get(n, calibrate=False) for n in dev.names()]
    if as_json:
        echo_json([p.to_dict() for p in profiles])
        return
    click.echo(
        f"{'name':<20} {'kind':<12} {'runtime':<8} {'RAM':>10} {'flash':>10} {'int8 MAC/s':>11}  description"
    )
    for p in profiles:
        int8 = p.macs_per_s.get("int8", 0)
        click.echo(
            f"{p.name:<20} {p.kind.value:<12} {p.runtime.value:<8} {_size(p.ram_bytes):>10} "
            f"{_size(p.flash_bytes):>10} {int8:>11.3g}  {p.description}"
        )


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.0f} {unit}"
    return f"{n} B"

"""`mobilecv sweep`: a thin wrapper over mobilecv.sweep."""

from __future__ import annotations

import click

from mobilecv.cliutil import (
    echo_json,
    force_option,
    handle_errors,
    json_option,
    out_dir_option,
    trial_options,
)


@click.command("sweep")
@click.argument("family")
@click.option("--widths", required=True, help="Comma-separated width multipliers, e.g. 0.25,0.5.")
@click.option("--resolutions", required=True, help="Comma-separated input sizes, e.g. 96,128.")
@click.option(
    "--depths", default="1.0", show_default=True, help="Comma-separated depth multipliers."
)
@trial_options(
    "Finish a sweep that was stopped: run only the points missing from DIR/trials.jsonl."
)
@click.option(
    "--train-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train each point this many epochs and report int8 test top-1 (0: no training).",
)
@click.option("--classes", type=click.IntRange(min=1), default=None, help="Default: the dataset's.")
@click.option(
    "--input-channels", type=click.IntRange(min=1), default=None, help="Default: the dataset's."
)
@click.option(
    "--train-limit",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Training images per point.",
)
@click.option(
    "--test-samples",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Test images scored per point (the test split is used for nothing else).",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=30, show_default=True, help="Timed host runs."
)
@out_dir_option("Output directory (sweep.csv, sweep.json, pareto.png, trials.jsonl, models/).")
@force_option("existing outputs")
@json_option("the rows")
@handle_errors
def sweep_command(family, widths, resolutions, depths, device, max_latency_ms, train_epochs, data,
                  classes, input_channels, train_limit, test_samples, runs, workers, address,
                  resume, out_dir, force, as_json) -> None:  # fmt: skip
    """Build, int8-convert and benchmark FAMILY over a width x resolution (x depth) grid.

    Each point reports params, MACs, int8 size, measured host latency (1 thread), the
    estimated latency and fit verdict on DEVICE, and with --train-epochs the int8 test
    top-1. Writes DIR/sweep.csv, DIR/sweep.json and DIR/pareto.png. Each point is a trial
    on Ray (started here, or the cluster at --address); a point that fails or whose worker
    dies is a row with its error, and a stopped sweep finishes with --resume.
    """
    from mobilecv.sweep import parse_list, sweep

    rows = sweep(
        family,
        parse_list(widths, float, "widths"),
        parse_list(resolutions, int, "resolutions"),
        parse_list(depths, float, "depths"),
        device=device,
        train_epochs=train_epochs,
        dataset=data,
        workers=workers,
        address=address,
        resume=resume,
        classes=classes,
        input_channels=input_channels,
        max_latency_ms=max_latency_ms,
        out_dir=out_dir,
        force=force,
        train_limit=train_limit,
        test_samples=test_samples,
        runs=runs,
    )
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows))
        click.echo(f"wrote {out_dir}/sweep.csv, sweep.json, pareto.png", err=True)


def format_table(rows) -> str:
    """A fixed-width table of the figures that answer "which point for this device?"."""
    acc = any(r.get("score") is not None for r in rows)
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")[:6]
    head = (
        f"{'width':>5} {'depth':>5} {'res':>4} {'params':>9} {'MMACs':>8} {'int8 KB':>8} "
        f"{'host ms':>8} {'dev ms':>8} " + (f"{metric:>6} " if acc else "") + "  verdict"
    )
    lines = [head]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"{r['width']:>5g} {r['depth']:>5g} {r['resolution']:>4} error: {r['error']}"
            )
            continue
        verdict = r["verdict"] + (" *pareto*" if r.get("pareto") else "")
        if r["verdict"] != "fits" and r.get("reasons"):
            verdict += f" ({'; '.join(r['reasons'])})"
        top1 = f"{r['score']:>6.4f} " if acc and r.get("score") is not None else ""
        lines.append(
            f"{r['width']:>5g} {r['depth']:>5g} {r['resolution']:>4} {r['params']:>9,} "
            f"{r['macs'] / 1e6:>8.2f} {r['tflite_bytes'] / 1024:>8.1f} "
            f"{r['host_latency_ms']:>8.3f} {r['device_latency_ms']:>8.2f} {top1}  {verdict}"
        )
    return "\n".join(lines)

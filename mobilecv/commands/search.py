"""`mobilecv search`: a thin wrapper over mobilecv.search."""

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


@click.command("search")
@click.argument("family")
@trial_options("Finish a search that was stopped (DIR/tune, DIR/trials.jsonl).")
@click.option(
    "--max-arena-kb",
    type=float,
    default=None,
    help="Bound on the real TFLite Micro arena, tighter than the device's RAM.",
)
@click.option(
    "--max-flash-kb",
    type=float,
    default=None,
    help="Bound on the int8 model's size, tighter than the device's flash.",
)
@click.option(
    "--trials", type=click.IntRange(min=1), default=20, show_default=True, help="Points to try."
)
@click.option(
    "--epochs-per-trial",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Short training of each point that fits (validation score as the proxy).",
)
@click.option(
    "--train-limit",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Training images per trial.",
)
@click.option("--widths", default="0.25:1.0", show_default=True, help="Width bounds LOW:HIGH.")
@click.option("--depths", default="0.5:1.0", show_default=True, help="Depth bounds LOW:HIGH.")
@click.option(
    "--resolutions",
    default="32:96",
    show_default=True,
    help="Resolution bounds LOW:HIGH, in --resolution-step steps.",
)
@click.option("--resolution-step", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--divisors", default=None, help="Channel divisors to search, e.g. 8,16,32 (a family option)."
)
@click.option(
    "--phi",
    default=None,
    help="Search the compound form instead: phi bounds LOW:HIGH and an (a, b, g) "
    "with a*b^2*g^2 ~= 2, applied to --base.",
)
@click.option(
    "--base",
    default="0.35,1.0,32",
    show_default=True,
    help="Compound base WIDTH,DEPTH,RESOLUTION (with --phi).",
)
@click.option(
    "--objectives",
    type=click.Choice(["score", "score,latency"]),
    default="score,latency",
    show_default=True,
    help="score: TPE on the validation score; score,latency: NSGA-II on both.",
)
@click.option(
    "--final-epochs",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Retraining of the chosen point (0: search only).",
)
@click.option(
    "--final-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Training images for the retraining (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@out_dir_option(
    "Output directory (search.csv, search.json, pareto.png, best.keras, "
    "best.tflite, trials.jsonl, tune/)."
)
@force_option("existing outputs")
@json_option("the report")
@handle_errors
def search_command(family, device, max_latency_ms, max_arena_kb, max_flash_kb, data, trials,
                   epochs_per_trial, train_limit, widths, depths, resolutions, resolution_step,
                   divisors, phi, base, objectives, final_epochs, final_limit, seed, workers,
                   address, resume, out_dir, force, as_json) -> None:  # fmt: skip
    """Search FAMILY's width, depth and resolution (or compound phi, and the channel
    divisor) for the best validation score that fits DEVICE.

    Each trial (Ray Tune, proposed by Optuna) is converted to int8 and judged on the device
    first (the real TFLite Micro arena for microcontrollers); only points that fit are
    trained --epochs-per-trial and scored on the validation split. The point that fits
    with the best score is retrained --final-epochs, converted and scored once on the
    test split. A trial that fails is a row with its error; a stopped search finishes
    with --resume.
    """
    from mobilecv.search import Settings, search, settings_from_options

    settings: Settings = settings_from_options(
        family, device=device, max_latency_ms=max_latency_ms, max_arena_kb=max_arena_kb,
        max_flash_kb=max_flash_kb, dataset=data, trials=trials,
        epochs_per_trial=epochs_per_trial, train_limit=train_limit, widths=widths,
        depths=depths, resolutions=resolutions, resolution_step=resolution_step,
        divisors=divisors, phi=phi, base=base, objectives=objectives, seed=seed,
        workers=workers,
    )  # fmt: skip
    report = search(
        settings, out_dir, final_epochs=final_epochs, final_limit=final_limit,
        workers=workers, address=address, resume=resume, force=force,
    )  # fmt: skip
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report))
        click.echo(f"wrote {out_dir}/search.csv, search.json, pareto.png, best.tflite", err=True)


def format_report(report) -> str:
    """The trials as a table, then the chosen point's full-length result."""
    rows = report["rows"]
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")[:6]
    lines = [
        f"{'trial':>5} {'width':>6} {'depth':>6} {'res':>4} {'MMACs':>7} {'KB':>7} "
        f"{'arena KB':>8} {'dev ms':>8} {metric:>6}  verdict"
    ]
    for r in rows:
        head = f"{r['trial']:>5} {r['width'] or 0:>6.3f} {r['depth'] or 0:>6.3f} {r['resolution'] or 0:>4}"
        if r.get("error"):
            lines.append(f"{head} error: {r['error']}")
            continue
        score = f"{r['val_score']:>6.4f}" if r.get("val_score") is not None else f"{'-':>6}"
        verdict = "fits" if not r["constraints"] else "; ".join(r["constraints"])
        marks = (" *pareto*" if r.get("pareto") else "") + (" *chosen*" if r.get("chosen") else "")
        arena = f"{r['arena_bytes'] / 1024:>8.1f}" if r.get("arena_bytes") else f"{'-':>8}"
        lines.append(
            f"{head} {r['macs'] / 1e6:>7.2f} {r['tflite_bytes'] / 1024:>7.1f} {arena} "
            f"{r['judged_latency_ms']:>8.2f} {score}  {verdict}{marks}"
        )
    final = report.get("final")
    if report.get("chosen") is None:
        lines.append("no point fits the device: nothing was retrained")
    elif final is None:
        lines.append(f"chosen: trial {report['chosen']} (not retrained: --final-epochs 0)")
    else:
        verdict = "fits" if not final["constraints"] else "; ".join(final["constraints"])
        lines.append(
            f"chosen: trial {report['chosen']}, retrained {final['epochs']} epochs: "
            f"test {final['metric']} {final['test_score']:.4f} (int8), "
            f"validation {final['val_score']:.4f}, {final['tflite_bytes'] / 1024:.1f} KB, "
            f"{final['judged_latency_ms']:.2f} ms on {final['device']}: {verdict}"
        )
    return "\n".join(lines)

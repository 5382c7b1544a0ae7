"""The `mobilecv` command line. Thin: every command calls a library function."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mobilecv.cliutil import (
    DEBUG_ENV,
    echo_json,
    errors_reported,
    force_option,
    handle_errors,
    json_option,
    parse_key_value,
)
from mobilecv.errors import InputError, UnknownName
from mobilecv.modelinfo import InputRange

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """The command group; an exception that escapes a command is still reported by the
    error policy (one line and an exit code), whichever command raised it."""

    def invoke(self, ctx: click.Context):
        with errors_reported():
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="mobilecv")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the traceback of an error (also: {DEBUG_ENV}=1).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Build, compress, convert and benchmark mobile CNNs for TFLite.

    Exit codes: 0 ok, 1 failed run (or an internal error), 2 bad input.
    """
    ctx.ensure_object(dict)["debug"] = debug


def scaling_options(fn):
    """The knobs every builder shares (docs/ARCHITECTURE.md, rule 7), as click options."""
    options = [
        click.option("--width", type=float, help="Width multiplier (channels), 0 < w <= 4."),
        click.option("--depth", type=float, help="Depth multiplier (stage repeats), 0 < d <= 4."),
        click.option("--resolution", type=int, help="Input size in pixels (default: the model's)."),
        click.option(
            "--phi", type=float, help="EfficientNet compound coefficient (generic efficientnet)."
        ),
        click.option("--classes", type=int, help="Number of classes (default 1000)."),
        click.option("--input-channels", type=int, help="Input channels, e.g. 1 for grayscale."),
        click.option(
            "--input-range",
            type=click.Choice([r.value for r in InputRange]),
            help="Input range the model declares and is fed: unit [0, 1] (default), "
            "pixels [0, 255], symmetric [-1, 1].",
        ),
        click.option("--dropout", type=float, help="Dropout before the classifier."),
        click.option("--no-top", is_flag=True, help="Drop the classifier head."),
        click.option(
            "--backbone",
            help="Backbone of a task model (localizer, landmarker): any registered network.",
        ),
        click.option("--dim", type=int, help="Embedding dimension of an embedding model."),
        click.option(
            "--option",
            "-O",
            "extra",
            multiple=True,
            metavar="KEY=VALUE",
            help="A family-specific option, e.g. -O lite=true (repeatable).",
        ),
        click.option(
            "--keras",
            type=click.Choice(["tf_keras", "keras3"]),
            default="tf_keras",
            show_default=True,
            help="Keras implementation to build with.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _knobs(no_top: bool = False, extra: tuple = (), **flags) -> dict:
    """Flags as registry knobs: unset flags are dropped so family defaults apply."""
    knobs = dict(flags, include_top=False if no_top else None)
    knobs.update(parse_key_value(item, "--option") for item in extra)
    return {k: v for k, v in knobs.items() if v is not None}


@main.command("list")
@click.argument("pattern", default="*")
@json_option()
@handle_errors
def list_cmd(pattern: str, as_json: bool) -> None:
    """List registered models (fnmatch PATTERN, e.g. 'mobilenet*') with their cost."""
    from mobilecv.zoo import zoo_rows

    rows = zoo_rows(pattern)
    if not rows:
        raise UnknownName(f"no model matches {pattern!r}")
    if as_json:
        echo_json(rows)
        return
    click.echo(
        f"{'name':<22} {'family':<13} {'task':<15} {'resolution':>10} {'params':>13} {'MACs':>16}"
    )
    for r in rows:
        click.echo(
            f"{r['name']:<22} {r['family']:<13} {r['task']:<15} {r['resolution']:>10} "
            f"{r['params']:>13,} {r['macs']:>16,}"
        )


@main.command()
@click.argument("name")
@scaling_options
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help="Weights file (.h5/.keras) to load.",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.keras or OUT.h5"
)
@force_option("an existing output")
@json_option("the summary")
@handle_errors
def build(name, keras, weights, output, force, as_json, **scaling) -> None:
    """Build model NAME at any width, depth and resolution and save it."""
    import mobilecv
    from mobilecv.fileio import check_writable
    from mobilecv.modelio import check_model_suffix, save_model
    from mobilecv.models.weights import check_weights_file
    from mobilecv.profiling import profile

    # Refuse a bad output before the build, which can take a minute.
    check_model_suffix(output)
    check_writable(output, force)
    if weights:
        check_weights_file(weights)
    knobs = _knobs(**scaling)
    model = mobilecv.build(name, keras=keras, weights=weights, **knobs)
    save_model(model, output, force=force)
    prof = profile(model)
    summary = {
        "name": name,
        "output": str(output),
        "keras": keras,
        "input_shape": prof.input_shape,
        "params": prof.params,
        "macs": prof.macs,
        "bytes": os.path.getsize(output),
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"{name}: input {'x'.join(map(str, prof.input_shape[1:]))}, {prof.params:,} params, "
            f"{prof.macs:,} MACs -> {output} ({summary['bytes']:,} bytes, {keras})"
        )


@main.command("profile")
@click.argument("target")
@scaling_options
@click.option(
    "--top", type=click.IntRange(min=1), help="Show only the N layers with the most MACs."
)
@click.option(
    "--sliding-window",
    metavar="SIZE",
    help="Also the MACs of classifying every window of a SIZE (N or HxW) image: each crop "
    "separately vs one pass of the fully convolutional model.",
)
@json_option("the figures (schema: docs/ARCHITECTURE.md, Contracts)")
@handle_errors
def profile_cmd(target, keras, top, sliding_window, as_json, **scaling) -> None:
    """Per-layer params, MACs, receptive fields and peak activation memory of a model NAME
    or MODEL_FILE."""
    import mobilecv
    from mobilecv.profiling import format_table, profile
    from mobilecv.registry import resolve

    knobs = _knobs(**scaling)
    if Path(target).suffix in (".keras", ".h5", ".hdf5") or Path(target).exists():
        from mobilecv.modelio import load_model

        if knobs:
            raise InputError("scaling flags apply to model names, not to a model file")
        model = load_model(target)
        prof = profile(model)
    else:
        resolved = resolve(target, **knobs)
        model = mobilecv.build(target, keras=keras, **knobs)
        prof = profile(model, name=target, width=resolved["width"], depth=resolved["depth"])
    cost = None
    if sliding_window is not None:
        from mobilecv.fully_conv import sliding_window_cost

        cost = sliding_window_cost(model, sliding_window)
    if as_json:
        echo_json({**prof.to_json(), **({"sliding_window": cost.to_json()} if cost else {})})
    else:
        click.echo(format_table(prof, top))
        if cost:
            click.echo(cost.text())


def _register_commands() -> None:
    # Commands of the other stages live beside their libraries; cli.py only lists them.
    from mobilecv.commands.anchors import anchors_command
    from mobilecv.commands.bench import bench, devices
    from mobilecv.commands.convert import convert, inspect_cmd
    from mobilecv.commands.detect import detect_command
    from mobilecv.commands.embed import enroll_command, verify_command
    from mobilecv.commands.fast_style import train_stylizer_command
    from mobilecv.commands.run import run_command
    from mobilecv.commands.search import search_command
    from mobilecv.commands.segment import segment_command
    from mobilecv.commands.stylize import stylize_command
    from mobilecv.commands.sweep import sweep_command
    from mobilecv.commands.train import compress_command, train_command
    from mobilecv.commands.visualize import visualize_command

    for command in (
        train_command,
        compress_command,
        convert,
        inspect_cmd,
        bench,
        devices,
        run_command,
        sweep_command,
        search_command,
        anchors_command,
        detect_command,
        segment_command,
        stylize_command,
        visualize_command,
        train_stylizer_command,
        enroll_command,
        verify_command,
    ):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()

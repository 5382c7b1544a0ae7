"""`mobilecv visualize`: what a trained model's units respond to (mobilecv.visualize)."""

from __future__ import annotations

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option, out_dir_option
from mobilecv.errors import InputError
from mobilecv.visualize import DEFAULT_SAMPLES, DEFAULT_UNITS


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _units(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise InputError(f"--units must be comma-separated channel numbers; got {text!r}") from None


@click.command("visualize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    help="Data set: fashion_mnist, digits, scenes, an .npz file or a class/*.jpg folder.",
)
@click.option("--layers", required=True, help="Comma-separated layer names, e.g. conv1,conv2.")
@out_dir_option("Folder for the PNG grids and index.md.")
@click.option(
    "--units",
    help=f"Comma-separated channels per layer (default: the {DEFAULT_UNITS} most active).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLES,
    show_default=True,
    help="Images of the test split searched for the top patches.",
)
@click.option(
    "--image",
    "image_index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Image whose feature maps are drawn.",
)
@click.option("--no-deconv", is_flag=True, help="Skip the deconvnet (for layers it cannot invert).")
@force_option("existing pictures")
@json_option("the units, their top activations and the files")
@handle_errors
def visualize_command(model, data, layers, out_dir, units, samples, image_index, no_deconv,
                      force, as_json) -> None:  # fmt: skip
    """Top-9 patches (cropped to the receptive field), deconvnet projections and feature
    maps of MODEL's units in LAYERS (Zeiler & Fergus 2014), as PNG grids and an index.md."""
    from mobilecv.visualize import visualize

    result = visualize(
        model,
        data,
        _names(layers),
        out_dir,
        units=_units(units),
        samples=samples,
        image_index=image_index,
        deconv=not no_deconv,
        force=force,
        progress=not as_json,
    )
    if as_json:
        echo_json(result.to_json())
        return
    for view in result.layers:
        best = {u: acts[0] for u, acts in view.top_activations.items()}
        sizes = "x".join(f"{f['size']:g}" for f in view.field)
        click.echo(
            f"{view.layer}: field {sizes} px, units "
            + ", ".join(f"{u} (top {a:.3g})" for u, a in best.items())
        )
    click.echo(f"-> {result.index}")

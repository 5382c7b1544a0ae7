"""`mobilecv stylize`: neural style transfer by optimising the pixels (mobilecv.style).

TensorFlow and numpy are imported inside the command, so `mobilecv --help` does not pay
for them."""

from __future__ import annotations

from pathlib import Path

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option
from mobilecv.errors import InputError


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"--style-weights must be comma-separated numbers; got {text!r}") from None


def _curve_path(output: str, curve: str | None) -> Path:
    out = Path(output)
    return Path(curve) if curve else out.with_name(f"{out.stem}_loss.png")


def _check_outputs(output: str, curve: Path, force: bool) -> None:
    from mobilecv.fileio import check_writable

    if Path(output).suffix.lower() != ".png":
        raise InputError(f"-o must name a .png file; got {output!r}")
    check_writable(output, force)
    check_writable(curve, force)


@click.command("stylize")
@click.argument("content")
@click.argument("style")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.png")
@click.option(
    "--network",
    default="random",
    show_default=True,
    help="Loss network: 'random' (multi-scale random filters, offline), a registered model "
    "(vgg19 as in the paper) or a .keras/.h5 model file.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help="Weights of --network, e.g. keras.applications' VGG19 notop .h5.",
)
@click.option("--content-layer", help="Content layer (default: block4_conv2 for VGG).")
@click.option("--style-layers", help="Comma-separated style layers (default: block1..5_conv1).")
@click.option("--style-weights", help="Comma-separated lambda per style layer (default equal).")
# alpha and beta: mobilecv.style.ALPHA, BETA (the paper's ratio 1e-3)
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Content weight.")
@click.option("--beta", type=float, default=1e3, show_default=True, help="Style weight.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--learning-rate", type=float, default=0.02, show_default=True, help="Adam's.")
@click.option(
    "--optimizer", type=click.Choice(["adam", "lbfgs"]), default="adam", show_default=True
)
@click.option(
    "--size",
    type=click.IntRange(min=16),
    default=128,
    show_default=True,
    help="Side of the square images, pixels.",
)
@click.option(
    "--pooling",
    type=click.Choice(["max", "avg"]),
    default="max",
    show_default=True,
    help="avg: the paper's average pooling.",
)
@click.option(
    "--preprocess",
    type=click.Choice(["auto", "unit", "caffe"]),
    default="auto",
    show_default=True,
    help="auto: caffe for VGG with --weights, else unit [0, 1].",
)
@click.option(
    "--noise",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Uniform noise added to the content image at the start.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--curve", type=click.Path(dir_okay=False), help="Loss curve PNG (default OUT_loss.png)."
)
@force_option("existing outputs")
@json_option("the figures")
@handle_errors
def stylize_command(content, style, output, curve, force, as_json, **options) -> None:
    """Paint CONTENT in the style of STYLE (Gatys et al. 2015); each is an image file or a
    sample: starry_night, astronaut, chelsea, coffee, china, flower.

    Prints each style layer's Gram distance before and after, and the content distance of
    the result beside that of the style image itself."""
    curve = _curve_path(output, curve)
    _check_outputs(output, curve, force)
    result = run(content, style, **options, progress=not as_json)
    from mobilecv.style import save_loss_curve, save_png

    save_png(result.image, output, force=force)
    save_loss_curve(result.losses, curve, f"{content} in the style of {style}", force=force)
    figures = {"output": str(output), "curve": str(curve), **result.to_json()}
    if as_json:
        echo_json(figures)
    else:
        click.echo(_text(figures))


def run(content: str, style: str, **options):
    """Load both images, build the loss network, optimise: the command's library call."""
    from mobilecv import style as st

    content_image = st.square(st.load_image(content), options["size"])
    style_image = st.square(st.load_image(style), options["size"])
    net = st.loss_network(
        options["network"],
        size=options["size"],
        content_layer=options["content_layer"],
        style_layers=_names(options["style_layers"]),
        weights=options["weights"],
        pooling=options["pooling"],
        preprocess=options["preprocess"],
        seed=options["seed"],
    )
    keys = ("alpha", "beta", "steps", "learning_rate", "optimizer", "noise", "seed", "progress")
    return st.stylize(
        content_image,
        style_image,
        net,
        style_weights=_floats(options["style_weights"]),
        **{k: options[k] for k in keys},
    )


def _text(figures: dict) -> str:
    lines = [f"{'style layer':<24} {'Gram start':>12} {'Gram end':>12} {'fell':>7}"]
    for name, start in figures["gram_start"].items():
        end, drop = figures["gram_end"][name], figures["gram_drop"][name]
        lines.append(f"{name:<24} {start:>12.4g} {end:>12.4g} {drop:>7.1%}")
    lines.append(
        f"content distance {figures['content_distance']:.4g} (the style image's: "
        f"{figures['style_content_distance']:.4g}); {figures['steps']} steps in "
        f"{figures['seconds']} s on {figures['network']}"
    )
    lines.append(f"-> {figures['output']}, loss curve {figures['curve']}")
    return "\n".join(lines)

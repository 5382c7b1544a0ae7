"""`mobilecv train-stylizer`: train a fast stylizer (mobilecv.fast_style) for one style.

TensorFlow is imported inside the command, so `mobilecv --help` does not pay for it."""

from __future__ import annotations

from pathlib import Path

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option
from mobilecv.errors import InputError


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError("--content needs at least one photo")
    return names


def _check_outputs(output: str, preview: str | None, force: bool) -> None:
    from mobilecv.fileio import check_writable
    from mobilecv.modelio import check_model_suffix

    check_writable(check_model_suffix(output), force)
    if preview:
        if Path(preview).suffix.lower() != ".png":
            raise InputError(f"--preview must name a .png file; got {preview!r}")
        check_writable(preview, force)


@click.command("train-stylizer")
@click.argument("style")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.keras")
@click.option(
    "--content",
    default="astronaut,chelsea,coffee,china,flower",
    show_default=True,
    help="Comma-separated content photos (samples or image files) to crop from.",
)
@click.option("--width", type=float, default=0.25, show_default=True, help="Channel multiplier.")
@click.option("--depth", type=float, default=1.0, show_default=True, help="Residual blocks / 5.")
@click.option("--norm", type=click.Choice(["batch", "none"]), default="batch", show_default=True)
@click.option(
    "--upsample", type=click.Choice(["resize", "transposed"]), default="resize", show_default=True
)
@click.option("--crop", type=click.IntRange(min=16), default=128, show_default=True,
              help="Side of the training crops (a multiple of 4).")  # fmt: skip
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--learning-rate", type=float, default=2e-3, show_default=True)
@click.option("--network", default="random", show_default=True,
              help="Loss network: 'random', a registered model or a .keras/.h5 file.")  # fmt: skip
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Weights of --network (e.g. the VGG19 notop .h5).")  # fmt: skip
# alpha and beta: mobilecv.fast_style.ALPHA, BETA
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Content weight.")
@click.option("--beta", type=float, default=1e2, show_default=True, help="Style weight.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preview", type=click.Path(dir_okay=False),
              help="Also write the first content photo, stylised, as this PNG.")  # fmt: skip
@force_option("existing outputs")
@json_option("the training figures")
@handle_errors
def train_stylizer_command(style, output, preview, force, as_json, **options) -> None:
    """Train a fast stylizer (Johnson et al. 2016) for STYLE (an image file or a sample such
    as starry_night) on random crops of the content photos; save it as OUT.keras.

    Convert it with `mobilecv convert OUT.keras --quantize int8 --calibration DIR`: the
    converter compares the images by PSNR."""
    _check_outputs(output, preview, force)
    model, result, photos = train(style, **options, progress=not as_json)
    from mobilecv.modelio import save_model

    save_model(model, output, force=force)
    figures = {"output": str(output), **result.to_json()}
    if preview:
        figures["preview"] = str(_preview(model, photos[0], options["crop"], preview, force))
    if as_json:
        echo_json(figures)
    else:
        click.echo(
            f"trained {figures['steps']} steps in {figures['seconds']} s on "
            f"{figures['network']}: loss {figures['first_loss']:.4g} -> "
            f"{figures['final_loss']:.4g} (mean of the last tenth)\n-> {output}"
            + (f", preview {preview}" if preview else "")
        )


def train(style: str, *, progress: bool, **options):
    """(model, TrainResult, photos): the command's library call."""
    import mobilecv
    from mobilecv import fast_style
    from mobilecv import style as st

    crop = options["crop"]
    photos = fast_style.content_photos(_names(options["content"]))
    style_image = st.square(st.load_image(style), crop)
    model = mobilecv.build("stylizer", width=options["width"], depth=options["depth"],
                           resolution=crop, norm=options["norm"],
                           upsample=options["upsample"])  # fmt: skip
    net = st.loss_network(options["network"], size=crop, weights=options["weights"],
                          seed=options["seed"])  # fmt: skip
    keys = ("steps", "batch", "learning_rate", "alpha", "beta", "seed")
    result = fast_style.train_stylizer(
        model, style_image, net, photos, progress=progress, **{k: options[k] for k in keys}
    )
    return model, result, photos


def _preview(model, photo, crop: int, path: str, force: bool) -> Path:
    from mobilecv import fast_style
    from mobilecv import style as st

    side = max(crop, min(photo.shape[:2]) // 4 * 4)
    image = fast_style.stylize_images(
        fast_style.at_resolution(model, side), st.square(photo, side)[None]
    )
    return st.save_png(image[0], path, force=force)

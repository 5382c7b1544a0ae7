"""`mobilecv segment`: run a .tflite segmenter on image files; write masks and overlays.

A thin layer over the library: the model's metadata (task, input range, and an unpadded
U-Net's input size), LiteRT (mobilecv.evaluate.TfliteModel) and the numpy post-processing
(mobilecv.postprocess.segmentation, class_map_to, overlay). Nothing here imports
TensorFlow. Every check runs before any work and every image is segmented before the first
file is written: bad input leaves nothing behind, and each file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option, out_dir_option
from mobilecv.commands.imagefiles import (
    each_image,
    image_paths,
    load_model,
    model_input,
    output_targets,
    read_image,
    read_names,
)
from mobilecv.errors import InputError, one_line

SUMMARY_FILE = "segments.json"
SUFFIXES = ("_mask.png", "_overlay.png")  # per image: class ids, then the overlay


@dataclass
class Segmented:
    """One image's class map at its own size, and where its files go."""

    path: Path
    mask_file: Path
    overlay_file: Path
    classes: object  # (H, W) uint8 class ids
    confidence: float  # mean probability of the chosen class over the model's output


@click.command("segment")
@click.argument("model")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@out_dir_option("Folder for the masks, the overlays and segments.json (created).")
@click.option(
    "--alpha",
    type=float,
    default=0.5,
    show_default=True,
    help="Opacity of the class colours over the image (0 to 1).",
)
@click.option(
    "--names",
    "names_file",
    metavar="FILE",
    help="Class names, one a line, class 0 (background) first (default: class ids).",
)
@force_option("existing files in the output folder")
@json_option("a summary (per image the share of each class and the files written)")
@handle_errors
def segment_command(model, images, out_dir, alpha, names_file, force, as_json) -> None:
    """Segment IMAGE files with MODEL.tflite, a mobilecv segmenter (float or int8).

    Each image (PNG, JPEG, TIFF, ...; grey, RGB or RGBA) is converted to the model's
    channels, stretched to its input size with bilinear filtering and mapped to the input
    range in its metadata. The per-pixel argmax (mobilecv.postprocess) is scaled back to
    the image's own size by the nearest pixel; an unpadded ("valid") U-Net's map covers the
    centre of the image, and its border is written as background.

    Writes into the folder -o OUT, per image: <stem>_mask.png (8-bit, each pixel its class
    id, 0 the background) and <stem>_overlay.png (the classes in colour over the image);
    and segments.json (per image the share of pixels of each class and the mean
    confidence). Existing files are kept unless --force.
    """
    if not 0.0 <= alpha <= 1.0:  # NaN fails too
        raise InputError(f"--alpha must be in [0, 1]; got {alpha:g}")
    info = _segmenter_info(model)
    paths = image_paths(images)
    targets = output_targets(paths, Path(out_dir), SUFFIXES, [SUMMARY_FILE], force)
    names = read_names(names_file) if names_file else None
    runner = load_model(model, "segment")
    classes = _check_model(runner, model, names, names_file)
    labels = names or [str(k) for k in range(classes)]
    progress = not as_json and len(paths) > 1
    found = each_image(
        "segmenting", paths, targets,
        lambda path, target: _segment_one(runner, path, target, info), progress,
    )  # fmt: skip
    written = _write_all(found, labels, alpha, Path(out_dir), force, progress)
    if as_json:
        echo_json(_summary(model, runner, found, labels, written))
    else:
        for one in found:
            click.echo(summary_line(one, labels))


# ------------------------------------------------------------------ checks, before any work


def _segmenter_info(model: str):
    from mobilecv.modelinfo import read_info

    info = read_info(model)  # InputError for a missing, non-TFLite or corrupt file
    if info is None:
        raise InputError(
            f"{model}: no mobilecv metadata, so its task and input range are unknown "
            "(convert it with `mobilecv convert`)"
        )
    if info.task != "segmentation":
        raise InputError(f"{model} is a {info.task} model, not a segmenter")
    return info


def _check_model(runner, model: str, names, names_file) -> int:
    """The model's class count, after one blank image: a model whose output is not a
    per-pixel class map is refused before any image is read."""
    import numpy as np

    blank = np.zeros(runner.input_shape, dtype=np.float32)
    try:
        mask = runner.predict_outputs(blank, ("mask",))["mask"]
    except (ValueError, KeyError, InputError) as exc:
        raise InputError(f"{model}: outputs unlike a segmenter's ({one_line(exc)})") from None
    if mask.ndim != 4 or mask.shape[-1] < 2:
        raise InputError(f"{model}: output {list(mask.shape)} is not (N, H, W, classes)")
    classes = int(mask.shape[-1])
    if names is not None and len(names) != classes:
        raise InputError(f"{names_file} has {len(names)} names; the model has {classes} classes")
    return classes


# ------------------------------------------------------------------ segmentation


def _segment_one(runner, path: Path, target: tuple[Path, Path], info) -> Segmented:
    import numpy as np

    from mobilecv import postprocess

    image = read_image(path)
    x = model_input(image, runner.input_shape, info.input_range)
    mask = runner.predict_outputs(x, ("mask",))["mask"]
    decoded = postprocess.segmentation(mask, info.task_options.get("input_size"))
    width, height = image.size
    classes = postprocess.class_map_to(decoded["classes"][0], height, width, decoded["margin"])
    confidence = float(np.mean(decoded["confidence"]))
    return Segmented(path, *target, classes, confidence)


# ------------------------------------------------------------------ writing


def _save_png(array, target: Path, force: bool) -> None:
    from PIL import Image

    from mobilecv.fileio import atomic_path

    with atomic_path(target, force=force) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _write_all(found, labels, alpha: float, out: Path, force: bool, progress) -> list[Path]:
    """Masks and overlays, then segments.json, each atomically."""
    import numpy as np

    from mobilecv import postprocess
    from mobilecv.fileio import write_json
    from mobilecv.progress import Progress

    written = []
    with Progress("writing", len(found), "image", enabled=progress) as bar:
        for one in found:
            picture = np.asarray(read_image(one.path))
            _save_png(one.classes, one.mask_file, force)
            _save_png(postprocess.overlay(picture, one.classes, alpha), one.overlay_file, force)
            written += [one.mask_file, one.overlay_file]
            bar.update(1, note=one.path.name)
    summary = [_image_entry(one, labels) for one in found]
    written.append(write_json(out / SUMMARY_FILE, {"images": summary}, force=force))
    return written


# ------------------------------------------------------------------ reports


def class_shares(classes, labels: list[str]) -> dict[str, float]:
    """Share of the image's pixels in each class, by name (classes with no pixel left out)."""
    import numpy as np

    counts = np.bincount(classes.ravel(), minlength=len(labels))
    return {labels[k]: round(float(n) / classes.size, 6) for k, n in enumerate(counts) if n}


def _image_entry(one: Segmented, labels) -> dict:
    height, width = one.classes.shape
    return {
        "file": str(one.path),
        "width": width,
        "height": height,
        "class_shares": class_shares(one.classes, labels),
        "mean_confidence": round(one.confidence, 6),
        "mask": str(one.mask_file),
        "overlay": str(one.overlay_file),
    }


def summary_line(one: Segmented, labels: list[str]) -> str:
    """ "IMAGE (W x H): A 61.2%, B 30.1%, ... -> OUT_overlay.png" """
    shares = sorted(class_shares(one.classes, labels).items(), key=lambda kv: -kv[1])
    height, width = one.classes.shape
    top = ", ".join(f"{name} {share:.1%}" for name, share in shares[:4])
    return f"{one.path} ({width}x{height}): {top} -> {one.overlay_file}"


def _summary(model: str, runner, found, labels, written: list[Path]) -> dict:
    return {
        "model": model,
        "input_shape": list(runner.input_shape),
        "classes": labels,
        "images": [_image_entry(one, labels) for one in found],
        "written": [str(path) for path in written],
    }

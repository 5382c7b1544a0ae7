"""`mobilecv detect`: run a .tflite detector on image files and draw what it finds.

A thin layer over the library: the model's metadata (mobilecv.modelinfo: task, input
range, anchors), LiteRT (mobilecv.evaluate.TfliteModel) and the numpy post-processing
(mobilecv.postprocess.decode), or, for a model converted with `--nms`, the detections its
graph gives. It only reads images, scales boxes to pixels and writes.
Nothing here imports TensorFlow, and numpy and Pillow are imported inside the command,
so `mobilecv --help` does not pay for them.

Every check runs before any work, and every image is read and detected before the first
file is written: bad input leaves nothing behind, and each file is written atomically.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
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

DETECTIONS_FILE = "detections.json"  # COCO results format
IMAGES_FILE = "images.json"  # COCO "images" and "categories"


@dataclass
class Found:
    """One image's detections, boxes in the original image's pixels."""

    path: Path
    target: Path  # the drawn image, OUT/<stem>.png
    width: int
    height: int
    detections: list[dict] = field(default_factory=list)  # category_id, bbox, score


@dataclass(frozen=True)
class Decoder:
    """How a detector's outputs become detections: the numpy post-processing with the
    model's anchors, or, for a model with its NMS in the graph, the graph's detections,
    only cut further by the score threshold and the maximum (its IoU threshold is the one
    given at conversion)."""

    anchors: object
    options: dict
    in_graph: bool

    @property
    def names(self) -> tuple[str, ...]:
        from mobilecv import postprocess

        return postprocess.DETECTIONS if self.in_graph else postprocess.TASK_OUTPUTS["detection"]

    def __call__(self, outputs: dict) -> dict:
        from mobilecv import postprocess

        if not self.in_graph:
            return postprocess.decode("detection", outputs, anchors=self.anchors, **self.options)
        keep = {k: self.options[k] for k in ("score_threshold", "max_detections")}
        return postprocess.keep_detections(outputs, **keep)


@click.command("detect")
@click.argument("model")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@out_dir_option("Folder for the drawn images, detections.json and images.json (created).")
@click.option(
    "--score-threshold",
    type=float,
    default=0.25,
    show_default=True,
    help="Keep boxes whose objectness x class probability is above this (0 to 1).",
)
@click.option(
    "--iou-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Per-class NMS drops a box overlapping a better one by this IoU (0 to 1).",
)
@click.option(
    "--max-detections",
    type=int,
    default=50,
    show_default=True,
    help="At most this many boxes an image, best first.",
)
@click.option(
    "--names",
    "names_file",
    metavar="FILE",
    help="Class names, one a line, in class-id order (default: class ids are shown).",
)
@force_option("existing files in the output folder")
@json_option("a summary (per image the detections and the files written)")
@handle_errors
def detect_command(
    model, images, out_dir, score_threshold, iou_threshold, max_detections, names_file,
    force, as_json,
) -> None:  # fmt: skip
    """Detect objects in IMAGE files with MODEL.tflite, a mobilecv detector (float or
    int8), and draw them.

    Each image (PNG, JPEG, TIFF, ...; grey, RGB or RGBA) is converted to the model's
    channels (RGB to grey by luminance, grey repeated to RGB, alpha dropped), stretched
    to the model's input size (not letterboxed: the model's scenes are square) with
    bilinear filtering, mapped to the input range in its metadata and decoded with the
    anchors in its metadata (mobilecv.postprocess); a model converted with --nms gives
    its own detections, cut by the thresholds here (its IoU threshold is the one it was
    converted with). Boxes are scaled back to the original image's pixels.

    Writes into the folder -o OUT: <stem>.png per image (the boxes drawn, a colour per
    class, labelled "name score"), detections.json (COCO results: image_id, file_name,
    category_id = class id, bbox [x, y, w, h] in pixels, score) and images.json (COCO
    "images", ids from 1 in the order given, and "categories"): add "annotations" to
    images.json and pycocotools scores the two. Existing files are kept unless --force.
    """
    options = _decode_options(score_threshold, iou_threshold, max_detections)
    info, anchors = _detector_info(model)
    decoder = Decoder(anchors, options, in_graph="nms" in info.task_options)
    paths = image_paths(images)
    targets = output_targets(paths, Path(out_dir), [".png"], [DETECTIONS_FILE, IMAGES_FILE], force)
    names = read_names(names_file) if names_file else None
    runner = load_model(model, "detect")
    classes = _check_model(runner, model, decoder, info, names, names_file)
    progress = not as_json and len(paths) > 1
    found = each_image(
        "detecting", paths, targets,
        lambda path, target: _detect_one(runner, path, target, info.input_range, decoder),
        progress,
    )  # fmt: skip
    labels = names or [str(k) for k in range(classes)]
    written = _write_all(found, labels, Path(out_dir), force, progress)
    if as_json:
        echo_json(_summary(model, runner, found, labels, written))
    else:
        for one in found:
            click.echo(summary_line(one, labels))


# ------------------------------------------------------------------ checks, before any work


def _decode_options(score_threshold: float, iou_threshold: float, max_detections: int) -> dict:
    """The post-processing options, each checked (one-line errors, not click's usage)."""
    for flag, value in (("--score-threshold", score_threshold), ("--iou-threshold", iou_threshold)):
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise InputError(f"{flag} must be in [0, 1]; got {value:g}")
    if max_detections < 1:
        raise InputError(f"--max-detections must be at least 1; got {max_detections}")
    return {
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
        "max_detections": max_detections,
    }


def _detector_info(model: str):
    """(ModelInfo, anchors (B, 2)) of a .tflite detector, from its metadata."""
    import numpy as np

    from mobilecv.modelinfo import read_info

    info = read_info(model)  # InputError for a missing, non-TFLite or corrupt file
    if info is None:
        raise InputError(
            f"{model}: no mobilecv metadata, so its task and anchors are unknown "
            "(convert it with `mobilecv convert`)"
        )
    if info.task != "detection":
        raise InputError(f"{model} is a {info.task} model, not a detector")
    anchors = info.task_options.get("anchors")
    if not anchors:
        raise InputError(f"{model}: a detector without anchors in its metadata")
    try:
        anchors = np.asarray(anchors, dtype=np.float32)
    except (TypeError, ValueError):
        anchors = np.zeros(0)
    if anchors.ndim != 2 or anchors.shape[1] != 2 or not (anchors > 0).all():
        raise InputError(f"{model}: its anchors are not positive (width, height) pairs")
    return info, anchors


def _check_model(runner, model: str, decoder: Decoder, info, names, names_file) -> int:
    """The model's class count, after one blank image through the model and the decoder:
    outputs that do not fit its anchors are refused before any image is read."""
    import numpy as np

    blank = np.zeros(runner.input_shape, dtype=np.float32)
    try:
        outputs = runner.predict_outputs(blank, decoder.names)
        decoder(outputs)
    except (ValueError, KeyError, InputError) as exc:
        raise InputError(f"{model}: outputs unlike a YOLO detector's ({one_line(exc)})") from None
    # A graph with NMS outputs detections, not class scores: its class count is a knob.
    classes = (
        int(info.source.get("classes", 0)) if decoder.in_graph else outputs["scores"].shape[-1]
    )
    if classes < 1:
        raise InputError(f"{model}: its metadata does not say how many classes it has")
    if names is not None and len(names) != classes:
        raise InputError(f"{names_file} has {len(names)} names; the model has {classes} classes")
    return classes


# ------------------------------------------------------------------ images and detection


def to_pixels(decoded: dict, width: int, height: int, i: int = 0) -> list[dict]:
    """Image i's decoded detections as COCO results: category_id, bbox [x, y, w, h] in
    pixels of a width x height image, score."""
    scale = [width, height, width, height]
    found = []
    for k in range(int(decoded["count"][i])):
        x0, y0, x1, y1 = (round(float(v) * s, 3) for v, s in zip(decoded["boxes"][i, k], scale, strict=True))  # fmt: skip
        found.append(
            {
                "category_id": int(decoded["classes"][i, k]),
                "bbox": [x0, y0, round(x1 - x0, 3), round(y1 - y0, 3)],
                "score": round(float(decoded["scores"][i, k]), 6),
            }
        )
    return found


def _detect_one(runner, path: Path, target: Path, input_range, decoder: Decoder) -> Found:
    image = read_image(path)
    x = model_input(image, runner.input_shape, input_range)
    decoded = decoder(runner.predict_outputs(x, decoder.names))
    width, height = image.size
    return Found(path, target, width, height, to_pixels(decoded, width, height))


# ------------------------------------------------------------------ writing


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct, saturated colour for class k (hues spaced by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((0.12 + 0.618034 * k) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def draw(image, detections: list[dict], labels: list[str]):
    """The image in RGB with each box drawn in its class's colour, labelled "name score"."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    line, font = max(1, round(side / 200)), _font(max(10, round(side / 40)))
    for det in detections:
        x, y, w, h = det["bbox"]
        colour = class_colour(det["category_id"])
        pen.rectangle([x, y, x + w, y + h], outline=colour, width=line)
        text = f"{labels[det['category_id']]} {det['score']:.2f}"
        height = pen.textbbox((0, 0), text, font=font)[3] + 2
        at = (x + 1, y - height if y >= height else y + 1)  # above the box, else inside
        pen.rectangle(pen.textbbox(at, text, font=font), fill=colour, width=0)
        pen.text(at, text, fill=(0, 0, 0), font=font)
    return canvas


def coco_files(found: list[Found], labels: list[str]) -> tuple[list[dict], dict]:
    """(detections.json: COCO results, images.json: COCO images and categories)."""
    results = [
        {"image_id": i, "file_name": one.path.name, **det}
        for i, one in enumerate(found, start=1)
        for det in one.detections
    ]
    images = [
        {"id": i, "file_name": one.path.name, "width": one.width, "height": one.height}
        for i, one in enumerate(found, start=1)
    ]
    categories = [{"id": k, "name": name} for k, name in enumerate(labels)]
    return results, {"images": images, "categories": categories}


def _write_all(found: list[Found], labels, out: Path, force: bool, progress: bool) -> list[Path]:
    """The drawn images, then detections.json and images.json, each atomically."""
    from mobilecv.fileio import atomic_path, write_json
    from mobilecv.progress import Progress

    with Progress("drawing", len(found), "image", enabled=progress) as bar:
        for one in found:
            drawn = draw(read_image(one.path), one.detections, labels)
            with atomic_path(one.target, force=force) as tmp:
                drawn.save(tmp, format="PNG")
            bar.update(1, note=one.target.name)
    results, images = coco_files(found, labels)
    written = [one.target for one in found]
    written.append(write_json(out / DETECTIONS_FILE, results, force=force))
    written.append(write_json(out / IMAGES_FILE, images, force=force))
    return written


# ------------------------------------------------------------------ reports


def summary_line(one: Found, labels: list[str]) -> str:
    """ "IMAGE (W x H): N detections, top classes A (n), B (m), best score S -> OUT.png" """
    from collections import Counter

    head = f"{one.path} ({one.width}x{one.height}): "
    if not one.detections:
        return f"{head}no detections -> {one.target}"
    counts = Counter(det["category_id"] for det in one.detections).most_common(3)
    top = ", ".join(f"{labels[k]} ({n})" for k, n in counts)
    best = max(det["score"] for det in one.detections)
    n = len(one.detections)
    return (
        f"{head}{n} detection{'s' if n != 1 else ''}, top classes {top}, best score "
        f"{best:.2f} -> {one.target}"
    )


def _summary(model: str, runner, found: list[Found], labels, written: list[Path]) -> dict:
    return {
        "model": model,
        "input_shape": list(runner.input_shape),
        "images": [
            {
                "file": str(one.path),
                "image_id": i,
                "width": one.width,
                "height": one.height,
                "count": len(one.detections),
                "detections": [
                    {**det, "name": labels[det["category_id"]]} for det in one.detections
                ],
                "written": str(one.target),
            }
            for i, one in enumerate(found, start=1)
        ],
        "written": [str(path) for path in written],
    }

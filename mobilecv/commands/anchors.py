"""`mobilecv anchors`: anchor shapes for a detector by k-means (mobilecv.anchors).

numpy is imported inside the command, so `mobilecv --help` does not pay for it."""

from __future__ import annotations

from pathlib import Path

import click

from mobilecv.cliutil import echo_json, handle_errors, json_option
from mobilecv.errors import InputError


@click.command("anchors")
@click.argument("data")
@click.option(
    "-k",
    "--anchors",
    "k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Number of anchors.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "validation", "test"]),
    default="train",
    show_default=True,
    help="Which scenes (DATA scenes only).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Scenes to generate (DATA scenes only).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    metavar="FILE.png",
    help="Save a scatter of the box shapes coloured by cluster, anchors marked.",
)
@json_option("the anchors and figures")
@handle_errors
def anchors_command(data, k, split, limit, seed, plot, as_json) -> None:
    """Anchor shapes for DATA by k-means with the distance 1 - IoU (YOLOv2).

    DATA is `scenes` (the detection task's generated scenes) or a COCO instances .json
    file (crowd boxes left out). Anchors are (width, height) as fractions of the image.
    Prints them with the mean best IoU of the boxes, beside that of K squares on a
    geometric grid of sizes (the 10th to 90th percentile of the boxes' sqrt(w*h)).
    """
    import numpy as np

    from mobilecv.anchors import kmeans_anchors, mean_best_iou, shape_iou, square_grid

    if plot is not None:
        _check_plot(plot)
    wh, source, image = _load(data, split, limit, progress=not as_json)
    anchors, best = kmeans_anchors(wh, k, seed=seed)
    result = {
        "anchors": anchors.round(6).tolist(),
        "mean_best_iou": round(best, 6),
        "boxes": int(len(wh)),
        "source": source,
        "baseline_mean_best_iou": round(mean_best_iou(wh, square_grid(wh, k)), 6),
        "image_size": image,
    }
    cluster = shape_iou(wh, anchors).argmax(axis=1)
    result["cluster_sizes"] = np.bincount(cluster, minlength=k).tolist()
    if plot is not None:
        _plot(wh, anchors, cluster, plot, source)
    if as_json:
        echo_json(result)
    else:
        click.echo(format_table(result))
    if plot is not None:
        click.echo(f"wrote {plot}", err=True)


def _check_plot(plot: str) -> None:
    """Refuse a bad --plot path before any work."""
    from mobilecv.fileio import check_writable

    if Path(plot).suffix.lower() != ".png":
        raise InputError(f"--plot must end in .png; got {plot}")
    check_writable(plot, force=True)


def _load(data: str, split: str, limit: int, progress: bool):
    """(box shapes (N, 2) as fractions of the image, source text, image [h, w] or None)."""
    from mobilecv.anchors import coco_shapes, corners_to_shapes

    if data != "scenes":
        ctx = click.get_current_context()
        for name in ("split", "limit"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise InputError(f"--{name} applies to DATA scenes, not to a COCO file")
        return coco_shapes(data), f"COCO file {data}", None
    from mobilecv.progress import Progress
    from mobilecv.tasks import get_task

    task = get_task("detection")
    with Progress(f"generating {split} scenes", limit, "scene", enabled=progress) as bar:
        loaded = task.load("scenes", split, limit=limit)
        bar.update(len(loaded.x))
    image = [int(loaded.x.shape[1]), int(loaded.x.shape[2])]
    source = f"detection scenes ({split}, {len(loaded.x)} scenes)"
    return corners_to_shapes(loaded.y["box"]), source, image


def format_table(result: dict) -> str:
    """The anchors (fractions, and pixels when the image size is known) and the figures."""
    image = result["image_size"]
    k = len(result["anchors"])
    head = f"{result['source']}: {result['boxes']} boxes"
    if image:
        head += f", image {image[1]}x{image[0]} px"
    lines = [head, f"{'#':>3} {'width':>7} {'height':>7}" + ("   w px   h px" if image else "")]
    lines[-1] += f" {'boxes':>7}"
    for i, ((w, h), n) in enumerate(zip(result["anchors"], result["cluster_sizes"], strict=True)):
        line = f"{i + 1:>3} {w:>7.4f} {h:>7.4f}"
        if image:
            line += f" {w * image[1]:>6.1f} {h * image[0]:>6.1f}"
        lines.append(f"{line} {n:>7}")
    lines.append(f"mean best IoU: {result['mean_best_iou']:.4f} (k-means, distance 1 - IoU)")
    lines.append(
        f"baseline:      {result['baseline_mean_best_iou']:.4f} ({k} squares on a geometric "
        "grid of sizes)"
    )
    return "\n".join(lines)


def _plot(wh, anchors, cluster, path: str, title: str) -> None:
    """Box widths vs heights coloured by cluster, the anchors as black crosses (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobilecv.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(
        wh[:, 0], wh[:, 1], c=cluster % 10, cmap="tab10", vmin=0, vmax=9, s=6, alpha=0.5, lw=0
    )
    ax.scatter(anchors[:, 0], anchors[:, 1], c="black", marker="x", s=80, label="anchors")
    ax.set_xlabel("box width (fraction of the image)")
    ax.set_ylabel("box height (fraction of the image)")
    ax.set_title(f"{len(anchors)} anchors by k-means, 1 - IoU\n{title}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

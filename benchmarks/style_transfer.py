"""Fast style transfer on a phone (issue 16, section 2): a Johnson et al. 2016 stylizer,
trained for starry_night on random crops of the scikit-image / scikit-learn photos against
mobilecv.style's perceptual loss (the offline random multi-scale loss network), run at
384 x 384 as float16 and int8 .tflite.

Rows: the trained stylizer (width 0.25, BatchNorm folded, resize-convolution) as float16
and int8; for scale, the paper's network (width 1, transposed convolutions) untrained,
as float16 and int8 (size and estimates only). Columns: .tflite bytes, MACs, host p50 on
1 thread (measured, LiteRT), estimated latency on pixel1 and rpi4 (mobilecv.bench.estimate)
and PSNR against the float Keras model on the five photos (the converter's own check,
on held-out crops, is in the JSON). The stylised photos are saved as PNGs.

Usage:
    python benchmarks/style_transfer.py [--quick] [--json] [--out DIR] [--no-readme]
        [--render JSON]

Writes DIR/style_transfer[_quick].json and .md and style_transfer[_quick]_*.png
atomically, and rewrites the README section between `<!-- style_transfer:begin -->` and
`<!-- style_transfer:end -->` (not for --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _support import common

import mobilecv

PACKAGES = ("tensorflow", "tf_keras", "keras", "ai-edge-litert")
DEVICES = ("pixel1", "rpi4")
STYLE = "starry_night"
# The issue's targets.
MAX_INT8_BYTES = 500_000
MAX_PIXEL1_MS = 400.0
MIN_PSNR_DB = 30.0
FULL = {"steps": 300, "crop": 128, "batch": 4, "calibration": 48, "runs": 10}
QUICK = {"steps": 60, "crop": 64, "batch": 2, "calibration": 16, "runs": 3}
VERIFY_CROPS = 8
PAPER = {"width": 1.0, "upsample": "transposed"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 10 minutes, to check the script")
    for key in FULL:
        p.add_argument(f"--{key}", type=int, default=None, help=f"default {FULL[key]}")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--resolution", type=int, default=384, help="side of the exported models")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    common.add_output_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------ training


def train(args, photos):
    """The trained stylizer at the crop size, and its training summary."""
    from mobilecv import fast_style, style

    common.log(f"== training the stylizer: {args.steps} steps of {args.batch} x {args.crop} px")
    model = mobilecv.build("stylizer", width=args.width, resolution=args.crop)
    net = style.loss_network("random", size=args.crop, seed=args.seed)
    style_image = style.square(style.load_image(STYLE), args.crop)
    report = fast_style.train_stylizer(
        model, style_image, net, photos, steps=args.steps, batch=args.batch,
        learning_rate=args.lr, seed=args.seed, progress=False,
    )  # fmt: skip
    summary = {"params": int(model.count_params()), **report.to_json()}
    summary["losses"] = [round(v, 6) for v in report.losses]
    return model, summary


# ------------------------------------------------------------------ export and measure


def convert(model, mode: str, calib: np.ndarray, path: Path, verify: bool = True) -> dict:
    """Convert (calibration rows first, the held-out crops after) and write ``path``."""
    from mobilecv.converters.tflite import convert as to_tflite

    count = len(calib) - VERIFY_CROPS
    result = to_tflite(model, mode, calibration=calib, samples=count, verify=verify,
                       verify_samples=VERIFY_CROPS, progress=False)  # fmt: skip
    path.write_bytes(result.tflite)
    check = result.verification
    return {"converter_check": check.to_dict() if check else None, "notes": result.notes}


def measure(path: Path, runs: int) -> dict:
    figures = common.device_figures([path], DEVICES, runs, tflm=False)
    return {k: figures[k] for k in ("bytes", "macs", "host_p50_ms", "estimate_ms")}


def estimate_only(path: Path) -> dict:
    import mobilecv.bench as bench
    from mobilecv.bench import devices, estimate

    graph = bench.load(path)
    ms = {n: float(estimate.estimate(graph, devices.get(n)).latency_ms) for n in DEVICES}
    return {"bytes": graph.model_bytes, "macs": int(graph.macs), "host_p50_ms": None,
            "estimate_ms": ms}  # fmt: skip


def stylised_rows(model, args, photos, calib, workdir: Path, pictures) -> dict:
    """float16 and int8 rows of the trained stylizer at ``args.resolution``, with the
    PSNR of each against the float Keras model on the photos."""
    from mobilecv import fast_style, style

    big = fast_style.at_resolution(model, args.resolution)
    images = np.stack([style.square(p, args.resolution) for p in photos])
    reference = fast_style.stylize_images(big, images)
    pictures.setdefault("float", reference)
    rows = {}
    for mode in ("float16", "int8"):
        common.log(f"== {mode} at {args.resolution} px")
        path = workdir / f"stylizer_{mode}.tflite"
        row = convert(big, mode, calib, path)
        row.update(measure(path, args.runs))
        got = np.clip(common.tflite_outputs(path, images, ["image"])["image"], 0.0, 1.0)
        row["psnr_db"] = psnr_rows(reference, got)
        pictures[mode] = got
        rows[f"stylizer {args.width:g} {mode}"] = row
    return rows


def psnr_rows(reference: np.ndarray, got: np.ndarray) -> dict:
    from mobilecv.tasks.stylization import psnr

    per_photo = [psnr(a, b) for a, b in zip(reference, got, strict=True)]
    return {"all": round(psnr(reference, got), 2), "min": round(min(per_photo), 2)}


def paper_rows(args, calib, workdir: Path) -> dict:
    """The paper's network (untrained): what width 1 would cost on the devices."""
    rows = {}
    model = mobilecv.build("stylizer", resolution=args.resolution, **PAPER)
    for mode in ("float16", "int8"):
        common.log(f"== paper network {mode} (untrained, estimates only)")
        path = workdir / f"paper_{mode}.tflite"
        # Untrained and 10x the MACs: a few crops calibrate it (no PSNR is reported).
        row = convert(model, mode, calib[: VERIFY_CROPS + 8], path, verify=False)
        row.update(estimate_only(path))
        row["psnr_db"] = None
        rows[f"paper (width 1, transposed, untrained) {mode}"] = row
    return rows


# ------------------------------------------------------------------ outputs


def save_pictures(pictures: dict, photos_shown: list[str], out_dir: Path, stem: str) -> dict:
    """One PNG per photo (int8 on the phone), and a grid: content, float, float16, int8."""
    from mobilecv import style

    paths = {}
    for name, image in zip(photos_shown, pictures["int8"], strict=True):
        path = out_dir / f"{stem}_{name}_int8.png"
        style.save_png(image, path, force=True)
        paths[name] = str(common.shown_path(path))
    plt = common.pyplot()
    columns = ("content", "float", "float16", "int8")
    fig, axes = plt.subplots(len(photos_shown), 4, figsize=(8, 2 * len(photos_shown)),
                             squeeze=False)  # fmt: skip
    for r in range(len(photos_shown)):
        for c, column in enumerate(columns):
            axes[r, c].imshow(pictures[column][r])
            axes[r, c].axis("off")
            axes[0, c].set_title(column, fontsize=9)
    fig.suptitle(f"{STYLE}: stylizer outputs (Keras float, LiteRT float16 and int8)", fontsize=9)
    fig.tight_layout()
    grid = out_dir / f"{stem}_grid.png"
    common.save_png(fig, grid, dpi=90)
    paths["grid"] = str(common.shown_path(grid))
    return paths


def targets(rows: dict, width: float) -> list[dict]:
    int8 = rows[f"stylizer {width:g} int8"]
    return [
        {"target": f"int8 stylizer <= {MAX_INT8_BYTES / 1e6:g} MB",
         "measured": f"{int8['bytes']} bytes", "pass": int8["bytes"] <= MAX_INT8_BYTES},
        {"target": f"int8 estimate on pixel1 at 384 px < {MAX_PIXEL1_MS:g} ms",
         "measured": f"{int8['estimate_ms']['pixel1']:.1f} ms",
         "pass": int8["estimate_ms"]["pixel1"] < MAX_PIXEL1_MS},
        {"target": f"PSNR int8 vs float >= {MIN_PSNR_DB:g} dB (worst photo)",
         "measured": f"{int8['psnr_db']['min']:.2f} dB",
         "pass": int8["psnr_db"]["min"] >= MIN_PSNR_DB},
    ]  # fmt: skip


def markdown(result: dict) -> str:
    fmt = common.fmt
    cfg = result["config"]
    lines = [
        f"Stylizer trained for `{STYLE}` on random crops of astronaut, chelsea, coffee, "
        f"china, flower: {cfg['steps']} Adam steps of {cfg['batch']} x {cfg['crop']} px crops "
        f"({result['training']['seconds']} s, {result['training']['params']} parameters), "
        f"exported at {cfg['resolution']} x {cfg['resolution']}. PSNR: LiteRT against the "
        "float Keras model on the five photos (all pixels / worst photo).",
        "",
        "| model | .tflite bytes | MACs | host p50 ms (1 thread) | pixel1 est. ms | "
        "rpi4 est. ms | PSNR dB (all / worst) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        psnr = row["psnr_db"]
        shown = f"{psnr['all']:.2f} / {psnr['min']:.2f}" if psnr else "-"
        est = row["estimate_ms"]
        lines.append(
            f"| {name} | {row['bytes']:,} | {row['macs'] / 1e9:.2f} G | "
            f"{fmt(row['host_p50_ms'], '.1f')} | {est['pixel1']:.1f} | {est['rpi4']:.1f} | "
            f"{shown} |"
        )
    lines += ["", *(f"- {common.target_line(t)}" for t in result["targets"])]
    pictures = result["pictures"]
    lines += ["", f"Pictures: {pictures['grid']} (content / float / float16 / int8); int8 "
              f"outputs {', '.join(v for k, v in pictures.items() if k != 'grid')}.", ""]  # fmt: skip
    return "\n".join(lines)


def finish(result: dict, args) -> int:
    return common.publish_and_print(args, "style_transfer", result, markdown(result))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    from mobilecv import fast_style, style

    wall, out_dir, stem = common.start_run(args, "style_transfer")
    names = [str(n) for n in fast_style.CONTENT_SAMPLES]
    photos = fast_style.content_photos(names)
    model, training = train(args, photos)
    rng = np.random.default_rng(args.seed + 1)  # crops the training never drew
    calib = fast_style.random_crops(photos, args.calibration + VERIFY_CROPS, args.resolution, rng)
    pictures = {"content": np.stack([style.square(p, args.resolution) for p in photos])}
    with tempfile.TemporaryDirectory(prefix="mobilecv-style-") as workdir:
        rows = stylised_rows(model, args, photos, calib, Path(workdir), pictures)
        rows.update(paper_rows(args, calib, Path(workdir)))
    result = {"rows": rows, "training": training}
    result["pictures"] = save_pictures(pictures, names, out_dir, stem)
    result["targets"] = targets(rows, args.width)
    result.update(common.run_metadata(args, PACKAGES, wall))
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

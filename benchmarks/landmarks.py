"""Landmarks: a MobileNetV2 landmarker on held-out scenes and on a real AprilTag photo.

The model (`landmarker`, 5 points: a tile's four corners, top-left, top-right,
bottom-right, bottom-left as seen, and its centre) trains on synthetic compositions: one
grey Fashion-MNIST tile a scene, rotated, squashed along a random direction (a card seen
at a slant) and warped in perspective, on real textures (mobilecv.data.scenes), then cut
around the tile from a mosaic of scenes as the photo is cut, so parts of other tiles show
around it as neighbouring markers do in the photo (`recentred`; --no-recentre: lone tiles).
Rows:

- float32 Keras, float32 LiteRT, int8 post-training quantisation (PTQ, calibrated on
  training scenes), and int8 after quantisation-aware training (QAT, fine-tuned from the
  float weights), each scored on held-out test scenes (NME: mean point distance over the
  square root of the object's box area) and on the 12 markers of ViSP's AprilTag photo.
- AprilTag (mobilecv.data.markers): each marker is cropped with a fixed margin around its
  ground-truth corners, resampled to the model's input, its four predicted corners mapped
  back to photo pixels. Ground truth is put in the model's order (by angle around the
  centre, starting top-left). "px" is the mean corner distance in photo pixels, "NME" that
  distance over the square root of the marker's bounding-box area; "px ring" is the same
  with the predicted ring's best cyclic start (a square's outline does not say which
  corner is first when it is turned near 45 degrees). The model never trains on this photo.

Usage:
    python benchmarks/landmarks.py [--quick] [--json] [--out DIR] [--no-readme]

Writes DIR/landmarks[_quick].json (CPU model, versions, date), a PNG of the photo with
predicted and true corners, a PNG of test-scene predictions, and (full run) rewrites the
README's landmarks section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _support import common

import mobilecv

# The task's default scenes (tiles, scale 0.45-0.85, rotation 30, warp 0.2), in grey like
# the photo, with a slant: the photo's markers lie on a table, squashed to about half.
SCENES = {"channels": 1, "tilt": 0.6}
# Training and test scenes are cropped around their tile with a margin in this range (the
# photo's crops use --margin, 0.3), from a mosaic that puts parts of other tiles around it.
RECENTRE_MARGIN = (0.2, 0.4)
ROWS = ("float32 Keras", "float32 LiteRT", "int8 PTQ", "int8 QAT")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small run (< 10 min)")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=96)
    p.add_argument("--head", default="heatmap", help="landmark head: heatmap | grid")
    p.add_argument("--train", type=int, help="training scenes (default 7000, quick 1500)")
    p.add_argument("--test", type=int, help="test scenes (default 1000, quick 300)")
    p.add_argument("--epochs", type=int, help="float epochs (default 8, quick 3)")
    p.add_argument("--qat-epochs", type=int, help="QAT epochs (default 1); 0 skips")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--margin", type=float, default=0.3, help="AprilTag crop margin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recentre",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cut scenes around their tile from a mosaic of scenes, as the photo is cut",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README")
    p.add_argument("--out", default=str(common.OUT))
    args = p.parse_args(argv)
    defaults = {"train": (7000, 1500), "test": (1000, 300), "epochs": (8, 3)}
    defaults["qat_epochs"] = (1, 1)
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


# --------------------------------------------------------------------------- data


def scene_splits(args):
    """Train, validation and test scenes (disjoint source objects), grey and slanted; with
    ``--recentre`` (the default) each is cut like the photo's markers (`recentred`)."""
    from mobilecv.data.markers import recentred
    from mobilecv.tasks import get_task
    from mobilecv.train import Splits

    task = get_task("landmarks")
    counts = {"train": args.train, "validation": max(200, args.train // 10), "test": args.test}
    splits = {}
    for offset, (split, count) in enumerate(counts.items()):
        data = task.load("scenes", split, limit=count, scenes={**SCENES, "seed": args.seed})
        splits[split] = (
            recentred(data, RECENTRE_MARGIN, args.seed + offset) if args.recentre else data
        )
    return Splits(splits["train"], splits["validation"], ()), splits["test"]


# --------------------------------------------------------------------------- models


def train_float(args, splits):
    from mobilecv.data.augment import from_names
    from mobilecv.tasks.landmarks import MIRROR_PERMUTATION
    from mobilecv.train import set_seed, train

    set_seed(args.seed)
    model = mobilecv.build(
        "landmarker",
        width=args.width,
        resolution=args.resolution,
        input_channels=SCENES["channels"],
        head=args.head,
    )
    augment = from_names("mirror", point_permutation=MIRROR_PERMUTATION)
    model, report = train(
        model,
        splits,
        args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        schedule="cosine",
        augment=augment,
        progress=False,
    )
    return model, report, augment


def qat_model(args, model, splits, augment):
    from mobilecv.compress.pipeline import compress

    qat, report = compress(
        model,
        splits,
        qat=True,
        epochs=args.qat_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate / 10,
        schedule="cosine",
        augment=augment,
        progress=False,
    )
    return qat, report


def to_tflite(model, mode: str, calibration: np.ndarray) -> tuple[bytes, dict]:
    from mobilecv.converters.tflite import DEFAULT_SAMPLES, convert

    result = convert(model, mode, calibration=calibration, samples=DEFAULT_SAMPLES, progress=False)
    check = result.verification
    summary = {
        "bytes": len(result.tflite),
        "notes": list(result.notes),
        "agreement": check.agreement if check else None,
        "max_abs_error": check.max_abs_error if check else None,
    }
    return result.tflite, summary


# --------------------------------------------------------------------------- scoring


def predictors(model, qat, calibration: np.ndarray, workdir: Path):
    """Row name -> (function from model inputs to the points output, conversion summary)."""
    from mobilecv.evaluate import TfliteModel
    from mobilecv.tasks import get_task
    from mobilecv.tasks.base import as_outputs

    outputs = get_task("landmarks").outputs

    def keras_fn(keras_model):
        return lambda x: as_outputs(keras_model.predict(x, batch_size=64, verbose=0), outputs)[
            "points"
        ]

    def litert_fn(data: bytes, name: str):
        path = workdir / f"{name}.tflite"
        path.write_bytes(data)
        runner = TfliteModel(path)
        return lambda x: runner.predict_outputs(x, outputs)["points"]

    rows = {ROWS[0]: (keras_fn(model), {})}
    for row, source, mode in ((ROWS[1], model, "none"), (ROWS[2], model, "int8")):
        common.log(f"   converting {row}")
        data, summary = to_tflite(source, mode, calibration)
        rows[row] = (litert_fn(data, mode), summary)
    if qat is not None:
        common.log(f"   converting {ROWS[3]}")
        data, summary = to_tflite(qat, "int8", calibration)
        rows[ROWS[3]] = (litert_fn(data, "qat_int8"), summary)
    return rows


def scene_nme(points: np.ndarray, test) -> float:
    from mobilecv.tasks import get_task

    return get_task("landmarks").score({"points": points}, test.y)["nme"]


def marker_errors(points: np.ndarray, crops) -> dict:
    """Corner errors of predicted points (N, 2K crop fractions) on the AprilTag markers."""
    from mobilecv.data.markers import align_ring, corner_errors, from_crop

    predicted = np.asarray(points, np.float64).reshape(len(crops.ids), -1, 2)
    strict = corner_errors(predicted, crops)
    ring = corner_errors(align_ring(predicted, crops.data.y["points"]), crops)
    return {
        "px": float(strict["px"].mean()),
        "nme": float(strict["nme"].mean()),
        "px_ring": float(ring["px"].mean()),
        "per_marker": {
            int(i): {
                "px": round(float(p), 2),
                "nme": round(float(n), 4),
                "px_ring": round(float(r), 2),
            }
            for i, p, n, r in zip(crops.ids, strict["px"], strict["nme"], ring["px"], strict=True)
        },
        "photo_points": from_crop(predicted[:, :4], crops.boxes).round(2).tolist(),
    }


def score_rows(rows: dict, test_x, test, crop_x, crops) -> dict:
    scores = {}
    for row, (predict, summary) in rows.items():
        common.log(f"   scoring {row}")
        scores[row] = {
            "scenes_nme": scene_nme(predict(test_x), test),
            "apriltag": marker_errors(predict(crop_x), crops),
            "conversion": summary,
        }
        scores[row]["test_points"] = predict(test_x[:12]).tolist()
    return scores


# --------------------------------------------------------------------------- report


def table_lines(result: dict) -> list[str]:
    lines = [
        "| model | scenes NME | AprilTag px | AprilTag NME | AprilTag px ring |",
        "|---|---|---|---|---|",
    ]
    for row, s in result["rows"].items():
        a = s["apriltag"]
        lines.append(
            f"| {row} | {s['scenes_nme']:.4f} | {a['px']:.2f} | {a['nme']:.4f} "
            f"| {a['px_ring']:.2f} |"
        )
    return lines


def marker_lines(result: dict) -> list[str]:
    rows = {k: v for k, v in result["rows"].items() if k in (ROWS[0], ROWS[2], ROWS[3])}
    head = "| marker | side px | " + " | ".join(f"{r} px (NME)" for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 2) + "|"]
    for marker, side in result["apriltag"]["sides"].items():
        cells = []
        for s in rows.values():
            m = s["apriltag"]["per_marker"][marker]
            cells.append(f"{m['px']:.2f} ({m['nme']:.3f})")
        lines.append(f"| {marker} | {side:.0f} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    t, c = result["training"], result["config"]
    quick = " (QUICK run: small, not the reported figures)" if c["quick"] else ""
    return "\n".join(
        [
            f"MobileNetV2 landmarker (width {c['width']:g}, {c['resolution']} px grey, "
            f"{c['head']} head, {t['params']:,} parameters), {t['epochs']} epochs on "
            f"{t['train_samples']:,} scenes ({t['seconds']:.0f} s), QAT {c['qat_epochs']} "
            f"epochs. Scenes: {result['provenance']}; {c['test']} held-out test scenes. "
            f"AprilTag: {result['apriltag']['provenance']}; crop margin {c['margin']:g} of "
            f"the marker's side.{quick}",
            "",
            *table_lines(result),
            "",
            "Per AprilTag marker (mean corner error in photo pixels, NME in brackets):",
            "",
            *marker_lines(result),
            "",
            f"Run: {result['wall_seconds'] / 60:.1f} min on {result['machine']['cpu']} "
            f"({result['machine']['date']}); figures from benchmarks/landmarks.py.",
            "",
        ]
    )


def write_photo_plot(result: dict, crops, path: Path) -> None:
    fig, ax = common.pyplot().subplots(figsize=(9.6, 7.2))
    ax.imshow(crops.image, cmap="gray")
    styles = {ROWS[0]: ("red", "o"), ROWS[2]: ("deepskyblue", "+")}
    styles[ROWS[3]] = ("orange", "x")
    for row, (colour, marker) in styles.items():
        if row not in result["rows"]:
            continue
        for quad in np.asarray(result["rows"][row]["apriltag"]["photo_points"]):
            ring = np.vstack([quad, quad[:1]])
            ax.plot(ring[:, 0], ring[:, 1], c=colour, lw=0.8)
            ax.scatter(quad[:1, 0], quad[:1, 1], c=colour, marker=marker, s=30)
        ax.plot([], [], c=colour, marker=marker, label=f"{row} (first corner marked)")
    for quad in crops.corners:
        ring = np.vstack([quad, quad[:1]])
        ax.plot(ring[:, 0], ring[:, 1], c="lime", lw=0.8, ls="--")
    ax.plot([], [], c="lime", ls="--", label="ground truth (ViSP)")
    for marker, quad in zip(crops.ids, crops.corners, strict=True):
        ax.text(*quad.mean(axis=0), str(marker), color="yellow", fontsize=9, ha="center")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("AprilTag photo: predicted vs true corners (the model never saw it)", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    import tempfile

    from mobilecv.data.datasets import model_inputs
    from mobilecv.data.markers import apriltag_crops, marker_sizes

    args = parse_args(argv)
    wall = time.perf_counter()
    common.log("scenes")
    splits, test = scene_splits(args)
    common.log(f"training float ({args.epochs} epochs on {len(splits.train)} scenes)")
    model, report, augment = train_float(args, splits)
    qat = None
    if args.qat_epochs > 0:
        common.log(f"QAT ({args.qat_epochs} epochs)")
        qat, _ = qat_model(args, model, splits, augment)
    crops = apriltag_crops(args.resolution, args.margin)
    calibration = model_inputs(splits.train.x[:200], model)
    test_x, crop_x = model_inputs(test.x, model), model_inputs(crops.data.x, model)
    with tempfile.TemporaryDirectory() as tmp:
        rows = predictors(model, qat, calibration, Path(tmp))
        scores = score_rows(rows, test_x, test, crop_x, crops)
    result = {
        "config": common.run_config(args, ("json", "out", "no_readme")),
        "scenes": SCENES,
        "provenance": test.provenance,
        # CPU model, versions, date: as sliding_windows records them
        "machine": common.machine(common.LITERT_PACKAGES, python_apart=True, load_average=True),
        "training": {
            "epochs": report.epochs,
            "train_samples": report.train_samples,
            "params": int(model.count_params()),
            "seconds": report.seconds,
            "val_nme": report.val_metrics.get("nme"),
        },
        "apriltag": {
            "provenance": crops.data.provenance,
            "sides": {
                int(i): float(s)
                for i, s in zip(crops.ids, marker_sizes(crops.corners), strict=True)
            },
        },
        "rows": scores,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    return finish(result, args, model, test, crops)


def finish(result: dict, args, model, test, crops) -> int:
    from mobilecv.tasks import get_task

    stem = common.output_stem("landmarks", args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    write_photo_plot(result, crops, out / f"{stem}_apriltag.png")
    points = np.asarray(result["rows"][ROWS[0]]["test_points"], np.float32)
    get_task("landmarks").draw(
        test, {"points": points}, out / f"{stem}_scenes.png", title="float32, test scenes"
    )
    for row in result["rows"].values():
        del row["test_points"]
    common.write_result(out, stem, result, md)
    if not args.quick and not args.no_readme:
        common.update_readme("landmarks", md)
    print(json.dumps(result, indent=2) if args.json else md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

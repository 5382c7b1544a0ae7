"""Object detection (issue 13, section 7): one-stage YOLO, a two-stage region-proposal
baseline, a centroid grid for microcontrollers and a face detector checked on a real photo,
in one table from one run.

Every model trains on generated scenes (a synthetic composition: real Fashion-MNIST items,
or scikit-image's LFW faces, pasted on real photos and textures) and is scored on held-out
TEST scenes, whose objects come only from the sources' test splits. The face detector is
then run, tiled, on the 1927 Solvay conference photograph (Debian's visp-images-data), which
is never used for training or tuning.

Rows: YOLO float (Keras and LiteRT), int8 PTQ and QAT int8 (compress(qat=True) from the
float weights); the two-stage detector float (two .tflite models, numpy between); the
centroid grid float and int8; the face detector on the Solvay photo, float and int8.
Columns: COCO mAP@[.5:.95] and mAP@0.5 (pycocotools), centroid F1 (centroid rows),
recall/precision at IoU >= 0.5 (Solvay rows), .tflite bytes, host p50 latency on 1 thread
(measured), estimated latency on rpi4, pixel1 and stm32h743 (mobilecv.bench.estimate), and
the TFLite Micro arena (measured by the real interpreter, int8 rows).

Usage:
    python benchmarks/detection.py [--quick] [--parts yolo,two_stage,centroids,faces]
        [--yolo-from DIR] [--save-dir DIR] [--json] [--out DIR] [--no-readme]
        [--render JSON]

Writes DIR/detection[_quick].json and .md and the pictures detection[_quick]_*.png
atomically, and rewrites the README section between `<!-- detection:begin -->` and
`<!-- detection:end -->` (not for --quick or a run of some parts only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _support import common

import mobilecv
from mobilecv.tasks import get_task

PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow-model-optimization", "ai-edge-litert")
PARTS = ("yolo", "two_stage", "centroids", "faces")
DEVICES = ("rpi4", "pixel1", "stm32h743")
AUGMENT = "mirror,crop"
YOLO = {
    "name": "yolo",
    "backbone": "mobilenet_v2",
    "width": 0.5,
    "resolution": 128,
    "input_channels": 3,
    "classes": 10,
    "anchors": 3,
    "stride": 16,
}
CENTROIDS = {
    "name": "centroid_grid",
    "backbone": "mobilenet_v2",
    "width": 0.5,
    "resolution": 96,
    "input_channels": 3,
    "classes": 10,
    "stride": 8,
    "hidden": 32,
}
CENTROID_TRAIN_SCENES = 12000  # the task's default: the small model trains fast
# Grey, as the photo and LFW are; anchors by k-means on the face scenes (face_anchors).
FACES = dict(YOLO, classes=1, input_channels=1)
FACE_TRAIN_SCENES = 2500  # 72 training faces: more scenes repeat them
FACE_BATCH = 32
TWO_STAGE = {k: v for k, v in YOLO.items() if k not in ("name", "anchors")}
# The targets.
YOLO_FLOAT_MAP50 = 0.90
QAT_MAP_POINTS = 1.0  # QAT int8 within this many points of float on mAP@[.5:.95]
CENTROID_F1 = 0.85
CENTROID_INT8_F1 = 0.02
MCU_ARENA_BYTES = 256 * 1024
MCU_FLASH_BYTES = 1024 * 1024
# Defaults of the full run, and the quick form (minutes; its figures mean little).
FULL = {
    "epochs": 8,
    "train_scenes": 6000,
    "val_scenes": 500,
    "test_scenes": 1000,
    "qat_epochs": 1,
}
# The other models' epochs: the centroid grid's recipe; the face probe's; the two-stage
# detector's fit in the run's time (about 5 minutes an epoch of 6,000 scenes here).
PART_EPOCHS = {"centroid": 6, "face": 8, "two_stage": 4}
QUICK = {
    "epochs": 1,
    "train_scenes": 512,
    "val_scenes": 64,
    "test_scenes": 128,
    "qat_epochs": 1,
    "latency_runs": 10,
    "calibration_samples": 64,
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 10 minutes, to check the script")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    for part, epochs in PART_EPOCHS.items():
        p.add_argument(f"--{part.replace('_', '-')}-epochs", type=int, default=epochs)
    p.add_argument("--face-scenes", type=int, default=FACE_TRAIN_SCENES, help="train scenes")
    p.add_argument("--centroid-scenes", type=int, default=CENTROID_TRAIN_SCENES)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak rate (cosine decay)")
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--calibration-samples", type=int, default=200)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--yolo-from", metavar="DIR", help="reuse the float YOLO --save-dir saved")
    p.add_argument("--save-dir", metavar="DIR", help="save the trained float models here")
    common.add_output_options(p)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.face_scenes = args.centroid_scenes = QUICK["train_scenes"]
    if args.quick:
        for part in PART_EPOCHS:
            setattr(args, f"{part}_epochs", QUICK["epochs"])
    args.parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    return args


# --------------------------------------------------------------------------- shared


def scene_splits(task, args, scenes=None):
    """Train and validation scenes (train-split objects), and TEST scenes."""
    from mobilecv.train import Splits

    def load(split, count):
        return task.load("scenes", split, limit=count, scenes=scenes)

    train = load("train", args.train_scenes)
    validation = load("validation", args.val_scenes)
    return Splits(train, validation, ()), load("test", args.test_scenes)


def train_model(model, splits, args, epochs: int | None = None):
    from mobilecv.data.augment import from_names
    from mobilecv.train import train

    common.log(f"== training {model.name} on {len(splits.train)} scenes")
    return train(
        model,
        splits,
        args.epochs if epochs is None else epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        schedule="cosine",
        augment=from_names(AUGMENT),
    )


def detection_metrics(scores: dict) -> dict:
    return {k: scores[k] for k in ("map", "map50") if k in scores}


def yolo_metrics(task, outputs: dict, y) -> dict:
    """mAP and mAP@0.5, and mAP@0.5 with every class merged into one (where the boxes are
    right whatever the class: it separates finding objects from naming them)."""
    import numpy as np

    from mobilecv.tasks.detection import MAP_MAX_DETECTIONS, MAP_SCORE_THRESHOLD, coco_map

    metrics = detection_metrics(task.score(outputs, y))
    found = task.decode(
        outputs, score_threshold=MAP_SCORE_THRESHOLD, max_detections=MAP_MAX_DETECTIONS
    )
    one_class = {**y, "class": np.where(np.asarray(y["class"]) >= 0, 0, -1)}
    found = {**found, "classes": np.zeros_like(found["classes"])}
    metrics["map50_any_class"] = coco_map(found, one_class, 1)["map50"]
    return metrics


# --------------------------------------------------------------------------- YOLO


def build_from(spec: dict):
    spec = dict(spec)
    return mobilecv.build(spec.pop("name"), **spec)


def float_yolo(args, splits):
    """The trained float YOLO: trained now, or loaded from --yolo-from."""
    from mobilecv.modelio import load_model, save_model

    if args.yolo_from:
        folder = Path(args.yolo_from)
        model = load_model(folder / "yolo.keras")
        return model, json.loads((folder / "yolo.json").read_text())
    model, report = train_model(build_from(YOLO), splits, args)
    training = common.training_summary(model, report)
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        save_model(model, Path(args.save_dir) / "yolo.keras", force=True)
        (Path(args.save_dir) / "yolo.json").write_text(json.dumps(training, indent=1))
    return model, training


def yolo_rows(args, workdir: Path, out_dir: Path, stem: str) -> dict:
    """YOLO float (Keras, LiteRT), int8 PTQ and QAT int8, on the same test scenes."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.train import predict_outputs, task_of

    splits, test = scene_splits(get_task("detection"), args)
    model, training = float_yolo(args, splits)
    task = task_of(model)
    x = model_inputs(test.x, model)
    calibration = model_inputs(splits.train.x[: args.calibration_samples], model)
    keras_outputs = predict_outputs(model, test)
    rows = {"YOLO float (Keras)": {"metrics": yolo_metrics(task, keras_outputs, test.y)}}
    variants = [("YOLO float", model, "none"), ("YOLO int8 PTQ", model, "int8")]
    from mobilecv.data.augment import from_names

    qat, qat_info = common.qat_finetune(
        model, splits, epochs=args.qat_epochs, batch_size=args.batch_size,
        learning_rate=args.qat_lr, augment=from_names(AUGMENT),
    )  # fmt: skip
    variants.append(("YOLO QAT int8", qat, "int8"))
    pictures = {}
    for name, keras_model, quantize in variants:
        common.log(f"== {name}")
        path = workdir / f"{name.replace(' ', '_')}.tflite"
        conversion = common.to_tflite(keras_model, quantize, calibration, path)
        outputs = common.tflite_outputs(path, x, task.outputs)
        row = {"metrics": yolo_metrics(task, outputs, test.y), "conversion": conversion}
        row.update(
            common.device_figures([path], DEVICES, args.latency_runs, tflm=quantize == "int8")
        )
        rows[name] = row
        if quantize == "int8":
            key = name.lower().replace(" ", "_")
            path = out_dir / f"{stem}_{key}.png"
            task.draw(test, outputs, path, title=f"{name} on test scenes", count=18)
            pictures[key] = str(common.shown_path(path))
    rows["YOLO QAT int8"]["finetune"] = qat_info
    training["test_scenes"] = len(test)
    training["provenance"] = test.provenance
    return {"rows": rows, "training": {"yolo": training}, "pictures": pictures}


def yolo_targets(rows: dict) -> list[dict]:
    targets = []
    if "YOLO float" in rows:
        map50 = rows["YOLO float"]["metrics"]["map50"]
        targets.append(
            {
                "target": f"float YOLO mAP@0.5 >= {YOLO_FLOAT_MAP50:.2f}",
                "measured": f"{map50:.3f}",
                "pass": map50 >= YOLO_FLOAT_MAP50,
            }
        )
    if "YOLO QAT int8" in rows:
        drop = 100 * (
            rows["YOLO float"]["metrics"]["map"] - rows["YOLO QAT int8"]["metrics"]["map"]
        )
        targets.append(
            {
                "target": f"QAT int8 YOLO within {QAT_MAP_POINTS:g} point of float on mAP@[.5:.95]",
                "measured": f"{drop:+.2f} points below float",
                "pass": drop <= QAT_MAP_POINTS,
            }
        )
    return targets


# --------------------------------------------------------------------------- two-stage


def two_stage_rows(args, workdir: Path, out_dir: Path, stem: str) -> dict:
    """The region-proposal baseline: Keras float, and its two .tflite stages (float and
    int8) with numpy proposals and ROI align between them. Latency, estimates and MACs
    count stage 2 once per proposal; "pipeline ms" is the measured end-to-end p50 of one
    image through both stages and the numpy between them."""
    from mobilecv import two_stage

    detector = two_stage.build_two_stage(**TWO_STAGE)
    detector, report = two_stage.train_two_stage(
        detector,
        args.two_stage_epochs,
        train_scenes=args.train_scenes,
        val_scenes=args.val_scenes,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        verbose=True,
    )
    test = get_task("detection").load("scenes", "test", limit=args.test_scenes)
    keras_scores = two_stage.evaluate_two_stage(detector, test)
    rows = {"two-stage float (Keras)": {"metrics": detection_metrics(keras_scores)}}
    for mode in ("none", "int8"):
        name = f"two-stage {'float' if mode == 'none' else mode}"
        common.log(f"== {name}")
        paths = two_stage.convert_two_stage(
            detector, workdir / f"two_stage_{mode}", mode=mode,
            calibration_samples=args.calibration_samples,
        )  # fmt: skip
        pipeline = two_stage.TwoStageTflite(paths, threads=1)
        row = {"metrics": detection_metrics(two_stage.evaluate_two_stage(pipeline, test))}
        proposals = detector.config.proposals
        row.update(
            common.device_figures(
                list(paths), DEVICES, args.latency_runs, tflm=False, repeats=[1, proposals]
            )
        )
        row["pipeline_p50_ms"] = pipeline_p50(pipeline.detect, test.x, args.latency_runs)
        rows[name] = row
    rows["two-stage float"]["macs_split"] = two_stage.macs(detector)
    training = {
        "params": int(detector.stage1.count_params() + detector.stage2.count_params()),
        "train_samples": report["train_scenes"],
        "seconds": report["train_seconds"],
        "val_metrics": report["validation"],
        "history": report["history"],
        "test_scenes": len(test),
        "provenance": test.provenance,
    }
    return {"rows": rows, "training": {"two-stage": training}, "pictures": {}}


def pipeline_p50(detect, images, runs: int) -> float:
    """Median wall time of ``detect`` on one image at a time, in ms (after 3 warm-ups)."""
    import numpy as np

    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        detect(images[i % len(images)][None])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times[3:])), 3)


# --------------------------------------------------------------------------- centroids


def centroid_rows(args, workdir: Path, out_dir: Path, stem: str) -> dict:
    """The centroid grid for microcontrollers: Keras float, LiteRT float and full int8
    (the arena is the real TFLite Micro interpreter's)."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.train import predict_outputs, task_of

    task = get_task("centroids")
    splits, test = scene_splits(
        task, argparse.Namespace(**{**vars(args), "train_scenes": args.centroid_scenes})
    )
    model, report = train_model(build_from(CENTROIDS), splits, args, epochs=args.centroid_epochs)
    task = task_of(model)
    x = model_inputs(test.x, model)
    calibration = model_inputs(splits.train.x[: args.calibration_samples], model)
    rows = {
        "centroids float (Keras)": {
            "metrics": centroid_metrics(task.score(predict_outputs(model, test), test.y))
        }
    }
    pictures = {}
    for name, quantize in (("centroids float", "none"), ("centroids int8", "int8")):
        common.log(f"== {name}")
        path = workdir / f"{name.replace(' ', '_')}.tflite"
        conversion = common.to_tflite(model, quantize, calibration, path)
        outputs = common.tflite_outputs(path, x, task.outputs)
        rows[name] = {
            "metrics": centroid_metrics(task.score(outputs, test.y)),
            "conversion": conversion,
        }
        rows[name].update(
            common.device_figures([path], DEVICES, args.latency_runs, tflm=quantize == "int8")
        )
        if quantize == "int8":
            path = out_dir / f"{stem}_centroids_int8.png"
            task.draw(test, outputs, path, title=f"{name} on test scenes", count=18)
            pictures["centroids_int8"] = str(common.shown_path(path))
    training = common.training_summary(model, report)
    training.update(test_scenes=len(test), provenance=test.provenance)
    return {"rows": rows, "training": {"centroids": training}, "pictures": pictures}


def centroid_metrics(scores: dict) -> dict:
    return {
        "centroid_f1": scores["centroid_f1"],
        "recall": scores["centroid_recall"],
        "precision": scores["centroid_precision"],
        "count_error": scores["count_error"],
    }


def centroid_targets(rows: dict) -> list[dict]:
    f32, i8 = rows["centroids float"], rows["centroids int8"]
    drop = f32["metrics"]["centroid_f1"] - i8["metrics"]["centroid_f1"]
    return [
        {
            "target": f"centroid int8: arena <= {MCU_ARENA_BYTES // 1024} KB, flash <= "
            f"{MCU_FLASH_BYTES // 1024} KB, F1 >= {CENTROID_F1}",
            "measured": f"arena {i8['arena_bytes'] / 1024:.1f} KB, .tflite "
            f"{i8['bytes'] / 1024:.1f} KB, F1 {i8['metrics']['centroid_f1']:.3f}",
            "pass": i8["arena_bytes"] <= MCU_ARENA_BYTES
            and i8["bytes"] <= MCU_FLASH_BYTES
            and i8["metrics"]["centroid_f1"] >= CENTROID_F1,
        },
        {
            "target": f"centroid int8 F1 within {CENTROID_INT8_F1} of float",
            "measured": f"{drop:+.3f} below float",
            "pass": drop <= CENTROID_INT8_F1,
        },
    ]


# --------------------------------------------------------------------------- faces


def face_rows(args, workdir: Path, out_dir: Path, stem: str) -> dict:
    """A one-class YOLO trained on LFW faces pasted on real backgrounds; mAP on held-out
    face scenes, recall and precision at IoU >= 0.5 on the Solvay photo (tiled)."""
    from mobilecv import face_check
    from mobilecv.data.datasets import model_inputs
    from mobilecv.train import task_of

    scenes = face_check.face_scenes()
    spec = dict(FACES, anchors=face_check.face_anchors(3))
    # Batch 32: 2,500 scenes give few steps an epoch at 64.
    face_args = argparse.Namespace(
        **{**vars(args), "train_scenes": args.face_scenes, "batch_size": FACE_BATCH}
    )
    splits, test = scene_splits(get_task("detection"), face_args, scenes=scenes)
    model, report = train_model(build_from(spec), splits, face_args, epochs=args.face_epochs)
    task = task_of(model)
    x = model_inputs(test.x, model)
    calibration = model_inputs(splits.train.x[: args.calibration_samples], model)
    rows, pictures = {}, {}
    for name, quantize in (("faces float (Solvay)", "none"), ("faces int8 (Solvay)", "int8")):
        common.log(f"== {name}")
        path = workdir / f"faces_{quantize}.tflite"
        conversion = common.to_tflite(model, quantize, calibration, path)
        metrics = detection_metrics(
            task.score(common.tflite_outputs(path, x, task.outputs), test.y)
        )
        check = face_check.solvay_check(path)
        metrics.update(recall=check["recall"], precision=check["precision"])
        rows[name] = {"metrics": metrics, "conversion": conversion, "solvay": solvay_summary(check)}
        rows[name].update(common.device_figures([path], DEVICES, args.latency_runs, tflm=False))
        key = f"solvay_{quantize}"
        path = out_dir / f"{stem}_{key}.png"
        face_check.draw_solvay(check, path)
        pictures[key] = str(common.shown_path(path))
    training = common.training_summary(model, report)
    training.update(test_scenes=len(test), provenance=test.provenance)
    return {"rows": rows, "training": {"faces": training}, "pictures": pictures}


def solvay_summary(check: dict) -> dict:
    return {k: v for k, v in check.items() if not hasattr(v, "shape")}


def face_targets(rows: dict) -> list[dict]:
    return []  # a check of transfer, not a target: the figures are reported as they are


# --------------------------------------------------------------------------- report


COLUMNS = (
    ("model", "<26"),
    ("mAP", ">7"),
    ("mAP50", ">7"),
    ("any-class mAP50", ">16"),
    ("F1", ">6"),
    ("recall", ">7"),
    ("prec.", ">7"),
    ("bytes", ">11"),
    ("MMACs", ">7"),
    ("host ms", ">9"),
    ("pipeline ms", ">12"),
    ("rpi4 ms", ">9"),
    ("pixel1 ms", ">10"),
    ("h743 ms", ">9"),
    ("arena KB", ">9"),
)


def row_cells(name: str, row: dict) -> list[str]:
    m = row.get("metrics", {})
    est = row.get("estimate_ms") or {}
    arena = row.get("arena_bytes")
    return [
        name,
        common.fmt(m.get("map"), ".3f"),
        common.fmt(m.get("map50"), ".3f"),
        common.fmt(m.get("map50_any_class"), ".3f"),
        common.fmt(m.get("centroid_f1"), ".3f"),
        common.fmt(m.get("recall"), ".2f"),
        common.fmt(m.get("precision"), ".2f"),
        common.fmt(row.get("bytes"), ",d"),
        common.fmt(None if row.get("macs") is None else row["macs"] / 1e6, ".1f"),
        common.fmt(row.get("host_p50_ms"), ".2f"),
        common.fmt(row.get("pipeline_p50_ms"), ".2f"),
        *(common.fmt(est.get(d), ".1f") for d in DEVICES),
        common.fmt(None if arena is None else arena / 1024, ".1f"),
    ]


def table_lines(result: dict) -> list[str]:
    return common.text_table(result["rows"], COLUMNS, row_cells)


def markdown(result: dict) -> str:
    lines = [
        f"Measured by `benchmarks/detection.py` on {result['machine']['date']} "
        f"({result['machine']['cpus']} shared cores, {result['machine']['cpu']}); "
        f"run time {result['wall_seconds'] / 60:.1f} min.",
        "",
        *settings_lines(result),
        "",
        *common.markdown_table(result["rows"], COLUMNS, row_cells),
        "",
        *common.target_bullets(result["targets"]),
    ]
    pictures = ", ".join(f"`{p}`" for p in result["pictures"].values())
    lines += ["", f"Pictures: {pictures}.", ""]
    return "\n".join(lines)


def settings_lines(result: dict) -> list[str]:
    lines = []
    for name, training in result["training"].items():
        lines.append(
            f"- {name}: {training.get('params', 0):,} parameters, "
            f"{training.get('train_samples', 0):,} train scenes, "
            f"trained in {training.get('seconds', 0) / 60:.1f} min; "
            f"tested on {training.get('test_scenes', '?')} TEST scenes. "
            f"{training.get('provenance', '')[:160]}"
        )
    return lines


def finish(result: dict, args) -> int:
    quick = result["config"]["quick"]
    every_part = set(result["config"]["parts"]) == set(PARTS)
    common.publish(args, "detection", result, markdown(result), readme=every_part)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("\n".join(settings_lines(result)) + (" [QUICK]" if quick else ""))
    print("\n".join(table_lines(result)))
    for tgt in result["targets"]:
        print(common.target_line(tgt))
    print("pictures: " + ", ".join(result["pictures"].values()))
    return 0


# --------------------------------------------------------------------------- main

SECTIONS = {
    "yolo": (yolo_rows, yolo_targets),
    "two_stage": (two_stage_rows, lambda rows: []),
    "centroids": (centroid_rows, centroid_targets),
    "faces": (face_rows, face_targets),
}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    wall, out_dir, stem = common.start_run(args, "detection")
    result = {"rows": {}, "training": {}, "pictures": {}, "targets": []}
    with tempfile.TemporaryDirectory(prefix="mobilecv-detection-") as workdir:
        for part in args.parts:
            rows_of, targets_of = SECTIONS[part]
            section = rows_of(args, Path(workdir), out_dir, stem)
            for key in ("rows", "training", "pictures"):
                result[key].update(section[key])
            result["targets"] += targets_of(section["rows"])
    result.update(
        config=common.run_config(args, ("json", "out", "render", "save_dir", "yolo_from")),
        machine=common.machine(PACKAGES),
        wall_seconds=round(time.perf_counter() - wall, 1),
    )
    result["config"]["parts"] = list(args.parts)
    result["config"]["yolo_reused"] = bool(args.yolo_from)
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

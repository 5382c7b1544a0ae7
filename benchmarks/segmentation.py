"""Semantic segmentation (issue 14, section 6): the paper's U-Net and a MobileNetV2-encoder
U-Net on scenes, and a small U-Net on real microscopy, float against int8, in one table
from one run.

Scenes are a synthetic composition (real Fashion-MNIST items pasted on real photos and
textures; per-class masks from the items' own pixels: 10 classes and the background) and
are scored on held-out TEST scenes, whose objects come only from the test split. Nuclei
are the stardist wheel's real 512 x 512 image: trained on tiles of its left three quarters
(mobilecv.data.nuclei), scored on its right quarter, never used for training or tuning.

Rows: U-Net float (Keras and LiteRT), int8 PTQ and QAT int8; MobileNetV2-U-Net float and
int8; nuclei U-Net float and int8 (also run in the real TFLite Micro interpreter).
Columns: mIoU (scenes) or foreground IoU and Dice (nuclei), pixel accuracy, .tflite bytes,
MACs, host p50 on 1 thread (measured), estimated latency on rpi4, pixel1 and stm32h743
(mobilecv.bench.estimate) and the TFLite Micro arena (measured, nuclei int8).

Usage:
    python benchmarks/segmentation.py [--quick] [--parts unet,mnv2,nuclei] [--json]
        [--out DIR] [--no-readme] [--render JSON]

Writes DIR/segmentation[_quick].json and .md and the overlays segmentation[_quick]_*.png
atomically, and rewrites the README section between `<!-- segmentation:begin -->` and
`<!-- segmentation:end -->` (not for --quick or a run of some parts only).
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
PARTS = ("unet", "mnv2", "nuclei")
DEVICES = ("rpi4", "pixel1", "stm32h743")
AUGMENT = "mirror,crop"
SCENE_CLASSES = 11  # Fashion-MNIST's 10 and the background
# The scenes models take the 96-px scenes at 64 px (the U-Net at 96 px trained at 4 scenes
# a second on the shared cores: the run would take hours). The scenes U-Net has BatchNorm:
# without it, 11 classes stalled at "all background" (mIoU 0.075 after 4 epochs, with or
# without Dice, at 3e-3 or 3e-4; 0.184 with it).
MODELS = {
    "unet": {"name": "unet", "width": 0.25, "resolution": 64, "classes": SCENE_CLASSES,
             "batch_norm": True},
    "mnv2": {"name": "unet_mobilenet_v2", "width": 0.35, "resolution": 64,
             "classes": SCENE_CLASSES},
    "nuclei": {"name": "unet", "width": 0.25, "resolution": 64, "classes": 2,
               "input_channels": 1},
}  # fmt: skip
# The targets.
INT8_MIOU_POINTS = 1.0
NUCLEI_FLOAT_IOU = 0.75
H743 = {"ram_kb": 1024, "flash_kb": 2048}  # mobilecv.bench.devices' stm32h743 profile
FULL = {
    "epochs": 8,
    "train_scenes": 3000,
    "val_scenes": 250,
    "test_scenes": 500,
    "nuclei_epochs": 10,
    "nuclei_tiles": 1024,
    "qat_epochs": 1,
    "latency_runs": 30,
    "calibration_samples": 200,
}
QUICK = {
    "epochs": 1,
    "train_scenes": 256,
    "val_scenes": 32,
    "test_scenes": 64,
    "nuclei_epochs": 1,
    "nuclei_tiles": 256,
    "qat_epochs": 1,
    "latency_runs": 5,
    "calibration_samples": 32,
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="under 10 minutes, to check the script")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak rate (cosine decay)")
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    common.add_output_options(p)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    return args


# --------------------------------------------------------------------------- shared


def build(part: str):
    spec = dict(MODELS[part])
    return mobilecv.build(spec.pop("name"), **spec)


def data_for(part: str, task, args):
    """Train and validation splits, and the TEST split, of the part's data."""
    from mobilecv.train import Splits

    if part == "nuclei":
        tiles = {"size": MODELS["nuclei"]["resolution"], "train_tiles": args.nuclei_tiles}
        load = lambda split, _: task.load("nuclei", split, scenes=tiles)  # noqa: E731
    else:
        load = lambda split, count: task.load("scenes", split, limit=count)  # noqa: E731
    train = load("train", args.train_scenes)
    validation = load("validation", args.val_scenes)
    return Splits(train, validation, ()), load("test", args.test_scenes)


def train_model(model, splits, args, epochs: int):
    from mobilecv.data.augment import from_names
    from mobilecv.train import train

    common.log(f"== training {model.name} on {len(splits.train)} samples, {epochs} epochs")
    return train(
        model,
        splits,
        epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        schedule="cosine",
        augment=from_names(AUGMENT),
    )


def metrics_of(scores: dict) -> dict:
    keys = ("miou", "pixel_accuracy", "foreground_iou", "dice")
    return {k: scores[k] for k in keys if k in scores}


def tflite_row(model, task, name, quantize, calibration, test, workdir, args, tflm=False):
    from mobilecv.data.datasets import model_inputs

    common.log(f"== {name}")
    path = workdir / f"{name.replace(' ', '_')}.tflite"
    conversion = common.to_tflite(model, quantize, calibration, path)
    outputs = common.tflite_outputs(path, model_inputs(test.x, model), task.outputs)
    row = {"metrics": metrics_of(task.score(outputs, test.y)), "conversion": conversion}
    row.update(common.device_figures([path], DEVICES, args.latency_runs, tflm=tflm))
    return row, outputs


def picture(task, test, outputs, out_dir: Path, stem: str, key: str, title: str) -> str:
    path = out_dir / f"{stem}_{key}.png"
    task.draw(test, outputs, path, title=title, count=12)
    return str(common.shown_path(path))


# --------------------------------------------------------------------------- parts


def part_rows(part: str, args, workdir: Path, out_dir: Path, stem: str) -> dict:
    """One model: trained float (Keras, LiteRT), int8 PTQ and, for the U-Net, QAT int8."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.train import predict_outputs, task_of

    splits, test = data_for(part, get_task("segmentation"), args)
    epochs = args.nuclei_epochs if part == "nuclei" else args.epochs
    model, report = train_model(build(part), splits, args, epochs)
    task = task_of(model)
    label = {"unet": "U-Net", "mnv2": "MobileNetV2-U-Net", "nuclei": "nuclei U-Net"}[part]
    calibration = model_inputs(splits.train.x[: args.calibration_samples], model)
    keras_scores = task.score(predict_outputs(model, test), test.y)
    rows = {f"{label} float (Keras)": {"metrics": metrics_of(keras_scores)}}
    pictures = {}
    for mode, quantize in (("float", "none"), ("int8 PTQ", "int8")):
        name = f"{label} {mode}"
        tflm = part == "nuclei" and quantize == "int8"
        rows[name], outputs = tflite_row(model, task, name, quantize, calibration, test,
                                         workdir, args, tflm)  # fmt: skip
        if quantize == "int8":
            pictures[part] = picture(task, test, outputs, out_dir, stem, f"{part}_int8",
                                     f"{name} on {test.name} test")  # fmt: skip
    if part == "unet":
        qat, qat_info = common.qat_finetune(
            model, splits, epochs=args.qat_epochs, batch_size=args.batch_size,
            learning_rate=args.qat_lr, augment=None,
        )  # fmt: skip
        name = f"{label} QAT int8"
        rows[name], _ = tflite_row(qat, task, name, "int8", calibration, test, workdir, args)
        rows[name]["qat"] = qat_info
    training = common.training_summary(model, report)
    training.update(test_samples=len(test), provenance=test.provenance)
    return {"rows": rows, "training": {label: training}, "pictures": pictures}


def targets(rows: dict) -> list[dict]:
    found = []
    for label in ("U-Net", "MobileNetV2-U-Net"):
        float_row = rows.get(f"{label} float")
        for mode in ("int8 PTQ", "QAT int8"):
            row = rows.get(f"{label} {mode}")
            if float_row is None or row is None:
                continue
            drop = 100 * (float_row["metrics"]["miou"] - row["metrics"]["miou"])
            found.append({
                "target": f"{label} {mode} mIoU within {INT8_MIOU_POINTS:g} point of float",
                "measured": f"{drop:+.2f} points below float",
                "pass": drop <= INT8_MIOU_POINTS,
            })  # fmt: skip
    if "nuclei U-Net float" in rows:
        f32, i8 = rows["nuclei U-Net float"], rows["nuclei U-Net int8 PTQ"]
        iou, drop = (
            f32["metrics"]["foreground_iou"],
            100 * (f32["metrics"]["foreground_iou"] - i8["metrics"]["foreground_iou"]),
        )
        arena = i8["arena_bytes"] / 1024
        found += [
            {"target": f"nuclei float foreground IoU >= {NUCLEI_FLOAT_IOU}",
             "measured": f"{iou:.3f}", "pass": iou >= NUCLEI_FLOAT_IOU},
            {"target": f"nuclei int8 foreground IoU within {INT8_MIOU_POINTS:g} point",
             "measured": f"{drop:+.2f} points below float", "pass": drop <= INT8_MIOU_POINTS},
            {"target": f"nuclei int8 fits stm32h743 ({H743['ram_kb']} KB RAM, "
                       f"{H743['flash_kb']} KB flash) in TFLite Micro",
             "measured": f"arena {arena:.1f} KB, .tflite {i8['bytes'] / 1024:.1f} KB",
             "pass": arena <= H743["ram_kb"] and i8["bytes"] / 1024 <= H743["flash_kb"]},
        ]  # fmt: skip
    return found


# --------------------------------------------------------------------------- report

COLUMNS = (
    ("model", "<30"),
    ("mIoU", ">7"),
    ("fg IoU", ">7"),
    ("Dice", ">6"),
    ("pixel acc", ">10"),
    ("bytes", ">11"),
    ("MMACs", ">8"),
    ("host ms", ">9"),
    ("rpi4 ms", ">9"),
    ("pixel1 ms", ">10"),
    ("h743 ms", ">9"),
    ("arena KB", ">9"),
)


def row_cells(name: str, row: dict) -> list[str]:
    m, est, arena = row.get("metrics", {}), row.get("estimate_ms") or {}, row.get("arena_bytes")
    fmt = common.fmt
    return [
        name,
        fmt(m.get("miou"), ".3f"),
        fmt(m.get("foreground_iou"), ".3f"),
        fmt(m.get("dice"), ".3f"),
        fmt(m.get("pixel_accuracy"), ".3f"),
        fmt(row.get("bytes"), ",d"),
        fmt(None if row.get("macs") is None else row["macs"] / 1e6, ".1f"),
        fmt(row.get("host_p50_ms"), ".2f"),
        *(fmt(est.get(d), ".1f") for d in DEVICES),
        fmt(None if arena is None else arena / 1024, ".1f"),
    ]


def table_lines(result: dict) -> list[str]:
    return common.text_table(result["rows"], COLUMNS, row_cells)


def settings_lines(result: dict) -> list[str]:
    return [
        f"- {name}: {t['params']:,} parameters, {t['train_samples']:,} train samples, "
        f"{len(t['history'].get('loss', []))} epochs in {t['seconds'] / 60:.1f} min; "
        f"tested on {t['test_samples']} TEST samples. {t['provenance'][:150]}"
        for name, t in result["training"].items()
    ]


def markdown(result: dict) -> str:
    lines = [
        f"Measured by `benchmarks/segmentation.py` on {result['machine']['date']} "
        f"({result['machine']['cpus']} shared cores, {result['machine']['cpu']}); "
        f"run time {result['wall_seconds'] / 60:.1f} min.",
        "",
        *settings_lines(result),
        "",
        *common.markdown_table(result["rows"], COLUMNS, row_cells),
        "",
        *common.target_bullets(result["targets"]),
        "",
        "Overlays: " + ", ".join(f"`{p}`" for p in result["pictures"].values()) + ".",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def finish(result: dict, args) -> int:
    quick = result["config"]["quick"]
    every_part = set(result["config"]["parts"]) == set(PARTS)
    common.publish(args, "segmentation", result, markdown(result), readme=every_part)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("\n".join(settings_lines(result)) + (" [QUICK]" if quick else ""))
    print("\n".join(table_lines(result)))
    for target in result["targets"]:
        print(common.target_line(target))
    print("overlays: " + ", ".join(result["pictures"].values()))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    wall, out_dir, stem = common.start_run(args, "segmentation")
    result = {"rows": {}, "training": {}, "pictures": {}}
    with tempfile.TemporaryDirectory(prefix="mobilecv-segmentation-") as workdir:
        for part in args.parts:
            section = part_rows(part, args, Path(workdir), out_dir, stem)
            for key in ("rows", "training", "pictures"):
                result[key].update(section[key])
    result["targets"] = targets(result["rows"])
    result.update(
        config=common.run_config(args, ("json", "out", "render")),
        machine=common.machine(PACKAGES),
        wall_seconds=round(time.perf_counter() - wall, 1),
    )
    result["config"]["parts"] = list(args.parts)
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

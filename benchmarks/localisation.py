"""Classification with localisation (issue 12, section 4): the course's (Pc, bx, by, bh, bw,
c1..cn) localiser on held-out scenes, float and int8.

Trains the `localizer` (MobileNetV2 backbone) on generated scenes of one Fashion-MNIST item
or none, pasted on real photos and textures (a synthetic composition: the objects and the
backgrounds are real, their composition is not), then measures on TEST scenes, whose objects
come only from the Fashion-MNIST test split:

    Keras float32, LiteRT float32, int8 PTQ (full integer), QAT int8 (compress(qat=True)
    from the float weights, then convert)

Columns: presence accuracy (Pc >= 0.5 vs an object being there), class accuracy and mean
IoU on the present objects, and iou50, the share of present objects whose box has IoU >=
0.5. Targets (the issue's): iou50 >= 90% in float, and each int8 row within 2 points of
float on iou50; printed as PASS/MISS.

Usage:
    python benchmarks/localisation.py [--quick] [--epochs N] [--train-scenes N]
        [--qat-epochs N] [--json] [--out DIR] [--no-readme] [--render JSON]

Writes DIR/localisation[_quick].json, .md, and the prediction pictures
localisation[_quick]_float.png / _int8.png atomically, and rewrites the README section
between `<!-- localisation:begin -->` and `<!-- localisation:end -->` (not for --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _support import common

import mobilecv

MODEL = {"name": "localizer", "width": 0.5, "resolution": 96, "classes": 10, "input_channels": 3}
AUGMENT = "mirror,crop"
PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow-model-optimization", "ai-edge-litert")
FLOAT_IOU50 = 0.90  # the float target
INT8_POINTS = 2.0  # the largest int8 drop on iou50, in points
METRICS = ("presence_accuracy", "class_accuracy", "mean_iou", "iou50")
# The quick form: minutes, to check the script end to end (its figures mean little).
QUICK = {"epochs": 2, "train_scenes": 1024, "val_scenes": 128, "test_scenes": 256, "qat_epochs": 1}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few minutes, to check the script")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--train-scenes", type=int, default=10000)
    p.add_argument("--val-scenes", type=int, default=500)
    p.add_argument("--test-scenes", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak rate (cosine decay)")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--qat-lr", type=float, default=2e-5)
    p.add_argument("--calibration-samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    common.add_output_options(p)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- stages


def build():
    spec = dict(MODEL)
    return mobilecv.build(spec.pop("name"), **spec)


def scenes(args):
    """Train and validation scenes (train-split objects) and TEST scenes (test-split
    objects only), each generated from its own seed."""
    from mobilecv.tasks import get_task
    from mobilecv.train import Splits

    task = get_task("localisation")
    train = task.load("scenes", "train", limit=args.train_scenes)
    validation = task.load("scenes", "validation", limit=args.val_scenes)
    test = task.load("scenes", "test", limit=args.test_scenes)
    return Splits(train, validation, ()), test


def train_float(args, splits):
    from mobilecv.data.augment import from_names
    from mobilecv.train import train

    model = build()
    common.log(f"== training on {len(splits.train)} scenes for {args.epochs} epochs")
    return train(
        model,
        splits,
        args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        schedule="cosine",
        augment=from_names(AUGMENT),
    )


def qat_finetune(args, splits, weights):
    """QAT from the trained float weights, fine-tuned on the train scenes."""
    from mobilecv.data.augment import from_names

    model = build()
    model.set_weights(weights)
    return common.qat_finetune(
        model, splits, epochs=args.qat_epochs, batch_size=args.batch_size,
        learning_rate=args.qat_lr, augment=from_names(AUGMENT),
    )  # fmt: skip


def litert_row(model, quantize: str, calibration, x, test, task, threads: int = 2):
    """Convert, then the task's metrics of the .tflite model on the test scenes."""
    from mobilecv.converters.tflite import convert
    from mobilecv.evaluate import TfliteModel

    result = convert(
        model, quantize, calibration=calibration, samples=len(calibration), progress=False
    )
    outputs = TfliteModel(result.tflite, threads=threads).predict_outputs(x, task.outputs)
    summary = {"bytes": result.size, "agreement": result.verification.agreement}
    return task.score(outputs, test.y), outputs, summary


def measure(args, model, splits, test, out_dir: Path, stem: str):
    """Every row of the table, and the two prediction pictures."""
    from mobilecv.data.datasets import model_inputs
    from mobilecv.tasks import get_task
    from mobilecv.train import predict_outputs

    task = get_task("localisation")
    x = model_inputs(test.x, model)
    calibration = model_inputs(splits.train.x[: args.calibration_samples], model)
    rows, pictures = {}, {}
    keras_outputs = predict_outputs(model, test)
    rows["Keras float32"] = {"metrics": task.score(keras_outputs, test.y)}
    pictures["float"] = (keras_outputs, "Keras float32")
    for name, quantize in (("LiteRT float32", "none"), ("int8 PTQ", "int8")):
        common.log(f"== {name}")
        scores, outputs, summary = litert_row(model, quantize, calibration, x, test, task)
        rows[name] = {"metrics": scores, "conversion": summary}
        if quantize == "int8":
            pictures["int8"] = (outputs, "int8 PTQ")
    qat_model, qat_info = qat_finetune(args, splits, model.get_weights())
    common.log("== QAT int8")
    scores, outputs, summary = litert_row(qat_model, "int8", calibration, x, test, task)
    rows["QAT int8"] = {"metrics": scores, "conversion": summary, "finetune": qat_info}
    paths = {}
    for key, (outputs, title) in pictures.items():
        paths[key] = str(out_dir / f"{stem}_{key}.png")
        task.draw(test, outputs, paths[key], title=f"{title} on test scenes", count=18)
    return rows, paths


def check_targets(rows: dict) -> list[dict]:
    float_iou50 = rows["Keras float32"]["metrics"]["iou50"]
    targets = [
        {
            "target": f"float iou50 >= {FLOAT_IOU50:.0%}",
            "measured": f"{float_iou50:.2%}",
            "pass": float_iou50 >= FLOAT_IOU50,
        }
    ]
    for name in ("int8 PTQ", "QAT int8"):
        drop = 100 * (float_iou50 - rows[name]["metrics"]["iou50"])
        targets.append(
            {
                "target": f"{name} iou50 within {INT8_POINTS:g} points of float",
                "measured": f"{drop:+.2f} points below float",
                "pass": drop <= INT8_POINTS,
            }
        )
    return targets


# --------------------------------------------------------------------------- report


def table_lines(result: dict) -> list[str]:
    head = f"{'model':<16}{'presence acc':>14}{'class acc':>11}{'mean IoU':>10}{'iou50':>9}"
    lines = [head, "-" * len(head)]
    for name, row in result["rows"].items():
        m = row["metrics"]
        lines.append(
            f"{name:<16}{m['presence_accuracy']:>14.2%}{m['class_accuracy']:>11.2%}"
            f"{m['mean_iou']:>10.3f}{m['iou50']:>9.2%}"
        )
    return lines


def setting_text(result: dict) -> str:
    c, t = result["config"], result["training"]
    return (
        f"localizer (MobileNetV2 backbone, width {MODEL['width']}, {MODEL['resolution']} px, "
        f"{t['params']:,} parameters), {c['epochs']} epochs on {t['train_samples']:,} train "
        f"scenes ({AUGMENT}, cosine from {c['lr']:g}, loss weights {result['loss_weights']}), "
        f"QAT {c['qat_epochs']} epoch(s) from {c['qat_lr']:g}; "
        f"tested on {result['test']['scenes']:,} TEST scenes "
        f"({result['test']['present_objects']:,} with an object). "
        f"Run time {result['wall_seconds'] / 60:.1f} min on {result['machine']['cpus']} "
        f"shared cores ({result['machine']['cpu']})."
    )


def markdown(result: dict) -> str:
    lines = [
        f"Measured by `benchmarks/localisation.py` on {result['machine']['date']}. "
        + setting_text(result),
        "",
        f"Data: {result['test']['provenance']}",
        "",
        "| model | presence acc | class acc | mean IoU | IoU >= 0.5 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {m['presence_accuracy']:.2%} | {m['class_accuracy']:.2%} "
            f"| {m['mean_iou']:.3f} | {m['iou50']:.2%} |"
        )
    lines.append("")
    for tgt in result["targets"]:
        lines.append(f"- {'PASS' if tgt['pass'] else 'MISS'} {tgt['target']}: {tgt['measured']}")
    pictures = ", ".join(f"`{common.shown_path(p)}`" for p in result["pictures"].values())
    lines += ["", f"Predictions on test scenes: {pictures}.", ""]
    return "\n".join(lines)


def finish(result: dict, args) -> int:
    quick = result["config"]["quick"]
    md = markdown(result)
    common.write_result(args.out, common.output_stem("localisation", quick), result, md)
    if not (args.no_readme or quick):
        common.update_readme("localisation", md)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(setting_text(result) + (" [QUICK]" if quick else ""))
    print(f"Data: {result['test']['provenance']}")
    print("\n".join(table_lines(result)))
    for tgt in result["targets"]:
        print(common.target_line(tgt))
    print("pictures: " + ", ".join(result["pictures"].values()))
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return finish(json.loads(Path(args.render).read_text()), args)
    from mobilecv.tasks import get_task
    from mobilecv.train import set_seed

    wall = time.perf_counter()
    set_seed(args.seed)
    splits, test = scenes(args)
    model, report = train_float(args, splits)
    common.log(f"== trained in {report.seconds:.0f} s; validation {report.val_metrics}")
    rows, pictures = measure(
        args, model, splits, test, Path(args.out), common.output_stem("localisation", args.quick)
    )
    result = {
        "config": common.run_config(args, ("json", "out", "render")),
        "model": MODEL,
        "augment": AUGMENT,
        "loss_weights": dict(get_task("localisation").loss_weights),
        "machine": common.machine(PACKAGES),
        "training": {
            "train_samples": report.train_samples,
            "val_samples": report.val_samples,
            "params": int(model.count_params()),
            "seconds": report.seconds,
            "val_metrics": report.val_metrics,
            "history": report.history,
        },
        "test": {
            "scenes": len(test),
            "present_objects": rows["Keras float32"]["metrics"]["present_objects"],
            "provenance": test.provenance,
        },
        "rows": rows,
        "targets": check_targets(rows),
        "pictures": pictures,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    return finish(result, args)


if __name__ == "__main__":
    sys.exit(main())

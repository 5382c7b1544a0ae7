"""1D and 3D convnets in TFLite (issue 16 §5): a 1D LeNet-5 trained on a real EEG signal
and a 3D convnet, converted (float and int8), run in LiteRT and, where it can, TFLite Micro.

The 1D data: matplotlib's sample EEG (mobilecv.signals.eeg_windows), which electrode a
72-sample window comes from (4 classes; test windows from the last 30% of the recording).
Prints size, MACs, host p50 (mobilecv.bench, 1 thread), float vs int8 accuracy for the 1D
model, and what converts and runs for the 3D ones: the classic builder's LeNet-5 at dims=3
(its 3D pooling is no TFLite builtin) and mobilecv.signals.strided_conv3d.

    python benchmarks/conv1d3d.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _support import common

PACKAGES = (*common.LITERT_PACKAGES, "tflite_micro")
WINDOW = 72  # ((72 - 4) / 2 - 4) / 2 = 15 steps before LeNet's 5-cell grid pool: a plain
# 3-wide pool; a length whose grid pool needs SPLIT + CONCATENATION of more than 10 parts
# is refused by TFLite Micro (concatenation.cc: num_inputs <= kMaxInputNum)
VOLUME = 16


def _one_line(exc: BaseException) -> str:
    from mobilecv.errors import one_line

    text = one_line(exc)
    # the converter's "Could not translate MLIR to FlatBuffer./path:line:col: error: ..."
    return text.rsplit("error: ", 1)[-1][:300]


def _accuracy(path: Path, x, y) -> float:
    from mobilecv.evaluate import TfliteModel

    return float((TfliteModel(path).predict(x).argmax(-1) == y).mean())


def _runs(path: Path, runs: int) -> dict:
    """Size, MACs, host p50 (LiteRT, 1 thread) and the TFLite Micro status of one file."""
    import mobilecv.bench as bench
    from mobilecv.bench import micro

    graph = bench.load(path)
    host = bench.run(path, "host", threads=1, runs=runs, warmup=5)
    tflm = micro.run(path)
    return {
        "bytes": graph.model_bytes,
        "macs": int(graph.macs),
        "host_p50_ms": float(host["latency_ms"]["p50"]),
        "tflm_ok": bool(tflm.get("ok")),
        "tflm_arena_bytes": tflm.get("min_arena_bytes"),
        "tflm_error": None if tflm.get("ok") else tflm.get("error"),
    }


def _convert(model, mode: str, calibration, path: Path) -> dict:
    """Convert to ``path``; the status, and the converter's error (one line) if it fails."""
    from mobilecv.converters.tflite import convert

    try:
        result = convert(
            model,
            mode,
            calibration=calibration if mode == "int8" else None,
            samples=len(calibration),
            progress=False,
        )
    except Exception as exc:  # noqa: BLE001 - the point is to report what fails
        return {"converted": False, "error": _one_line(exc)}
    path.write_bytes(result.tflite)
    float_ops = [n for n in result.notes if "still compute in float" in n]
    return {"converted": True, "float_ops": float_ops[0] if float_ops else None}


def one_d(args, work: Path) -> dict:
    import numpy as np

    import mobilecv
    from mobilecv.signals import eeg_windows

    data = eeg_windows(WINDOW)
    common.log(f"== 1D: {len(data.x_train)} train / {len(data.x_test)} test windows")
    model = mobilecv.build(
        "lenet5", dims=1, resolution=WINDOW, input_channels=1, classes=4,
        activation="relu", pooling="max",
    )  # fmt: skip
    from mobilecv._tf import get_keras

    optimizer = get_keras("tf_keras").optimizers.Adam(args.lr)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(
        data.x_train, data.y_train, epochs=args.epochs, batch_size=32, verbose=0,
        shuffle=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    keras_acc = float((model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test).mean())
    rows = {"keras": {"accuracy": keras_acc}}
    calibration = data.x_train[np.random.default_rng(0).permutation(len(data.x_train))[:200]]
    for mode in ("none", "int8"):
        path = work / f"conv1d_{mode}.tflite"
        row = _convert(model, mode, calibration, path)
        if row["converted"]:
            row.update(_runs(path, args.runs), accuracy=_accuracy(path, data.x_test, data.y_test))
        rows[mode] = row
    return {"source": data.source, "window": WINDOW, "train_seconds": round(seconds, 1),
            "epochs": args.epochs, "models": rows}  # fmt: skip


def three_d(args, work: Path) -> dict:
    import numpy as np

    import mobilecv
    from mobilecv.signals import strided_conv3d

    models = {
        "lenet5_dims3": mobilecv.build(
            "lenet5",
            dims=3,
            resolution=VOLUME,
            input_channels=1,
            classes=4,
            activation="relu",
            pooling="max",
        ),  # fmt: skip
        "strided_conv3d": strided_conv3d(VOLUME),
    }
    calibration = np.random.default_rng(0).random((64, VOLUME, VOLUME, VOLUME, 1), np.float32)
    out = {}
    for name, model in models.items():
        common.log(f"== 3D: {name}")
        for mode in ("none", "int8"):
            path = work / f"{name}_{mode}.tflite"
            row = _convert(model, mode, calibration, path)
            if row["converted"]:
                row.update(_runs(path, args.runs))
            out[f"{name} {mode}"] = row
    return out


def markdown(result: dict) -> str:
    d1 = result["one_d"]
    lines = [
        f"1D LeNet-5 (relu, max pool) on {d1['source']}: electrode of a {d1['window']}-sample "
        f"window, {d1['epochs']} epochs (Adam {result['config']['lr']:g}) in {d1['train_seconds']} s; Keras test accuracy "
        f"{d1['models']['keras']['accuracy']:.3f}.",
        "",
        "| model | mode | converts | bytes | MACs | host p50 ms | accuracy | TFLite Micro |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = [("lenet5 dims=1", m, d1["models"][m]) for m in ("none", "int8")]
    rows += [(k.split()[0], k.split()[1], v) for k, v in result["three_d"].items()]
    for name, mode, row in rows:
        lines.append(_row(name, mode, row))
    return "\n".join(lines) + "\n"


def _row(name: str, mode: str, row: dict) -> str:
    if not row["converted"]:
        return f"| {name} | {mode} | no: {row['error']} | | | | | |"
    tflm = f"arena {row['tflm_arena_bytes']:,} B" if row["tflm_ok"] else row["tflm_error"]
    converts = "yes" + (f" ({row['float_ops']})" if row.get("float_ops") else "")
    return (
        f"| {name} | {mode} | {converts} | {row['bytes']:,} | {row['macs']:,} | "
        f"{row['host_p50_ms']:.3f} | {common.fmt(row.get('accuracy'), '.3f')} | {tflm} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few epochs and runs, to check")
    p.add_argument("--epochs", type=int, default=None, help="1D training epochs (default 60)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--runs", type=int, default=None, help="host benchmark runs (default 200)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=str(common.OUT))
    args = p.parse_args(argv)
    args.epochs = args.epochs or (5 if args.quick else 60)
    args.runs = args.runs or (20 if args.quick else 200)
    with tempfile.TemporaryDirectory(prefix="conv1d3d-") as tmp:
        result = {
            "config": common.run_config(args, ("json", "out")),
            "machine": common.machine(PACKAGES, load_average=True),
            "one_d": one_d(args, Path(tmp)),
            "three_d": three_d(args, Path(tmp)),
        }
    md = markdown(result)
    path = common.write_result(args.out, common.output_stem("conv1d3d", args.quick), result, md)
    print(json.dumps(result, indent=2) if args.json else md)
    common.log(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

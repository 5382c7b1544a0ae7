"""Plain vs residual networks on Fashion-MNIST: does a deeper plain net train worse?

He et al. (CVPR 2016, Fig. 1/4) show plain-34 with higher *training* error than plain-18,
while ResNet-34 trains better than ResNet-18. This trains plain18, plain34, resnet18 and
resnet34 from mobilecv's registry at a small width on the real Fashion-MNIST set (Debian
package `dataset-fashion-mnist`: `apt-get install dataset-fashion-mnist`, files under
/usr/share/datasets/fashion-mnist) and records training and validation error per epoch.

Usage: python benchmarks/plain_vs_residual.py [--quick] [--width 0.25] [--epochs 4]
           [--train 6000] [-o benchmarks/out/plain_vs_residual]
Writes <out>.png (training error per epoch, four curves) and <out>.json; --quick (a few
minutes, to check the script end to end) writes <out>_quick.png and <out>_quick.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from _support import common

import mobilecv
from mobilecv.data.datasets import load_arrays, to_dataset
from mobilecv.fileio import check_writable, write_json

NETS = ("plain18", "plain34", "resnet18", "resnet34")
# The quick form: minutes, to check the script end to end (its figures mean little).
QUICK = {"epochs": 3, "train": 3000, "val": 1000}


def train_one(name, args, train, val):
    from mobilecv._tf import get_keras, tf

    tf().random.set_seed(args.seed)
    K = get_keras(None)
    model = mobilecv.build(name, width=args.width, resolution=32, classes=10, input_channels=1)
    model.compile(
        optimizer=K.optimizers.SGD(args.lr, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    ds = to_dataset(train, resolution=32, batch_size=args.batch, shuffle=True, seed=args.seed)
    vds = to_dataset(val, resolution=32, batch_size=256)
    start = time.perf_counter()
    hist = model.fit(ds, validation_data=vds, epochs=args.epochs, verbose=2)
    return {
        "params": int(model.count_params()),
        "train_error": [1 - a for a in hist.history["accuracy"]],
        "val_error": [1 - a for a in hist.history["val_accuracy"]],
        "train_loss": hist.history["loss"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few minutes, to check the script")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train", type=int, default=6000, help="training images (of 54,000)")
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="benchmarks/out/plain_vs_residual")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = common.output_stem(args.out, args.quick)
    for path in (out + ".json", out + ".png"):  # refuse before training, not after
        check_writable(path, args.force)
    train = load_arrays("fashion_mnist", "train", limit=args.train)
    val = load_arrays("fashion_mnist", "validation", limit=args.val)
    results = {}
    for name in NETS:
        common.log(f"== {name}")
        results[name] = train_one(name, args, train, val)
    report = {"config": vars(args), "dataset": "fashion_mnist", "results": results}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write_json(out + ".json", report, force=args.force)

    fig, ax = common.pyplot().subplots(figsize=(6, 4))
    epochs = np.arange(1, args.epochs + 1)
    for name, style in zip(NETS, ("--", "-", "--", "-"), strict=True):
        color = "tab:red" if name.startswith("plain") else "tab:blue"
        ax.plot(
            epochs, np.array(results[name]["train_error"]) * 100, style, color=color, label=name
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training error (%)")
    quick = " (quick run)" if args.quick else ""
    ax.set_title(f"Fashion-MNIST, width {args.width}, {args.train} images{quick}")
    ax.legend()
    fig.tight_layout()
    common.save_png(fig, out + ".png", force=args.force, dpi=120)
    for name in NETS:
        r = results[name]
        print(
            f"{name:9s} params {r['params']:>9,}  train error {r['train_error'][-1]:.3f}  "
            f"val error {r['val_error'][-1]:.3f}  {r['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

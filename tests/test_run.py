"""`mobilecv run`: a small recipe end to end, resumability, failures, dry runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mobilecv import recipe as recipes
from mobilecv.cli import main

TINY = [
    "data.dataset=digits",
    "model.resolution=32",
    "model.width=0.35",
    "train.epochs=1",
    "train.batch_size=64",
    "convert.calibration_samples=64",
    "evaluate.test_samples=120",
]


@pytest.mark.parametrize("name", recipes.builtin_recipes())
def test_every_shipped_recipe_passes_dry_run(name, tmp_path):
    result = CliRunner().invoke(
        main, ["run", name, "--dry-run", "-o", str(tmp_path / "x"), "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    running = [s["step"] for s in plan["steps"] if s["runs"]]
    assert running[0] == ("pretrain" if recipes.load(name).pretrain.epochs else "build")
    assert not (tmp_path / "x").exists()


def _sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_small_run_writes_report_and_resumes(tmp_path, monkeypatch):
    from mobilecv.converters import tflite

    conversions = []
    convert = tflite.convert

    def recording_convert(model, quantize="none", *args, **kwargs):
        conversions.append(str(quantize))
        return convert(model, quantize, *args, **kwargs)

    monkeypatch.setattr(tflite, "convert", recording_convert)
    out = tmp_path / "run"
    args = ["run", "mobilenet_v2_fashion_int8", "-o", str(out), "--json"]
    args += _sets(
        [
            *TINY,
            "devices=[{name: host}, {name: stm32h743}]",
            "evaluate.multi_crop=true",
            "evaluate.ensemble=2",
        ]
    )
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    # convert: none and int8; evaluate: the second ensemble member, as int8 like the main model
    assert conversions == ["none", "int8", "int8"]
    summary = json.loads(first.stdout)
    assert summary["ran"] == ["build", "train", "convert", "evaluate", "bench", "report"]
    report = (out / "report.md").read_text()
    for needle in (
        "recipe.resolved.yaml",
        "training_curves.png",
        "model_int8.tflite",
        "| tflite int8 |",
        "stm32h743",
        "model_int8.cc",
    ):
        assert needle in report
    assert (out / "recipe.resolved.yaml").exists()
    evaluation = json.loads((out / "evaluate.json").read_text())
    assert evaluation["test_samples"] == 120
    top1 = {row["model"]: row["accuracy"] for row in evaluation["metrics"]}
    assert top1["keras float32"] > 0.2, top1  # twice chance after one epoch (26.7% here)
    assert abs(top1["tflite none"] - top1["keras float32"]) <= 2 / 120, top1
    assert abs(top1["tflite int8"] - top1["keras float32"]) <= 0.1, top1
    assert evaluation["test_time_model"] == "tflite int8"
    assert "Test-time techniques (tflite int8" in report
    techniques = {row["technique"]: row for row in evaluation["test_time"]}
    assert set(techniques) == {"single crop", "10-crop", "ensemble of 2"}
    assert techniques["10-crop"]["cost_vs_single"] > 3  # ten forward passes per image
    assert (out / "trained_1.keras").exists()
    # unchanged: nothing is redone
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert again["ran"] == []
    # a changed bench budget reruns only bench and report
    changed = CliRunner().invoke(main, [*args, "--set", "devices.0.max_latency_ms=0.0001"])
    assert json.loads(changed.stdout)["ran"] == ["bench", "report"]
    assert "does not fit" in (out / "report.md").read_text()


def test_failed_step_keeps_earlier_artefacts_and_names_the_step(tmp_path):
    out = tmp_path / "run"
    args = ["run", "mobilenet_v2_fashion_int8", "-o", str(out)]
    for item in [*TINY, "convert.modes=[int8]", "convert.calibration_samples=0"]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2  # bad input (calibration_samples=0), found by its step
    assert "step 'convert' failed" in result.output
    assert (out / "trained.keras").exists() and (out / "model.keras").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=mobilenet_v9", "did you mean"),
        ("data.dataset=/no/such/data.npz", "no/such"),
        ("devices=[{name: toaster}]", "toaster"),
        ("train.strategy=galaxy", "allowed: default, mirrored, multi_worker"),
        ("train.strategy=multi_worker", "needs TF_CONFIG"),
        ("data.classes=[5, 6]", "set model.classes: 2"),
        ("pretrain.classes=[0, 1]", "pretrain.epochs is 0"),
        ("pretrain.epochs=2;pretrain.batch_size=0", "pretrain.batch_size: must be >= 1"),
        ("pretrain.epochs=2;pretrain.classes=[1, 1]", "distinct numbers"),
        ("evaluate.ensemble=0", "evaluate.ensemble: must be >= 1"),
        ("compress.prune=0.5;evaluate.ensemble=2", "would not be compressed"),
        ("data.test_limit=5", "data.test_limit: unknown key"),
    ],
)
def test_bad_recipe_values_exit_2(override, message, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(
        main, ["run", "mobilenet_v2_fashion_int8", "--dry-run", *_sets(override.split(";"))]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_dataset_package_is_explained(tmp_path, monkeypatch):
    from mobilecv.data import datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "absent", raising=False)
    result = CliRunner().invoke(
        main,
        ["run", "mobilenet_v2_fashion_int8", "-o", str(tmp_path / "o"), "--set", "train.epochs=1"],
    )
    assert result.exit_code == 2  # bad input: the dataset named is not installed
    assert "dataset-fashion-mnist" in result.output


def _weights(path):
    from mobilecv.modelio import load_model

    return load_model(path).get_weights()


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_same_seed_same_weights_and_a_new_seed_reruns(tmp_path):
    """Two fresh runs with one seed agree bit for bit; another seed redoes build and train."""
    # MobileNetV1 (BatchNorm, dropout) at width 0.25 with the recipe's mirror augmentation.
    small = [
        *TINY,
        "model.name=mobilenet_v1",
        "model.width=0.25",
        "data.limit=128",
        "evaluate.test_samples=20",
        "convert.modes=[none]",
    ]

    def run(out, *extra):
        args = ["run", "mobilenet_v2_fashion_int8", "-o", str(out), "--json", "--set", "devices=[]"]
        result = CliRunner().invoke(main, args + _sets([*small, *extra]))
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    a, b = tmp_path / "a", tmp_path / "b"
    run(a)
    run(b)
    for name in ("model.keras", "trained.keras"):
        assert _same(_weights(a / name), _weights(b / name)), name
    reseeded = run(a, "seed=7")
    assert reseeded["ran"][:2] == ["build", "train"]
    for name in ("model.keras", "trained.keras"):
        assert not _same(_weights(a / name), _weights(b / name)), name


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mobilecv import recipe
from mobilecv.distribute import strategy_for
from mobilecv.runner import run
r = recipe.load("mobilenet_v2_fashion_int8", {TINY + ["train.strategy=mirrored", "devices=[]", "convert.modes=[none]"]!r})
assert strategy_for(r.train.strategy).num_replicas_in_sync == 2
summary = run(r, {str(tmp_path / "m")!r}, progress=False)
assert "train" in summary["ran"], summary
print("replicas ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "replicas ok" in proc.stdout


SMALL = [
    "train.epochs=1",
    "compress.epochs=1",
    "convert.calibration_samples=64",
    "evaluate.test_samples=100",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", recipes.builtin_recipes())
def test_small_run_of_every_shipped_recipe(name, tmp_path):
    out = tmp_path / name
    exe = os.path.join(os.path.dirname(sys.executable), "mobilecv")
    args = [exe, "run", name, "-o", str(out), "--json"]
    # Classifiers train on digits; a task's own data (scenes) is cut to a few hundred.
    scenes = recipes.load(name).data.dataset in ("scenes", "nuclei")  # a task's own data
    for item in [*SMALL, "data.limit=256" if scenes else "data.dataset=digits"]:
        args += ["--set", item]
    # A process of its own per recipe: the TFLite converter has segfaulted when a QAT
    # conversion ran earlier in the same process.
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = recipes.load(name)
    for device in loaded.devices:
        bench = json.loads((out / f"bench_{device.name}.json").read_text())
        assert bench["verdict"] in ("fits", "does not fit")
    evaluation = json.loads((out / "evaluate.json").read_text())
    assert len(evaluation["metrics"]) == 1 + len(loaded.convert.modes)
    report = (out / "report.md").read_text()
    assert "## Test metrics and size" in report
    if loaded.compress.qat:
        inspect = json.loads(
            CliRunner().invoke(main, ["inspect", str(out / "model_int8.tflite"), "--json"]).output
        )
        assert not inspect["float_ops"], inspect["float_ops"]
    if loaded.pretrain.epochs:
        _assert_the_trunk_was_transferred(out, json.loads(proc.stdout))
        assert "## Transfer learning" in report
    # Measured in the real TFLite Micro interpreter (a U-Net's transposed convs included).
    mcu = {"mobilenet_v1_mcu": "stm32f746", "nuclei_unet": "stm32h743"}
    if name in mcu:
        bench = json.loads((out / f"bench_{mcu[name]}.json").read_text())
        assert "arena_bytes" in bench["measured"], bench.get("reasons")


def _assert_the_trunk_was_transferred(out, summary):
    from mobilecv.modelio import load_model
    from mobilecv.train import head_start

    pretrained, built, trained = (
        load_model(out / name) for name in ("pretrained.keras", "model.keras", "trained.keras")
    )
    trunk = [layer for layer in built.layers[: head_start(built)] if layer.weights]
    assert trunk
    for layer in trunk:  # moved in by name, then frozen
        source = pretrained.get_layer(layer.name).get_weights()
        assert _same(layer.get_weights(), source), layer.name
        assert _same(trained.get_layer(layer.name).get_weights(), source), layer.name
    assert built.output_shape[-1] == len(recipes.load(out / "recipe.resolved.yaml").data.classes)
    compare = summary["compare"]
    assert compare == json.loads((out / "compare.json").read_text())
    assert compare["test_samples"] > 0 and compare["train_samples"] > 0
    assert {"transfer_top1", "scratch_top1"} <= set(compare)

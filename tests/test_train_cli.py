"""`mobilecv train` through click: writes a model and a JSON report, real exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_train import tiny_model

from mobilecv._tf import get_keras
from mobilecv.commands.train import train_command
from mobilecv.modelio import load_model


def test_train_cli_writes_model_and_report(tmp_path):
    src = tmp_path / "tiny.keras"
    get_keras("tf_keras").utils.set_random_seed(0)
    tiny_model().save(src)
    out = tmp_path / "run"
    args = [
        str(src),
        "--data",
        "digits",
        "--epochs",
        "4",
        "--lr",
        "0.005",
        "--limit",
        "400",
        "--batch-size",
        "32",
    ]
    result = CliRunner().invoke(
        train_command, [*args, "--augment", "color", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["train_samples"] == 400 and report["val_accuracy"] > 0.4  # chance is 0.1
    assert json.loads((out / "report.json").read_text())["val_accuracy"] == report["val_accuracy"]
    assert load_model(out / "model.keras").count_params() == tiny_model().count_params()

    # Existing outputs are not overwritten without --force (bad input: exit 2, one line).
    again = CliRunner().invoke(train_command, [*args, "-o", str(out)])
    assert again.exit_code == 2 and again.output.startswith("Error: ") and "--force" in again.output
    assert "epoch" not in again.output  # refused before training, not after


def test_train_cli_cache_features_and_bad_input(tmp_path):
    src = tmp_path / "tiny.keras"
    tiny_model().save(src)
    out = tmp_path / "head"
    result = CliRunner().invoke(
        train_command,
        [
            str(src),
            "--data",
            "digits",
            "--epochs",
            "1",
            "--limit",
            "100",
            "--cache-features",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "features" / "features_train.npy").exists()
    assert json.loads(result.stdout)["frozen_layers"] == len(tiny_model().layers) - 1

    bad = CliRunner().invoke(
        train_command, [str(src), "--data", "imagenet", "-o", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "unknown dataset" in bad.output
    bad = CliRunner().invoke(
        train_command, [str(src), "--data", "digits", "--freeze", "most", "-o", str(tmp_path / "y")]
    )
    assert bad.exit_code == 2 and "all-but-head" in bad.output
    assert "--cache-features" in CliRunner().invoke(train_command, ["--help"]).output

"""`mobilecv compress` through click: one chain, a JSON report, the model written atomically."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_compress import trained

from mobilecv.commands.train import compress_command
from mobilecv.compress import qat


def test_compress_cli_prune_and_qat(tmp_path):
    src = tmp_path / "tiny.keras"
    trained().save(src)
    out = tmp_path / "c"
    result = CliRunner().invoke(
        compress_command,
        [
            str(src),
            "--data",
            "digits",
            "--limit",
            "320",
            "--batch-size",
            "32",
            "--lr",
            "0.001",
            "--prune",
            "0.6",
            "--qat",
            "--epochs",
            "2",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    stages = {s["stage"]: s for s in report["stages"]}
    assert abs(stages["prune"]["sparsity"] - 0.6) < 0.01
    assert report["qat_scheme"] == "pqat" and stages["qat"]["sparsity"] >= 0.59
    assert report["model"].endswith("model.h5")
    model = qat.load(out / "model.h5")
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in model.layers)
    assert json.loads((out / "report.json").read_text())["stages"] == report["stages"]


def test_compress_cli_errors(tmp_path):
    src = tmp_path / "tiny.keras"
    trained().save(src)
    nothing = CliRunner().invoke(
        compress_command, [str(src), "--data", "digits", "-o", str(tmp_path / "n")]
    )
    assert nothing.exit_code == 2 and "nothing to do" in nothing.output
    missing = CliRunner().invoke(
        compress_command,
        [str(tmp_path / "nope.keras"), "--data", "digits", "--qat", "-o", str(tmp_path / "m")],
    )
    assert missing.exit_code == 2 and missing.output.startswith("Error: ")
    for flag in ("--prune-2by4", "--prune-policy", "--cluster", "--qat"):
        assert flag in CliRunner().invoke(compress_command, ["--help"]).output

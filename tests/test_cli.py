"""The CLI contract: exit codes, one-line errors, JSON, atomic writes."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mobilecv.cli import main

SMALL = ["--width", "0.35", "--resolution", "32", "--classes", "10"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["list"], ["build"], ["profile"]])
def test_help_everywhere(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_build_writes_a_loadable_model_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "m.keras"
    result = run("build", "mobilenet_v2", *SMALL, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["params"] > 0 and summary["input_shape"] == [None, 32, 32, 3]
    # Loadable in another process, with the same weights as the built model.
    code = (
        "import sys; from mobilecv.modelio import load_model; "
        "m = load_model(sys.argv[1]); print(m.count_params(), m.input_shape)"
    )
    loaded = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[0] == str(summary["params"])
    again = run("build", "mobilenet_v2", *SMALL, "-o", str(out))
    assert again.exit_code == 2
    assert "--force" in again.output
    assert run("build", "mobilenet_v2", *SMALL, "-o", str(out), "--force").exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # no temporary files left behind


def test_build_keras3_and_profile_the_file(tmp_path):
    out = tmp_path / "m3.keras"
    assert (
        run("build", "efficientnet_b0", *SMALL, "--keras", "keras3", "-o", str(out)).exit_code == 0
    )
    result = run("profile", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    built = json.loads(run("profile", "efficientnet_b0", *SMALL, "--json").stdout)
    assert data["params"] == built["params"]
    assert data["macs"] == built["macs"]


def test_profile_json_schema():
    result = run("profile", "mobilenet_v2", *SMALL, "--json")
    data = json.loads(result.stdout)
    for key in (
        "name",
        "width",
        "depth",
        "resolution",
        "input_shape",
        "params",
        "trainable_params",
        "macs",
        "activation_bytes",
        "layers",
    ):
        assert key in data
    assert data["name"] == "mobilenet_v2" and data["width"] == 0.35 and data["resolution"] == 32
    assert set(data["layers"][1]) == {
        *("name", "type", "output_shape", "params", "macs"),
        *("receptive_field", "jump", "start"),
    }
    assert sum(layer["macs"] for layer in data["layers"]) == data["macs"]
    assert data["activation_bytes_int8"] * 4 == data["activation_bytes"]


def test_profile_table_is_readable():
    result = run("profile", "mobilenet_v1", *SMALL, "--top", "3")
    assert result.exit_code == 0
    assert "total" in result.output and "peak activations" in result.output


def test_phi_and_family_option(tmp_path):
    result = run(
        "profile",
        "efficientnet",
        "--phi",
        "0.5",
        "--resolution",
        "32",
        "--classes",
        "10",
        "-O",
        "lite=true",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["width"] == pytest.approx(1.1**0.5) and data["resolution"] == 32
    assert not any("se_" in layer["name"] for layer in data["layers"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "mobilenet_v3", "-o", "x.keras"], "did you mean mobilenet_v2"),
        (["profile", "mobilenet_v2", "--width", "0"], "width must be > 0"),
        (["profile", "mobilenet_v2", "--width", "9"], "absurd"),
        (["profile", "mobilenet_v2", "--depth", "-1"], "depth must be > 0"),
        (["profile", "mobilenet_v2", "--resolution", "8"], "too small"),
        (["profile", "mobilenet_v2", "--phi", "1"], "phi"),
        (["profile", "mobilenet_v2", "-O", "groups=2"], "does not accept 'groups'"),
        (["profile", "missing.keras"], "not found"),
        (["list", "zzz*"], "no model matches"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    os.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not os.listdir(tmp_path)


def test_corrupt_model_file_exits_2(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    result = CliRunner().invoke(main, ["profile", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot load")


def test_list_shows_every_model_with_cost():
    result = run("list", "--json")
    rows = json.loads(result.stdout)
    import mobilecv

    assert [r["name"] for r in rows] == mobilecv.list_models()
    assert all(r["params"] > 0 and r["macs"] > 0 and r["resolution"] >= 32 for r in rows)
    text = run("list", "mobilenet*").output
    assert "mobilenet_v2" in text and "3,538,984" in text


def test_console_script_real_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "mobilecv")
    proc = subprocess.run(
        [exe, "build", "zzqx", "-o", str(tmp_path / "x.keras")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["Error: unknown model 'zzqx'; see `mobilecv list`"]

"""What `pip install .` puts into another project's environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy, so no stale build/ folder of the work tree can leak into it.
    source = tmp_path_factory.mktemp("source") / "mobilecv"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "out")
    shutil.copytree(ROOT, source, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("mobilecv-*.whl")
    return zipfile.ZipFile(path)


def test_installs_only_the_mobilecv_package(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"mobilecv", next(t for t in top if t.endswith(".dist-info"))}
    names = set(wheel.namelist())
    assert {
        "mobilecv/converters/tflite.py",
        "mobilecv/recipes/mobilenet_v2_fashion_int8.yaml",
    } <= names


def _metadata(wheel) -> list[str]:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return wheel.read(meta).decode().splitlines()


def test_dependencies_are_ranges_not_pins(wheel):
    requires = [line for line in _metadata(wheel) if line.startswith("Requires-Dist:")]
    assert any("tensorflow" in line for line in requires)
    assert not [line for line in requires if "==" in line], requires


def test_python_floor_matches_the_code(wheel):
    """The code uses enum.StrEnum (3.11)."""
    assert "Requires-Python: >=3.11" in _metadata(wheel)

"""The public Python API works more than once, and no module shadows a function or the
standard library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import mobilecv

CALL_EACH_TWICE = """
import mobilecv

calls = {
    "build": lambda: mobilecv.build("lenet5", classes=3),
    "compound_scale": lambda: mobilecv.compound_scale(1),
    "list_models": lambda: mobilecv.list_models("mobilenet*"),
    "profile": lambda: mobilecv.profile(mobilecv.build("lenet5", classes=3)),
}
public = [n for n in mobilecv.__all__ if callable(getattr(mobilecv, n))]
assert sorted(public) == sorted(calls), (public, sorted(calls))
for name in public:
    first, second = calls[name](), calls[name]()
    assert callable(getattr(mobilecv, name)), name
    assert type(first) is type(second), name
print("ok", len(public))
"""


def test_every_public_function_works_twice_in_one_fresh_process():
    done = subprocess.run(
        [sys.executable, "-c", CALL_EACH_TWICE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok 4"


def _module_names() -> set[str]:
    names = set()
    for info in pkgutil.walk_packages(mobilecv.__path__, "mobilecv."):
        names.add(info.name.rsplit(".", 1)[-1])
    return names


def test_no_module_shadows_a_public_function_or_the_standard_library():
    modules = _module_names()
    assert "profiling" in modules and "bench" in modules  # the walk found the package
    public = {n for n in mobilecv.__all__ if callable(getattr(mobilecv, n))}
    assert not modules & public, modules & public
    stdlib = {n for n in sys.stdlib_module_names if not n.startswith("_")}
    assert not modules & stdlib, modules & stdlib


def test_cli_module_runs_as_a_script():
    """`python mobilecv/cli.py` puts mobilecv/ first on sys.path: any module there named
    like a standard-library module would be imported in its place."""
    cli = Path(mobilecv.__file__).with_name("cli.py")
    done = subprocess.run(
        [sys.executable, str(cli), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage" in done.stdout

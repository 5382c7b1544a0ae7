"""The CLI's error policy, in fresh processes, as a new user meets it.

Bad input exits 2 with one `Error: ...` line; a failed run (the file system, the
runtime) exits 1 with one line; a bug exits 1 with a one-line "internal error" summary,
and the traceback only under `mobilecv --debug` or MOBILECV_DEBUG=1. No case may print a
traceback. The malformed invocations run with a `tensorflow` that cannot be imported:
each must be refused before TensorFlow loads, which keeps them at about a second each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

RECIPE = "mobilenet_v2_fashion_int8"
SWEEP = ["sweep", "mobilenet_v2", "--widths", "0.25", "--resolutions", "32", "-o", "sw"]


def _sys_is_writable() -> bool:
    """The unwritable-output cases use /sys, which refuses new files even to root."""
    try:
        with tempfile.NamedTemporaryFile(dir="/sys"):
            return True
    except OSError:
        return not os.path.isdir("/sys")


def _sine_model() -> Path | None:
    """A real .tflite that ships with tflite-micro, so no case needs TensorFlow to make one."""
    try:
        import tflite_micro
    except ImportError:
        return None
    return next(Path(tflite_micro.__file__).parent.rglob("sine_float.tflite"), None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder of wrong files: every kind of mistake the cases below feed the CLI."""
    d = tmp_path_factory.mktemp("cli_errors")
    (d / "text.txt").write_text("hello\n")
    (d / "notflat.tflite").write_text("not a flatbuffer\n")
    (d / "empty.tflite").write_bytes(b"")
    for folder in ("adir", "adir.keras", "adir.tflite", "adir.yaml"):
        (d / folder).mkdir()
    (d / "bad.yaml").write_text("a: [1, 2\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    (d / "junk.npz").write_text("junk\n")
    (d / "bad.keras").write_text("not a zip\n")
    np.savez(d / "mismatch.npz", x=np.zeros((5, 8, 8)), y=np.zeros(3))
    np.save(d / "arr.npy", np.zeros((3, 4), dtype=np.float32))
    (d / "imgs" / "cat").mkdir(parents=True)
    (d / "imgs" / "cat" / "a.jpg").write_text("not a jpeg\n")
    blocker = d / "no_tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        'raise ImportError("this case imported TensorFlow: it must fail before that")\n'
    )
    sine = _sine_model()
    if sine is not None:
        (d / "sine.tflite").write_bytes(sine.read_bytes())
    return d


def _cli(args, cwd: Path, block_tf: bool = True):
    env = dict(os.environ)
    env.pop("MOBILECV_DEBUG", None)
    if block_tf:
        env["PYTHONPATH"] = _blocking_tf(cwd, env)
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _blocking_tf(workdir: Path, env: dict) -> str:
    """A PYTHONPATH whose `tensorflow` raises ImportError when imported."""
    return os.pathsep.join(p for p in (str(workdir / "no_tf"), env.get("PYTHONPATH")) if p)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# (arguments, exit code, a piece of the one error line). Click's own usage errors
# (wrong option types, ranges, missing paths it checks) are marked by "click:".
CASES = [
    # list, and the group itself
    (["list", "zzz*"], 2, "no model matches 'zzz*'"),
    (["nosuchcommand"], 2, "click:No such command"),
    # build
    (["build", "nope", "-o", "x.keras"], 2, "unknown model 'nope'"),
    (["build", "", "-o", "x.keras"], 2, "unknown model ''"),
    (["build", "mobilenet_v2", "-o", "x.txt"], 2, "must end in .keras or .h5"),
    (["build", "mobilenet_v2", "-o", "adir"], 2, "click:is a directory"),
    (["build", "mobilenet_v2", "-o", "text.txt/x.keras"], 2, "is a file, not a folder"),
    (["build", "mobilenet_v2", "--width", "abc", "-o", "x.keras"], 2, "click:not a valid float"),
    (["build", "mobilenet_v2", "--width", "-1", "-o", "x.keras"], 2, "width must be > 0"),
    (["build", "mobilenet_v2", "--classes", "0", "-o", "x.keras"], 2, "classes must be >= 1"),
    (["build", "mobilenet_v2", "-O", "foo", "-o", "x.keras"], 2, "click:not KEY=VALUE"),
    (["build", "mobilenet_v2", "-O", "foo=1", "-o", "x.keras"], 2, "does not accept 'foo'"),
    (["build", "mobilenet_v2", "--weights", "gone.h5", "-o", "x.keras"], 2, "click:does not exist"),
    (["build", "mobilenet_v2", "--weights", "text.txt", "-o", "x.keras"], 2, "expected a .h5"),
    # profile
    (["profile", "mobilenet_v2", "--phi", "1"], 2, "does not accept 'phi'"),
    (["profile", "mobilenet_v2", "--resolution", "8"], 2, "too small"),
    (["profile", "mobilenet_v2", "--top", "-1"], 2, "click:-1 is not in the range"),
    (["profile", "adir.keras"], 2, "is a folder, not a .keras or .h5"),
    (["profile", "text.txt"], 2, "expected a .keras or .h5 model file"),
    # train
    (["train", "nope", "--data", "digits", "-o", "t"], 2, "unknown model 'nope'"),
    (["train", "mobilenet_v2", "--data", "nosuch", "-o", "t"], 2, "unknown dataset 'nosuch'"),
    (["train", "gone.keras", "--data", "digits", "-o", "t"], 2, "model file not found"),
    (["train", "mobilenet_v2", "--data", "digits", "--freeze", "x", "-o", "t"], 2, "--freeze"),
    (["train", "mobilenet_v2", "--data", "digits", "--augment", "zoom", "-o", "t"], 2, "zoom"),
    (["train", "mobilenet_v2", "--data", "digits", "--epochs", "0", "-o", "t"], 2, "click:0 is"),
    (["train", "mobilenet_v2", "--data", "junk.npz", "-o", "t"], 2, "junk.npz: not a .npz file"),
    (["train", "mobilenet_v2", "--data", "mismatch.npz", "-o", "t"], 2, "matching y"),
    (["train", "mobilenet_v2", "--data", "imgs", "-o", "t"], 2, "a.jpg: not a readable image"),
    # compress
    (["compress", "nope", "--data", "digits", "--prune", "0.5", "-o", "c"], 2, "unknown model"),
    (["compress", "mobilenet_v2", "--data", "digits", "-o", "c"], 2, "nothing to do"),
    (
        [
            "compress",
            "mobilenet_v2",
            "--data",
            "digits",
            "--prune",
            "0.5",
            "--prune-2by4",
            "-o",
            "c",
        ],
        2,
        "not both",
    ),  # fmt: skip
    # convert
    (["convert", "nope", "-o", "o.tflite"], 2, "no such model file, and unknown model 'nope'"),
    (["convert", "mobilenet_v2", "-o", "o.tflite", "--samples", "0"], 2, "click:0 is not"),
    # inspect
    (["inspect", "gone.tflite"], 2, "gone.tflite: no such file"),
    (["inspect", "notflat.tflite"], 2, "not a TFLite flatbuffer"),
    (["inspect", "empty.tflite"], 2, "not a TFLite flatbuffer"),
    (["inspect", "adir.tflite"], 2, "click:is a directory"),
    # bench and devices
    (["bench"], 2, "click:give at least one MODEL.tflite"),
    (["bench", "notflat.tflite"], 2, "not a TFLite flatbuffer"),
    (["bench", "notflat.tflite", "--device", "nodev"], 2, "unknown device 'nodev'"),
    (["bench", "notflat.tflite", "--device", "adir.yaml"], 2, "is a folder"),
    (["bench", "notflat.tflite", "--device", "bin.yaml"], 2, "not a text file"),
    (["bench", "notflat.tflite", "--threads", "0"], 2, "click:0 is not in the range"),
    (["bench", "notflat.tflite", "--time-budget", "-1"], 2, "click:-1.0 is not in the range"),
    (["bench", "notflat.tflite", "--cores", "x"], 2, "click:not a comma-separated list"),
    (["bench", "--import", "text.txt"], 2, "not benchmark_model output"),
    (["devices", "extra"], 2, "click:unexpected extra argument"),
    # run: recipe files and --set overrides
    (["run", RECIPE, "--dry-run", "--set", "convert.modes.7=int8"], 2, "index 7 is past the end"),
    (["run", RECIPE, "--dry-run", "--set", "devices.x=1"], 2, "'x' is not an index of a list"),
    (["run", RECIPE, "--dry-run", "--set", "devices.0.name=nodev"], 2, "unknown device"),
    (["run", RECIPE, "--dry-run", "--set", "train.epochs=many"], 2, "expected an integer"),
    (["run", RECIPE, "--dry-run", "--set", "seed.x=1"], 2, "'seed' is not a section"),
    (["run", RECIPE, "--dry-run", "--set", "nokey=1"], 2, "unknown key"),
    (["run", RECIPE, "--dry-run", "--set", "model.name=nope"], 2, "unknown model 'nope'"),
    (["run", RECIPE, "--dry-run", "--set", "train.batch_size=0"], 2, "batch_size: must be >= 1"),
    (["run", RECIPE, "--dry-run", "--set", "convert.modes=[]"], 2, "give at least one mode"),
    (["run", RECIPE, "--dry-run", "--set", "seed=-1"], 2, "seed: must be >= 0, got -1"),
    (["run", "nope"], 2, "recipe 'nope' not found"),
    (["run", ""], 2, "give a recipe"),
    (["run", "bad.yaml"], 2, "not valid YAML"),
    (["run", "list.yaml"], 2, "the top level must be a mapping"),
    (["run", "bin.yaml"], 2, "not a text file"),
    (["run", "adir.yaml"], 2, "is a folder, not a recipe"),
    # sweep
    (["sweep", "nope", *SWEEP[2:]], 2, "unknown model 'nope'"),
    ([*SWEEP, "--widths", "abc"], 2, "--widths must be comma-separated"),
    ([*SWEEP, "--widths", "0"], 2, "width must be > 0"),
    ([*SWEEP, "--device", "nodev"], 2, "unknown device 'nodev'"),
    ([*SWEEP, "--data", "junk.npz"], 2, "not a .npz file"),
]

# The file system refuses: a failed run (exit 1), still one line and before any work.
UNWRITABLE = [
    (["build", "mobilenet_v2", "-o", "/sys/x.keras"], 1, "cannot write /sys/x.keras"),
    (["convert", "mobilenet_v2", "-o", "/sys/o.tflite"], 1, "cannot write /sys/o.tflite"),
    (["train", "mobilenet_v2", "--data", "digits", "-o", "/sys/t"], 1, "cannot write /sys/t"),
]

# Bad input that needs a real .tflite (tflite-micro's sine model): still no TensorFlow.
WITH_MODEL = [
    (["bench", "sine.tflite", "--device", "nodev"], 2, "unknown device 'nodev'"),
    (["bench", "sine.tflite", "--inputs", "arr.npy"], 2, "arr.npy: shape (3, 4) has 12 values"),
    (["bench", "sine.tflite", "--inputs", "text.txt"], 2, "text.txt: not a .npy or .npz file"),
]


def _check(result, code: int, message: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == code, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr[-3000:]
    if message.startswith("click:"):  # click prints its usage lines above the error
        assert message[len("click:") :] in lines[-1], lines[-1]
    else:
        assert len(lines) == 1, result.stderr[-3000:]  # one line, nothing else
        assert message in lines[-1], lines[-1]


def _case_id(case) -> str:
    return " ".join(a or "''" for a in case[0])


@pytest.fixture(scope="module")
def results(workdir):
    """Every case of CASES, run in its own process, four at a time (they are light:
    each must stop before TensorFlow), and the files the whole batch left behind."""
    before = _tree(workdir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = pool.map(lambda case: _cli(case[0], workdir), CASES)
        done = dict(zip(map(_case_id, CASES), outcomes, strict=True))
    return done, _tree(workdir) - before


@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=map(_case_id, CASES))
def test_malformed_invocation_is_one_line(results, args, code, message):
    _check(results[0][_case_id((args, code, message))], code, message)


def test_refused_commands_leave_nothing_behind(results):
    assert results[1] == set()


@pytest.mark.skipif(_sys_is_writable(), reason="needs a /sys that refuses new files")
@pytest.mark.parametrize(("args", "code", "message"), UNWRITABLE, ids=map(_case_id, UNWRITABLE))
def test_unwritable_output_is_a_failed_run_of_one_line(workdir, args, code, message):
    _check(_cli(args, workdir), code, message)


@pytest.mark.parametrize(("args", "code", "message"), WITH_MODEL, ids=map(_case_id, WITH_MODEL))
def test_bad_bench_input_for_a_real_model(workdir, args, code, message):
    if not (workdir / "sine.tflite").exists():
        pytest.skip("tflite-micro's sine_float.tflite is not installed")
    _check(_cli(args, workdir), code, message)


# Mistakes only a builder or a Keras loader can see: these load TensorFlow (slow).
WITH_TENSORFLOW = [
    (["build", "resnet18", "-O", "shortcut=bad", "--width", "0.25", "--resolution", "32",
      "-o", "x.keras"], 2, "shortcut must be 'projection' or 'pad'"),
    (["build", "lenet5", "-O", "activation=swish", "-o", "x.keras"], 2, "activation must be one"),
    (["build", "lenet5", "-O", "dims=4", "-o", "x.keras"], 2, "dims must be 1, 2 or 3"),
    (["convert", "text.txt", "-o", "o.tflite"], 2, "text.txt: expected a .keras or .h5"),
    (["train", "bad.keras", "--data", "digits", "-o", "t"], 2, "cannot load bad.keras"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"), WITH_TENSORFLOW, ids=map(_case_id, WITH_TENSORFLOW)
)
def test_mistakes_found_by_the_builder_or_loader(workdir, args, code, message):
    _check(_cli(args, workdir, block_tf=False), code, message)
    assert not (workdir / "x.keras").exists() and not (workdir / "o.tflite").exists()


def test_at_least_40_cases_across_every_command():
    commands = {args[0] for args, _, _ in CASES + UNWRITABLE + WITH_MODEL}
    everything = {"list", "build", "profile", "train", "compress", "convert", "inspect"}
    everything |= {"bench", "devices", "run", "sweep"}
    assert everything <= commands
    assert len(CASES) >= 40


# ------------------------------------------------------------------ bugs are not bad input


def _patched_cli(workdir: Path, patch: str, args: list[str], env: dict | None = None):
    """Run `mobilecv ARGS` in a fresh process after `patch` (Python) broke the library."""
    code = f"import sys\n{patch}\nfrom mobilecv.cli import main\nmain(sys.argv[1:])\n"
    environment = dict(os.environ, **(env or {}))
    if not env or "MOBILECV_DEBUG" not in env:
        environment.pop("MOBILECV_DEBUG", None)
    environment["PYTHONPATH"] = _blocking_tf(workdir, environment)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def _raising(exc: str) -> str:
    return f"import mobilecv.zoo\ndef broken(*a, **k):\n    raise {exc}\nmobilecv.zoo.zoo_rows = broken"


@pytest.mark.parametrize("exc", ["ZeroDivisionError('division by zero')", "KeyError('layer_7')"])
def test_a_bug_is_an_internal_error_of_one_line(workdir, exc):
    # A KeyError inside the library is a bug too: it used to say "Error: layer_7", exit 2.
    result = _patched_cli(workdir, _raising(exc), ["list"])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    name = exc.split("(")[0]
    assert lines[0].startswith(f"Error: internal error ({name}: "), lines[0]
    assert "bug in mobilecv" in lines[0] and "--debug" in lines[0]


def test_running_out_of_memory_is_a_failed_run_not_a_bug(workdir):
    result = _patched_cli(workdir, _raising("MemoryError('cannot allocate 12 GiB')"), ["list"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: out of memory (cannot allocate 12 GiB)"]


@pytest.mark.parametrize(
    ("args", "env"), [(["--debug", "list"], None), (["list"], {"MOBILECV_DEBUG": "1"})]
)
def test_debug_shows_the_traceback_of_a_bug(workdir, args, env):
    result = _patched_cli(workdir, _raising("ZeroDivisionError('division by zero')"), args, env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "in broken" in result.stderr  # the frame that raised
    assert result.stderr.strip().splitlines()[-1].startswith("Error: internal error")


def test_debug_shows_the_traceback_of_bad_input_too(workdir):
    result = _cli(["--debug", "build", "zzqx", "-o", "x.keras"], workdir)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "UnknownName" in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == "Error: unknown model 'zzqx'; see `mobilecv list`"
    )


def _broken_build(exc: str) -> str:
    # The build step seeds TensorFlow before it builds; that seeding is not under test.
    return (
        f"import mobilecv, mobilecv.train\ndef broken(*a, **k):\n    raise {exc}\n"
        "mobilecv.build = broken\nmobilecv.train.set_seed = lambda seed: None"
    )


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        # A bug inside a step is a failed step naming the exception, not bad input.
        ("KeyError('layer_7')", 1, "Error: step 'build' failed: KeyError: layer_7"),
        ("OSError(28, 'No space left on device')", 1, "Error: step 'build' failed: [Errno 28]"),
        # Bad input found inside a step is still bad input.
        (
            "__import__('mobilecv.errors').errors.InputError('weights do not fit')",
            2,
            "Error: step 'build' failed: weights do not fit",
        ),
    ],
)
def test_run_step_maps_input_errors_to_2_and_everything_else_to_1(workdir, tmp_path, exc, code,
                                                                   line):  # fmt: skip
    out = str(tmp_path / "run")
    result = _patched_cli(workdir, _broken_build(exc), ["run", RECIPE, "-o", out])
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr
    debug = _patched_cli(workdir, _broken_build(exc), ["--debug", "run", RECIPE, "-o", out])
    assert debug.returncode == code
    assert "in broken" in debug.stderr  # --debug shows the cause behind the failed step


def test_a_failed_host_calibration_is_a_failed_run_of_one_line(workdir, tmp_path):
    if not (workdir / "sine.tflite").exists():
        pytest.skip("tflite-micro's sine_float.tflite is not installed")
    patch = (
        "from pathlib import Path\n"
        "from mobilecv.bench import calibrate, harness\n"
        "calibrate._probe_models = lambda tmp: {'conv_fp32': (Path('sine.tflite'), 1)}\n"
        "harness.measure = lambda *a, **k: {'ok': False, 'error': 'runtime crashed with SIGSEGV'}"
    )
    env = {"MOBILECV_CACHE_DIR": str(tmp_path)}
    result = _patched_cli(workdir, patch, ["bench", "sine.tflite", "--device", "host"], env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: host calibration probe conv_fp32 failed: runtime crashed with SIGSEGV"
    )

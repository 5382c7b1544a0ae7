"""Shared CLI plumbing: exit codes, one-line errors, JSON output.

The error policy (mobilecv/errors.py): bad input exits 2 and a failed run exits 1, each
with one `Error: ...` line; any other exception is a bug in mobilecv and exits 1 with a
one-line "internal error" summary, its traceback shown only with `mobilecv --debug` or
MOBILECV_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import click

from mobilecv.errors import InputError, RunFailed, one_line

DEBUG_ENV = "MOBILECV_DEBUG"
BAD_INPUT, FAILED = 2, 1


def debug_enabled() -> bool:
    """True under `mobilecv --debug` or MOBILECV_DEBUG=1: errors show their traceback."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx and (ctx.find_root().obj or {}).get("debug"))


def _os_error_line(exc: OSError) -> str:
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return one_line(exc)


def classify(exc: BaseException, debug: bool = False) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the CLI."""
    if isinstance(exc, InputError):
        return BAD_INPUT, one_line(exc)
    if isinstance(exc, RunFailed):
        return FAILED, one_line(exc)
    if isinstance(exc, OSError):  # the file system: permission denied, disk full, ...
        return FAILED, _os_error_line(exc)
    if isinstance(exc, MemoryError):  # the machine, not the code
        return FAILED, f"out of memory ({one_line(exc)})"
    how = (
        "with the traceback above"
        if debug
        else f"with the traceback that `mobilecv --debug ...` (or {DEBUG_ENV}=1) shows"
    )
    return FAILED, (
        f"internal error ({type(exc).__name__}: {one_line(exc)}). "
        f"This is a bug in mobilecv: please report it {how}"
    )


def report_error(exc: BaseException) -> None:
    """Print `Error: ...` (after the traceback under --debug) and exit with its code."""
    debug = debug_enabled()
    code, message = classify(exc, debug)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def errors_reported() -> Iterator[None]:
    """Report any exception of the block by the policy above, exiting with its code."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise  # click's own usage errors keep their exit code (2)
    except Exception as exc:  # noqa: BLE001 - every error gets one line and a code
        report_error(exc)


def handle_errors(fn):
    """Turn library exceptions into `Error: ...` on stderr and a real exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with errors_reported():
            return fn(*args, **kwargs)

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "value"):  # str enums
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# The options every command spells the same way.
def json_option(what: str = "the result"):
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def force_option(what: str = "existing outputs"):
    return click.option("--force", is_flag=True, help=f"Overwrite {what}.")


def out_dir_option(help: str = "Output directory.", required: bool = True):
    return click.option(
        "-o", "--output", "out_dir", required=required, type=click.Path(file_okay=False), help=help
    )


def trial_options(resume_help: str):
    """--device, --max-latency-ms, --data, --workers, --address and --resume: the options
    of the commands whose points are trials on Ray (sweep, search), spelled once."""
    options = [
        click.option("--device", "-d", default="stm32f746", show_default=True,
                     help="Device profile to judge fit on (see `mobilecv devices`) or a profile .yaml."),
        click.option("--max-latency-ms", type=float, default=None,
                     help="Latency budget on the device (measured on the host, estimated elsewhere)."),
        click.option("--data", default="fashion_mnist", show_default=True,
                     help="Dataset: fashion_mnist, digits, an .npz or a folder."),
        click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Trials at once on each machine (each gets cpu_count / workers CPUs)."),
        click.option("--address", default=None,
                     help="Run the trials on this Ray cluster (auto, HOST:6379 or ray://HOST:10001) "
                     "instead of a Ray started on this machine."),
        click.option("--resume", is_flag=True, help=resume_help),
    ]  # fmt: skip

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def parse_key_value(text: str, hint: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a repeatable option -> (key with "-" as "_", value read as JSON:
    numbers, true/false, lists; anything else a string)."""
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint=hint)
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key.strip().replace("-", "_"), value

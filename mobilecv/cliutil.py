"""Shared CLI plumbing: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import click

from mobilecv.errors import InputError, RunFailed

# Exceptions that mean "bad input" (exit 2). Library code raises these for user
# mistakes (DESIGN point 14); anything else is a failed run (exit 1).
INPUT_ERRORS = (
    InputError,
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
)


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text


def handle_errors(fn):
    """Turn library exceptions into `Error: ...` on stderr and a real exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except RunFailed as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except INPUT_ERRORS as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(2)

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

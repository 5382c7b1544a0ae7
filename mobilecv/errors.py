"""Error types the CLI maps to exit codes (see mobilecv.cliutil.handle_errors):

- bad input (InputError and its subclasses): exit 2, one line;
- a failed run (RunFailed, or an OSError from the file system): exit 1, one line;
- anything else is a bug in mobilecv: exit 1, a one-line "internal error" summary, and
  the traceback only with `mobilecv --debug` or MOBILECV_DEBUG=1.

Library code raises InputError for user mistakes, never a bare ValueError or KeyError:
those mean a bug, and the CLI says so instead of blaming the user.
"""

from __future__ import annotations

import enum
from typing import TypeVar


class InputError(ValueError):
    """The user asked for something that cannot be done (exit code 2)."""


class UnknownName(InputError, KeyError):
    """An unknown model, dataset, device... name (exit code 2). Also a KeyError, so
    callers that look names up with `except KeyError` keep working."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class MissingFile(InputError, FileNotFoundError):
    """A path the user gave does not exist (exit code 2); also a FileNotFoundError."""

    def __str__(self) -> str:  # OSError would format it as "[Errno None] ..."
        return str(self.args[0]) if self.args else ""


class RunFailed(RuntimeError):
    """The input was valid but the work failed (exit code 1)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without its quotes)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = str(text).strip()
    return text.splitlines()[0] if text else type(exc).__name__


E = TypeVar("E", bound=enum.Enum)


def parse_choice(cls: type[E], value: object, what: str) -> E:
    """`value` as a member of the string enum `cls`, or an InputError naming the choices."""
    try:
        return cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise InputError(f"{what} must be one of {choices}; got {value!r}") from None

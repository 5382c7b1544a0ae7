"""Error types the CLI maps to exit codes: bad input -> 2, failed run -> 1."""

from __future__ import annotations

import enum
from typing import TypeVar


class InputError(ValueError):
    """The user asked for something that cannot be done (exit code 2)."""


class RunFailed(RuntimeError):
    """The input was valid but the work failed (exit code 1)."""


E = TypeVar("E", bound=enum.Enum)


def parse_choice(cls: type[E], value: object, what: str) -> E:
    """`value` as a member of the string enum `cls`, or an InputError naming the choices."""
    try:
        return cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise InputError(f"{what} must be one of {choices}; got {value!r}") from None

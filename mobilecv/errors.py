"""Error types the CLI maps to exit codes: bad input -> 2, failed run -> 1."""


class InputError(ValueError):
    """The user asked for something that cannot be done (exit code 2)."""


class RunFailed(RuntimeError):
    """The input was valid but the work failed (exit code 1)."""

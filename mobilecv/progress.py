"""Progress on stderr: a live tqdm bar on a terminal, plain lines in a file or a pipe.

A bar redrawn with carriage returns turns a log file into hundreds of updates
("calibrating host: 14%..."). So when the stream is not a terminal, `Progress` draws
nothing while it runs and prints one line per stage instead:

    calibrating host: 7 probes ... done in 31.2 s

or, with ``per_update=True``, one line per finished item (a sweep point). Every bar
in mobilecv goes through this class.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def is_terminal(stream: IO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One stage of work counted in `unit`s (a context manager).

    enabled: False shows nothing at all.
    summary: print "DESC: N units ... done in S s" when the stage ends (on a terminal
      it replaces the bar); False when the caller prints its own line per stage (the
      per-epoch metrics of training).
    per_update: in a file or pipe, also print a line for each finished item.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "step",
        *,
        enabled: bool = True,
        summary: bool = True,
        per_update: bool = False,
        stream: IO | None = None,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled, self.summary, self.per_update = enabled, summary, per_update
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.last_note: str | None = None
        self.start = time.perf_counter()
        self.closed = False
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False)

    def note(self, text: str) -> None:
        """What is happening now: the bar's postfix, and the end of a per-update line."""
        self.last_note = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.count += n
        if note is not None:
            self.note(note)
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.per_update:
            self._print(f"{self.desc}: {self._count(fraction=True)}{self._note()}")

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if self.enabled and self.summary:
            self._print(self.line(failed))

    def line(self, failed: bool = False) -> str:
        """The one-line account of the stage: what was done and how long it took."""
        seconds = time.perf_counter() - self.start
        status = "failed after" if failed else "done in"
        return f"{self.desc}: {self._count()} ... {status} {seconds:.1f} s"

    def _count(self, fraction: bool = False) -> str:
        """ "3 probes", or "3/7 probes" while some are still to come."""
        if self.total is not None and (fraction or self.count != self.total):
            return f"{self.count}/{self.total} {self._units(self.total)}"
        return f"{self.count} {self._units(self.count)}"

    def _units(self, count: int) -> str:
        return self.unit if count == 1 else f"{self.unit}s"

    def _note(self) -> str:
        return f" ({self.last_note})" if self.last_note else ""

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

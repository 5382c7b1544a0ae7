"""Run the slow tests (`make test-slow`): one pytest process per test file, two at a time.

One process per file because the TFLite converter has segfaulted after many conversions
in one process. Two at a time because much of a slow test is single-threaded (conversion,
calibration, process start-up): on 2 cores two files together finish sooner than one after
the other. Each file's output is printed whole as soon as it ends. Exit code 1 if any file
failed; pytest's 5 (no slow test in the file) is not a failure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
SLOW = re.compile(r"mark\.slow\b")
# The longest files start first, so the two lanes end together (measured in CI runs).
LONGEST_FIRST = ("test_run.py", "test_classic.py", "test_reload.py", "test_localisation.py",
                 "test_input_contract.py", "test_multiworker.py", "test_landmarks.py")  # fmt: skip
NO_TESTS_COLLECTED = 5


def slow_files(folder: Path = TESTS) -> list[Path]:
    """Test files with a slow mark, the known-long ones first."""
    files = [p for p in sorted(folder.glob("test_*.py")) if SLOW.search(p.read_text())]
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    return sorted(files, key=lambda p: rank.get(p.name, len(rank)))


def run_file(path: Path, extra: list[str]) -> tuple[Path, int, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "slow", "-q", str(path), *extra],
        capture_output=True,
        text=True,
    )
    return path, done.returncode, done.stdout + done.stderr, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="files run at once (default 2)")
    parser.add_argument("pytest_args", nargs="*", help="passed to every pytest run")
    args = parser.parse_args(argv)
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_file, p, args.pytest_args) for p in slow_files()]
        for future in as_completed(futures):  # each file's output as soon as it ends
            path, code, output, seconds = future.result()
            print(f"== {path.relative_to(TESTS.parent)} ({seconds:.0f} s, exit {code})")
            print(output.rstrip(), flush=True)
            if code not in (0, NO_TESTS_COLLECTED):
                failed.append(path.name)
    if failed:
        print(f"slow tests failed in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

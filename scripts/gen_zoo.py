"""Regenerate mobilecv/zoo.json and the README model-zoo table from real builds.

Usage: python scripts/gen_zoo.py (or `make zoo`); tests/test_zoo.py checks the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mobilecv
from mobilecv.progress import Progress
from mobilecv.zoo import compute_row, markdown_table

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    names = mobilecv.list_models()
    rows = []
    with Progress("zoo", len(names), "model") as bar:
        for name in names:
            rows.append(compute_row(name))
            bar.update()
    (ROOT / "mobilecv" / "zoo.json").write_text(json.dumps(rows, indent=1) + "\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{markdown_table(rows)}\n{END}{tail}")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

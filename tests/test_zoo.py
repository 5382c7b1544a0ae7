"""zoo.json and the README table are generated, and agree with fresh builds."""

from pathlib import Path

import pytest

import mobilecv
from mobilecv.zoo import compute_row, markdown_table, stored_rows

ROOT = Path(__file__).resolve().parent.parent
FAST_LIMIT_MACS = 2e9  # rebuilding bigger models is left to the slow run


def test_every_registered_model_is_in_the_zoo_and_the_readme():
    stored = stored_rows()
    assert sorted(stored) == mobilecv.list_models(), "run `make zoo` after registering a model"
    readme = (ROOT / "README.md").read_text()
    assert markdown_table([stored[n] for n in mobilecv.list_models()]) in readme


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] if row["macs"] > FAST_LIMIT_MACS else [])
        for n, row in sorted(stored_rows().items())
    ],
)
def test_zoo_row_matches_a_fresh_build(name):
    assert compute_row(name) == stored_rows()[name]

"""Every row of the golden table, asserted against a fresh build."""

import pytest
from golden import GOLDEN

import mobilecv
from mobilecv.profiling import profile


def _param(g):
    return pytest.param(g, id=g.id, marks=[pytest.mark.slow] if g.slow else [])


@pytest.mark.parametrize("golden", [_param(g) for g in GOLDEN])
def test_golden_params_and_macs(golden):
    prof = profile(mobilecv.build(golden.name, **golden.knobs))
    if golden.params_rel:
        assert prof.params == pytest.approx(golden.params, rel=golden.params_rel)
    else:
        assert prof.params == golden.params
    if golden.macs is not None:
        assert prof.macs == pytest.approx(golden.macs, rel=golden.macs_rel)


def test_golden_table_covers_every_family():
    """Every classifier family has a published figure; task heads have none to cite."""
    families = {mobilecv.registry.get(g.name).family for g in GOLDEN}
    entries = [mobilecv.registry.get(n) for n in mobilecv.list_models()]
    registered = {e.family for e in entries if e.task == "classification"}
    assert registered <= families

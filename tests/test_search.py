"""mobilecv search: the space (free and compound), the constraints, choosing, and the
search on Ray Tune with Optuna. Trials that raise or whose worker is killed are rows and
the others finish; a search killed halfway resumes without running finished trials
again; the CLI runs the real thing (build, int8, TFLite Micro arena, training, the
chosen model retrained) in a fresh process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle
import search_trials
from conftest import run_cli

from mobilecv import search
from mobilecv.errors import InputError

cloudpickle.register_pickle_by_value(search_trials)


# --------------------------------------------------------------------------- space


def test_the_compound_grid_keeps_alpha_beta2_gamma2_near_2_and_holds_the_papers_triple():
    grid = search.compound_grid()
    assert len(grid) > 10
    assert all(abs(a * b * b * g * g - 2) <= 0.1 for a, b, g in grid)
    assert all(min(t) >= 1 for t in grid)
    assert (1.2, 1.1, 1.15) in grid  # EfficientNet's: 1.2 * 1.21 * 1.3225 = 1.92


def test_a_compound_config_scales_the_base_by_alpha_beta_gamma_to_the_phi():
    space = search.Space(phi=(0.0, 2.0), base=(0.35, 1.0, 32))
    point = space.point({"phi": 2.0, "abg": "1.2,1.1,1.15"})
    assert point["width"] == pytest.approx(0.35 * 1.1**2, abs=1e-3)
    assert point["depth"] == pytest.approx(1.2**2, abs=1e-3)
    assert point["resolution"] == round(32 * 1.15**2) == 42
    assert space.point({"phi": 0.0, "abg": "1.2,1.1,1.15"})["resolution"] == 32
    assert set(space.optuna()) == {"phi", "abg"}
    assert set(search.Space(divisors=(8, 16)).optuna()) == {
        "width",
        "depth",
        "resolution",
        "divisor",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"widths": "1.0:0.5"}, "LOW <= HIGH"),
        ({"widths": "a:b"}, "must be LOW:HIGH"),
        ({"resolutions": "32:90"}, "whole --resolution-step 8 steps"),
        ({"resolutions": "8:32"}, "too small for mobilenet_v2"),
        ({"widths": "0.5:9"}, "absurd"),
        ({"phi": "-1:1"}, "phi must be >= 0"),
        ({"base": "0.35,1"}, "--base must be WIDTH,DEPTH,RESOLUTION"),
        ({"device": "nope"}, "nope"),
        ({"max_arena_kb": 0}, "--max-arena-kb must be > 0"),
        ({"divisors": "8,x"}, "--divisors must be comma-separated int"),
    ],
)
def test_bad_options_are_one_line_errors_before_ray_starts(options, message):
    with pytest.raises((InputError, KeyError), match=message):
        search.settings_from_options("mobilenet_v2", **options)


def test_constraints_add_the_tighter_bounds_to_the_devices_verdict():
    limits = search.Constraints("stm32f746", max_latency_ms=100, max_arena_kb=100, max_flash_kb=200)
    row = {"fits": True, "arena_bytes": 150 * 1024, "tflite_bytes": 100 * 1024,
           "judged_latency_ms": 50}  # fmt: skip
    assert limits.violations(row) == ["arena 150.0 KB > 100 KB"]
    assert limits.overshoot(row) == pytest.approx(1.5)
    assert search.Constraints().violations({"fits": False, "reasons": ["ram"]}) == ["ram"]
    settings = search.Settings("mobilenet_v2", search.Space(), limits)
    penalised = search.objective_values(settings, {**row, "constraints": ["arena"]})
    assert penalised["objective_score"] == pytest.approx(-1.5)  # below any accuracy


def test_the_chosen_point_fits_with_the_best_validation_score():
    rows = [
        {"val_score": 0.9, "constraints": ["ram"], "judged_latency_ms": 5},
        {"val_score": 0.8, "constraints": [], "judged_latency_ms": 9},
        {"val_score": 0.8, "constraints": [], "judged_latency_ms": 7},
        {"val_score": 0.7, "constraints": [], "judged_latency_ms": 3},
        {"val_score": None, "constraints": [], "error": "boom", "judged_latency_ms": 1},
    ]
    assert search.choose(rows) is rows[2]  # the tie goes to the faster
    settings = search.Settings("mobilenet_v2", search.Space(), search.Constraints())
    assert search.mark_pareto(rows, settings) == [2, 3]
    assert search.choose([rows[0], rows[4]]) is None


# --------------------------------------------------------------------------- on Ray Tune


def _settings(**changes) -> search.Settings:
    base = search.Settings(
        "mobilenet_v2",
        search.Space(width=(0.25, 0.5), resolution=(32, 64)),
        search.Constraints("host"),
        objectives=("score",),
        trials=5,
        start=(
            {"width": 0.95, "depth": 1.0, "resolution": 32},  # raises
            {"width": 0.3, "depth": 1.0, "resolution": 96},  # its worker is killed
            {"width": 0.5, "depth": 1.0, "resolution": 64},  # does not fit
        ),
    )
    return replace(base, **changes)


def test_a_search_keeps_failed_and_killed_trials_as_rows_and_chooses_among_the_rest(tmp_path):
    report = search.search(
        _settings(), tmp_path, final_epochs=0, progress=False, evaluate=search_trials.evaluate
    )
    rows = report["rows"]
    assert len(rows) == 5
    by_width = {r["width"]: r for r in rows}
    assert by_width[0.95]["error"] == "ValueError: bad point width=0.95"
    assert by_width[0.3]["error"].startswith("worker process died (ActorDiedError)")
    assert by_width[0.5]["constraints"] == ["latency"] and by_width[0.5]["val_score"] is None
    fine = [r for r in rows if search.feasible(r)]
    assert fine, "the sampler's own trials fit"
    chosen = [r for r in rows if r["chosen"]]
    assert chosen == [max(fine, key=lambda r: r["val_score"])]
    assert report["chosen"] == chosen[0]["trial"] and report["final"] is None
    with open(tmp_path / search.CSV_NAME) as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (tmp_path / search.PLOT_NAME).stat().st_size > 10_000
    logged = (tmp_path / search.STATE_NAME).read_text().splitlines()[1:]
    assert len(logged) == 5  # every trial's row as it ended, failures included
    with pytest.raises(InputError, match="exists; pass --force"):
        search.search(_settings(), tmp_path, final_epochs=0, progress=False)
    with pytest.raises(InputError, match="other settings"):
        search.search(_settings(trials=6), tmp_path, final_epochs=0, resume=True, progress=False)


_SCRIPT = """
import sys, search_trials
import ray.cloudpickle as cloudpickle
from dataclasses import replace
from mobilecv import search
cloudpickle.register_pickle_by_value(search_trials)
settings = search.Settings(  # the compound form, on NSGA-II
    "mobilenet_v2", search.Space(phi=(0.0, 2.0), base=(0.25, 1.0, 32)),
    search.Constraints("host"), objectives=("score", "latency"), trials=4, extra={"sleep": 4},
)
search.search(settings, sys.argv[1], final_epochs=0, workers=1, resume=sys.argv[2] == "resume",
              progress=False, evaluate=search_trials.evaluate)
"""


def _search_process(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(out), mode], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _logged(out: Path) -> dict:
    path = out / search.STATE_NAME
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    return {e["key"]: e["row"] for e in entries}


def test_a_search_killed_halfway_resumes_without_running_finished_trials_again(tmp_path):
    first = _search_process(tmp_path, "new")
    deadline = time.monotonic() + 240
    while len(_logged(tmp_path)) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    time.sleep(1.5)  # past Tune's one-second experiment checkpoint
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _logged(tmp_path)
    assert len(before) >= 2, first.stderr.read()[-2000:]
    second = _search_process(tmp_path, "resume")
    _, err = second.communicate(timeout=400)
    assert second.returncode == 0, err[-2000:]
    report = json.loads((tmp_path / search.JSON_NAME).read_text())
    rows = report["rows"]
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    finished = {(r["pid"], r["finished_at"]) for r in before.values()}
    # The trials that had finished before the kill are in the report as they were.
    assert finished <= {(r["pid"], r["finished_at"]) for r in rows}
    assert len({r["pid"] for r in rows}) == 4  # and nothing ran twice
    assert all(r["phi"] is not None and r["alpha"] >= 1 for r in rows)


# --------------------------------------------------------------------------- the CLI


def test_the_cli_searches_retrains_the_chosen_point_and_writes_its_report(tmp_path):
    out = tmp_path / "search"
    args = [
        "search", "mobilenet_v2", "--device", "stm32f746", "--trials", "2",
        "--epochs-per-trial", "1", "--train-limit", "64", "--widths", "0.1:0.2",
        "--resolutions", "32:40", "--final-epochs", "1", "--final-limit", "128",
        "--objectives", "score", "-o", out,
    ]  # fmt: skip
    done = run_cli(*args, "--json", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert len(report["rows"]) == 2
    for row in report["rows"]:
        assert row["arena_bytes"] > 0  # the real TFLite Micro arena
        assert row["judged_latency_ms"] > 0 and row["val_score"] is not None
    final = report["final"]
    assert final["epochs"] == 1 and 0.0 <= final["test_score"] <= 1.0
    assert final["device"] == "stm32f746" and final["constraints"] == []
    assert (out / "best.tflite").stat().st_size == final["tflite_bytes"]
    # The trial judged the same network's flash as trained (untrained it is ~3% smaller).
    chosen = next(r for r in report["rows"] if r["chosen"])
    assert abs(chosen["tflite_bytes"] - final["tflite_bytes"]) < 2_000
    assert (out / "best.keras").exists() and (out / "pareto.png").exists()
    again = run_cli(*args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"Error: {out / 'search.csv'} exists; pass --force to overwrite or --resume"
    ]
    assert run_cli("search", "--help").returncode == 0


def test_a_trial_converts_with_distinct_stand_in_weights_and_gives_the_model_its_own_back():
    """Untrained, every folded BatchNorm bias is 0 and the converter stores them once (the
    int8 file is smaller than the trained model's); the CLI test checks the sizes."""
    import numpy as np

    import mobilecv

    model = mobilecv.build("mobilenet_v2", width=0.35, resolution=32, classes=10)
    before = model.get_weights()
    with search._weights_as_if_trained(model):
        means = [v.numpy() for v in model.weights if "moving_mean" in v.name]
        assert all(np.unique(m).size == m.size for m in means)  # no two channels alike
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))

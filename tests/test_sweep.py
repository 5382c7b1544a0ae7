"""mobilecv sweep: Pareto frontier, outputs, input validation, and a real tiny sweep."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mobilecv import sweep as sw
from mobilecv.commands.sweep import sweep_command
from mobilecv.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dominates(a, b, x="x", y="y"):
    return a[x] <= b[x] and a[y] >= b[y] and (a[x] < b[x] or a[y] > b[y])


# --------------------------------------------------------------------------- Pareto


def test_pareto_front_hand_made():
    pts = [
        {"x": 1.0, "y": 0.50},  # 0 fastest: on the front
        {"x": 2.0, "y": 0.70},  # 1 on the front
        {"x": 2.5, "y": 0.60},  # 2 dominated by 1
        {"x": 3.0, "y": 0.70},  # 3 dominated by 1 (same y, slower)
        {"x": 4.0, "y": 0.90},  # 4 on the front
        {"x": 0.5, "y": None},  # 5 missing y: ignored
        {"x": 5.0, "y": 0.85},  # 6 dominated by 4
    ]
    assert sw.pareto_front(pts, "x", "y") == [0, 1, 4]
    # Flipping the objectives gives the opposite corner.
    assert sw.pareto_front(pts, "x", "y", minimize_x=False, maximize_y=False) == [6, 3, 2, 0]


def test_pareto_front_random_points_are_exactly_the_non_dominated():
    rng = np.random.default_rng(3)
    pts = [{"x": float(a), "y": float(b)} for a, b in rng.random((60, 2))]
    front = set(sw.pareto_front(pts, "x", "y"))
    assert front
    for i, p in enumerate(pts):
        dominated = any(_dominates(q, p) for q in pts)
        assert (i in front) == (not dominated)
    xs = [pts[i]["x"] for i in sw.pareto_front(pts, "x", "y")]
    assert xs == sorted(xs)


def _row(width, resolution, latency, macs, fits=True, accuracy=None, error=None):
    row = dict.fromkeys(sw.COLUMNS)
    row.update(
        family="toy", width=width, depth=1.0, resolution=resolution, params=1000, macs=macs,
        tflite_bytes=5000, host_latency_ms=latency, device="stm32f746", device_latency_ms=None if latency is None else latency * 100,
        fits=fits, verdict="fits" if fits else "does not fit",
        reasons=[] if fits else ["ram: 600 KiB needed, 320 KiB available"],
        score=accuracy, error=error, pareto=False,
        task=None if accuracy is None else "classification",
        metric=None if accuracy is None else "accuracy",
    )  # fmt: skip
    if error:
        for key in ("params", "macs", "host_latency_ms", "fits", "verdict"):
            row[key] = None
    return row


def _rows():
    return [
        _row(0.25, 32, 0.10, 1_000_000, accuracy=0.70),
        _row(0.25, 48, 0.20, 2_200_000, accuracy=0.78),
        _row(0.5, 32, 0.25, 3_000_000, accuracy=0.74),  # dominated by the row above
        _row(0.5, 48, 0.40, 6_500_000, fits=False, accuracy=0.90),  # best, but does not fit
        _row(0.75, 48, None, None, error="RuntimeError: boom"),
    ]


def test_mark_pareto_uses_only_points_that_fit():
    rows = _rows()
    sw.mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, True, False, False, False]
    assert sw.y_key(rows) == "score"
    # Without accuracy the frontier is MACs against latency: every fitting point is on it here.
    for r in rows:
        r["score"] = None
    sw.mark_pareto(rows)
    assert sw.y_key(rows) == "macs"
    assert [r["pareto"] for r in rows] == [True, True, True, False, False]


def test_write_outputs(tmp_path):
    rows = _rows()
    sw.mark_pareto(rows)
    paths = sw.write_outputs(rows, tmp_path, {"family": "toy", "device": "stm32f746"})
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(table) == len(rows)
    assert table[3]["reasons"].startswith("ram:") and table[4]["error"] == "RuntimeError: boom"
    assert [t["pareto"] for t in table] == ["True", "True", "False", "False", "False"]
    data = json.loads(paths["json"].read_text())
    assert data["y"] == "score" and len(data["rows"]) == len(rows)
    with pytest.raises(InputError, match="--force"):  # outputs are never silently overwritten
        sw.write_outputs(rows, tmp_path)


def test_failing_point_becomes_a_row():
    task = {"family": "no_such_net", "width": 0.5, "depth": 1.0, "resolution": 32, "device": "host"}
    row = sw._run_point(task)
    assert row["error"].startswith("KeyError") and row["width"] == 0.5
    assert row["params"] is None and row["seconds"] is not None


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any worker would start."""

    def boom(*args, **kwargs):
        raise AssertionError("work started despite bad input")

    monkeypatch.setattr(sw, "_run_all", boom)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["no_such_net", "--widths", "0.5", "--resolutions", "32"], "unknown model"),
        (["mobilenet_v2", "--widths", "", "--resolutions", "32"], "--widths is empty"),
        (["mobilenet_v2", "--widths", "0,0.5", "--resolutions", "32"], "width must be > 0"),
        (["mobilenet_v2", "--widths", "0.5", "--resolutions", "x"], "--resolutions must be"),
        (["mobilenet_v2", "--widths", "0.5", "--resolutions", "4"], "resolution"),
        (["mobilenet_v2", "--widths", "0.5", "--resolutions", "32", "--device", "nope"],
         "unknown device"),
        (["mobilenet_v2", "--widths", "0.5", "--resolutions", "32", "--data", "nope"],
         "unknown dataset"),
        (["mobilenet_v2", "--widths", "0.5", "--resolutions", "32", "--resume"],
         "nothing to resume"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_before_any_work(tmp_path, no_work, args, needle):
    out = tmp_path / "out"
    result = CliRunner().invoke(sweep_command, [*args, "-o", str(out), "--classes", "10"])
    assert result.exit_code == 2, result.output
    lines = [s for s in result.output.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert not out.exists()


def test_existing_outputs_need_force(tmp_path, no_work):
    (tmp_path / sw.CSV_NAME).write_text("old\n")
    args = ["mobilenet_v2", "--widths", "0.5", "--resolutions", "32", "-o", str(tmp_path)]
    result = CliRunner().invoke(sweep_command, args)
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / sw.CSV_NAME).read_text() == "old\n"


# --------------------------------------------------------------------------- real sweep


@pytest.mark.slow
def test_real_tiny_sweep(tmp_path):
    widths, resolutions = (0.25, 0.35), (32, 48)
    result = CliRunner().invoke(
        sweep_command,
        ["mobilenet_v2", "--widths", "0.25,0.35", "--resolutions", "32,48", "--classes", "10",
         "--input-channels", "1", "--device", "host", "--workers", "2", "--runs", "10",
         "-o", str(tmp_path), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    assert len(rows) == len(widths) * len(resolutions)
    assert [(r["width"], r["resolution"]) for r in rows] == [
        (w, r) for w in widths for r in resolutions
    ]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    by = {(r["width"], r["resolution"]): r for r in rows}
    for w in widths:
        small, big = by[(w, 32)], by[(w, 48)]
        assert big["macs"] > 2 * small["macs"]  # (48/32)^2 = 2.25 for the convolutions
        assert big["params"] == small["params"]  # resolution sets only the input shape
        assert big["tflite_bytes"] == pytest.approx(small["tflite_bytes"], rel=0.01)
    assert by[(0.35, 32)]["params"] > by[(0.25, 32)]["params"]
    for r in rows:
        assert r["tflite_bytes"] > 50_000 and r["host_latency_ms"] > 0
        assert r["device"] == "host" and r["verdict"] == "fits"
    front = [r for r in rows if r["pareto"]]
    assert front
    for p in front:
        assert not any(_dominates(q, p, "host_latency_ms", "macs") for q in rows if q is not p)
    assert (tmp_path / sw.PLOT_NAME).read_bytes()[:8] == PNG_MAGIC
    table = list(csv.DictReader((tmp_path / sw.CSV_NAME).open()))
    assert len(table) == len(rows)
    assert len(list((tmp_path / sw.MODELS_DIR).glob("*.tflite"))) == len(rows)


@pytest.mark.slow
def test_sweep_with_short_training_scores_the_test_split(tmp_path):
    rows = sw.sweep(
        "mobilenet_v2", [0.35], [32], device="host", train_epochs=4, dataset="digits",
        workers=1, train_limit=None, test_samples=200, runs=5, out_dir=tmp_path, progress=False,
        max_latency_ms=1e-6,
    )  # fmt: skip
    (row,) = rows
    assert row["error"] is None, row["error"]
    # 10 digit classes, chance ~0.1; 4 epochs on the ~1.3k training digits scored 0.56-0.60
    # in two runs (2 epochs on 600 scored 0.25-0.30, too close to a bound to be a test).
    assert row["metric"] == "accuracy" and row["score"] > 0.35 and row["val_score"] > 0.35
    # On host the budget is judged on the measured latency: nothing runs in 1 ns.
    assert row["verdict"] == "does not fit" and row["fits_latency"] is False
    assert any("latency" in reason for reason in row["reasons"])
    assert not row["pareto"]  # only points that fit can be on the frontier
    assert json.loads((tmp_path / sw.JSON_NAME).read_text())["y"] == "score"


def test_pareto_prefers_a_lower_error_when_the_task_scores_an_error():
    """Landmarks score NME: the frontier takes the lower error at each latency."""
    rows = [
        _row(0.25, 32, 0.10, 1_000_000, accuracy=0.20),
        _row(0.5, 32, 0.20, 2_000_000, accuracy=0.30),  # slower and a larger error: dominated
        _row(0.5, 48, 0.30, 3_000_000, accuracy=0.10),
    ]
    for r in rows:
        r.update(task="landmarks", metric="nme")
    sw.mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, False, True]

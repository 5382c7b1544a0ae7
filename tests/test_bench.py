"""Edge benchmark harness: graph reading, measured runs, TFLM arenas, estimates,
verdicts, CLI robustness. Models are tiny tf_keras nets converted once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mobilecv import tflite_graph
from mobilecv.bench import calibrate, devices, estimate, harness, micro
from mobilecv.bench import run as bench_run
from mobilecv.commands.bench import bench
from mobilecv.commands.bench import devices as devices_cmd
from mobilecv.errors import InputError

CONTRACT_KEYS = {
    "model", "device", "threads", "runs", "latency_ms", "init_ms", "first_inference_ms",
    "peak_rss_mb", "model_bytes", "arena_bytes", "estimate", "measured", "fits", "verdict", "reasons",
}  # fmt: skip


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from mobilecv.bench.samples import random_calibration, tiny_mobilenet
    from mobilecv.converters.tflite import convert

    d = tmp_path_factory.mktemp("bench_models")
    out = {}
    small = tiny_mobilenet(resolution=32, channels=1, width=8, blocks=2)
    wide = tiny_mobilenet(resolution=40, channels=3, width=12, blocks=3, seed=1)
    deep = tiny_mobilenet(resolution=32, channels=1, width=8, blocks=5, seed=1)
    for name, model, q in (
        ("float", small, "none"),
        ("int8", small, "int8"),
        ("int8_wide", wide, "int8"),
        ("int8_deep", deep, "int8"),
    ):
        p = d / f"{name}.tflite"
        result = convert(model, q, random_calibration(model), 16, verify=False, progress=False)
        p.write_bytes(result.tflite)
        out[name] = p
    data = out["int8"].read_bytes()

    def make_custom(m):
        code = m.operatorCodes[m.subgraphs[0].operators[0].opcodeIndex]
        code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
        code.customCode = "MyFancyOp"

    def make_dynamic(m):
        t = m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]]
        t.shapeSignature = [-1, -1, -1, 1]

    out["custom"] = d / "custom.tflite"
    out["custom"].write_bytes(tflite_graph.rewrite(data, make_custom))
    out["dynamic"] = d / "dynamic.tflite"
    out["dynamic"].write_bytes(tflite_graph.rewrite(data, make_dynamic))
    out["truncated"] = d / "truncated.tflite"
    out["truncated"].write_bytes(data[: len(data) // 3])
    out["garbage"] = d / "garbage.tflite"
    out["garbage"].write_bytes(b"\x00" * 4 + b"TFL3" + os.urandom(400))
    out["text"] = d / "text.tflite"
    out["text"].write_text("definitely not a model\n")
    return out


@pytest.fixture(autouse=True)
def host_calibration(tmp_path, monkeypatch):
    """A fixed host calibration, so tests neither run nor depend on the microbenchmark."""
    monkeypatch.setenv("MOBILECV_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    fake = {
        "key": calibrate._key(), "cores": 2, "clock_mhz": 2000.0,
        "macs_per_s": {"fp32": 2e10, "fp16": 2e10, "int8": 4e10}, "memory_bandwidth_gbs": 10.0,
        "ram_bytes": 8 << 30, "flash_bytes": 100 << 30, "runtime_flash_bytes": 5_000_000,
        "per_op_overhead_us": 1.0, "op_efficiency": {"DEPTHWISE_CONV_2D:float32": 0.3},
    }  # fmt: skip
    (tmp_path / "cache" / "host_calibration.json").write_text(json.dumps(fake))


def _no_children() -> bool:
    from mobilecv.converters.isolated import stop_worker

    stop_worker()  # the converter's long-lived worker process is meant to be there
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# --- graph reading -------------------------------------------------------------------


def test_graph_ops_shapes_and_macs(models):
    g = tflite_graph.load(models["int8"])
    ops = [op.opcode for op in g.ops]
    assert ops == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D",
                   "MEAN", "FULLY_CONNECTED"]  # fmt: skip
    # stem 3x3 s2 conv: 16*16*8 outputs x 9 taps x 1 channel; dw 3x3 on 16x16x8; 1x1 8->8;
    # dw s2 -> 8x8x8; 1x1 8->16; mean over 8x8x16; dense 16->10.
    expected = [16 * 16 * 8 * 9, 16 * 16 * 8 * 9, 16 * 16 * 8 * 8, 8 * 8 * 8 * 9, 8 * 8 * 16 * 8,
                8 * 8 * 16, 10 * 16]  # fmt: skip
    assert [op.macs for op in g.ops] == expected
    inp = g.tensors[g.inputs[0]]
    assert inp.shape == (1, 32, 32, 1) and inp.dtype == "int8" and inp.scale
    assert g.dtypes == {"int8"}
    assert g.model_bytes == models["int8"].stat().st_size
    gf = tflite_graph.load(models["float"])
    assert gf.macs == g.macs and gf.dtypes == {"float32"}


def test_reader_does_not_import_tensorflow(models):
    code = (
        "import sys; from mobilecv import tflite_graph as g; from mobilecv.bench import estimate as e, devices as d;"
        f"gr = g.load({str(models['int8'])!r}); e.estimate(gr, d.get('stm32h743'));"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(gr.macs)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == tflite_graph.load(models["int8"]).macs


@pytest.mark.parametrize("name", ["truncated", "garbage", "text"])
def test_corrupt_files_are_input_errors(models, name):
    with pytest.raises(InputError, match="TFLite|corrupt|truncated"):
        tflite_graph.load(models[name])


# --- planner vs the real TFLite Micro arena ----------------------------------------------


@pytest.mark.parametrize("name", ["int8", "int8_wide"])
def test_planner_matches_tflm_arena(models, name):
    g = tflite_graph.load(models[name])
    real = micro.run(models[name])
    assert real["ok"], real
    plan = estimate.plan_arena(g)
    # The planned head is TFLM's non-persistent arena; the total within 10%.
    assert abs(plan.peak_bytes - real["arena_head_bytes"]) <= 0.10 * real["arena_head_bytes"]
    total = plan.peak_bytes + estimate.tflm_persistent_bytes(g)
    assert abs(total - real["arena_bytes"]) <= 0.10 * real["arena_bytes"]
    # The binary search found an arena that works and nothing 16 bytes smaller does.
    assert real["min_arena_bytes"] <= real["arena_bytes"] + 16
    smaller = micro.run(models[name], arena_size=real["min_arena_bytes"] - 16, find_min=False)
    assert not smaller["ok"]
    assert any("Arena allocation" in line for line in real["allocations"])


def test_arena_search_survives_tflm_crashing_on_a_small_arena(models):
    # This tflite-micro build crashes (SIGSEGV in its memory planner) instead of failing
    # cleanly on some arenas that are too small: 6000 bytes for this model, whose
    # smallest arena is 9552. The old in-process search died on such a probe.
    crash = micro.run(models["int8_deep"], arena_size=6000, find_min=False)
    assert not crash["ok"] and "SIGSEGV" in crash["error"]
    reference = micro.run(models["int8_deep"])
    assert reference["ok"], reference
    # Searching down from 12000 bytes, the first size tried is 6000.
    r = micro.run(models["int8_deep"], arena_size=12000)
    assert r["ok"], r
    assert r["search_probes_crashed"] >= 1
    assert r["min_arena_bytes"] == reference["min_arena_bytes"]
    smaller = micro.run(models["int8_deep"], arena_size=r["min_arena_bytes"] - 16, find_min=False)
    assert not smaller["ok"]
    assert _no_children()
    # A crash on an arena the user chose says what probably caused it.
    assert "may be too small" in crash["error"]


def test_allocation_alone_needs_the_whole_arena(models):
    # The untrained-softmax copy is measured without invoke: TFLM plans all of the
    # arena when it allocates, so both ways find the same smallest arena.
    for name in ("int8", "int8_deep"):
        with_invoke = micro.run(models[name])
        allocate_only = micro.run(models[name], invoke=False)
        assert with_invoke["min_arena_bytes"] == allocate_only["min_arena_bytes"]
        assert with_invoke["arena_bytes"] == allocate_only["arena_bytes"]


def test_tflm_reports_unresolved_custom_op(models):
    r = micro.run(models["custom"], find_min=False)
    assert not r["ok"]
    assert "MyFancyOp" in r["unresolved_ops"] or "MyFancyOp" in r["error"]


def test_greedy_planner_reuses_memory(models):
    g = tflite_graph.load(models["int8_wide"])
    plan = estimate.plan_arena(g)
    naive = sum(g.tensors[t].nbytes for t in estimate.lifetimes(g))
    assert plan.peak_bytes < naive
    assert plan.peak_bytes >= max(plan.live_bytes) * 0.99  # cannot beat what is live at once


# --- measured runs ----------------------------------------------------------------------


def test_measured_run_statistics(models):
    r = harness.measure(models["float"], harness.RunConfig(runs=30, warmup=2, cores=(0,)))
    assert r["ok"], r
    lat = r["latency_ms"]
    assert r["runs"] == 30 and len(r["samples_ms"]) == 30
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert abs(lat["mean"] - np.mean(r["samples_ms"])) < 1e-9
    assert r["cores"] == [0]
    assert r["init_ms"] > 0 and r["first_inference_ms"] > 0 and r["peak_rss_mb"] > 0
    # The timing loop's own cost is tiny next to an inference.
    assert r["loop_overhead_us"] / 1000 < lat["p50"]
    assert _no_children()


def test_time_budget_stops_early(models):
    # The child's start-up (Python, numpy, LiteRT) is what a loaded 2-core machine slows
    # down, not the budget: give it plenty of time so only the property below decides.
    budget_s = 0.2
    cfg = harness.RunConfig(runs=None, time_budget_s=budget_s, timeout_s=600)
    r = harness.measure(models["float"], cfg)
    assert r["ok"], r.get("error")
    # runs=None would time 10**9 inferences: stopping at all is the budget's doing.
    assert 10 < r["runs"] < 10**9
    # Every timed run but the last ended before the deadline, so (being disjoint
    # intervals after the loop started) they fit in the budget whatever the load.
    assert sum(r["samples_ms"][:-1]) <= budget_s * 1000


def test_user_npy_inputs(models, tmp_path):
    x = np.zeros((32, 32, 1), np.float32)  # without batch axis: reshaped
    np.save(tmp_path / "x.npy", x)
    r = harness.measure(
        models["float"], harness.RunConfig(runs=3, inputs=(str(tmp_path / "x.npy"),))
    )
    assert r["ok"], r
    with pytest.raises(InputError):
        harness.RunConfig(inputs=(str(tmp_path / "missing.npy"),)).validate()


def test_timeout_kills_child_and_leaves_no_zombie(models):
    r = harness.measure(models["float"], harness.RunConfig(runs=10**9, timeout_s=1.0))
    assert not r["ok"] and "timed out" in r["error"]
    assert _no_children()


def test_memory_limit_becomes_failed_result(models):
    r = harness.measure(models["float"], harness.RunConfig(runs=3, memory_limit_mb=40))
    assert not r["ok"] and "memory" in r["error"]


def test_crash_becomes_failed_result(models, tmp_path, monkeypatch):
    crasher = tmp_path / "crash.py"
    crasher.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(harness, "ONDEVICE", crasher)
    r = harness.measure(models["float"], harness.RunConfig(runs=3))
    assert not r["ok"] and "SIGSEGV" in r["error"]
    assert _no_children()


def test_ondevice_runs_alone_without_tensorflow_or_mobilecv(models, tmp_path):
    script = Path(harness.ONDEVICE)
    src = script.read_text()
    assert (
        "import tensorflow" not in src and "mobilecv" not in src.split('"""', 2)[2].split("def ")[0]
    )
    copy = tmp_path / "ondevice.py"  # as if copied to a Raspberry Pi
    copy.write_text(src)
    code = (
        "import runpy, sys, json;"
        f"sys.argv = ['ondevice.py', {str(models['int8'])!r}, '--runs', '5', '-o', 'r.json'];"
        f"sys.path = [p for p in sys.path if p not in ('', {str(Path(__file__).resolve().parents[1])!r})];"
        f"rc = None\ntry:\n    runpy.run_path({str(copy)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "assert 'tensorflow' not in sys.modules and 'mobilecv' not in sys.modules\nprint(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] and data["runs"] == 5 and set(data["latency_ms"]) == {
        "mean", "p50", "p90", "p99", "min", "max", "std"}  # fmt: skip


# --- profiles ----------------------------------------------------------------------------


def test_builtin_profiles_load_with_sources():
    names = devices.names()
    for need in ("host", "rpi4", "rpi5", "pixel1", "stm32h743", "stm32f746",
                 "arduino_nano33_ble", "esp32s3"):  # fmt: skip
        assert need in names
    for n in names:
        d = devices.get(n, calibrate=False)
        assert all(d.sources[f].strip() for f in devices.FIGURES)
    h743 = devices.get("stm32h743")
    assert h743.ram_bytes == 1 << 20 and h743.flash_bytes == 2 << 20 and h743.clock_mhz == 480
    assert devices.get("stm32f746").ram_bytes == 320 * 1024
    assert devices.get("arduino_nano33_ble").ram_bytes == 256 * 1024


def test_profile_loader_is_strict(tmp_path):
    import yaml

    base = yaml.safe_load((devices.HERE / "rpi4.yaml").read_text())
    with pytest.raises(InputError, match="unknown keys"):
        devices.parse_profile({**base, "turbo": True})
    no_src = {**base, "sources": {k: v for k, v in base["sources"].items() if k != "ram_bytes"}}
    with pytest.raises(InputError, match="without a source"):
        devices.parse_profile(no_src)
    with pytest.raises(InputError, match="missing keys"):
        devices.parse_profile({k: v for k, v in base.items() if k != "cores"})
    with pytest.raises(InputError):
        devices.parse_profile({**base, "runtime": "tensorrt"})
    with pytest.raises(InputError, match="unknown device"):
        devices.get("nokia3310")


def test_host_profile_uses_calibration_cache():
    h = devices.get("host")
    assert h.macs_per_s["int8"] == 4e10 and h.cores == 2


# --- verdicts ------------------------------------------------------------------------------


def test_int8_fits_mcu_with_real_arena(models):
    r = bench_run(models["int8"], device="stm32f746")
    assert set(r) >= CONTRACT_KEYS
    assert r["verdict"] == "fits" and r["reasons"] == []
    assert "arena_bytes" in r["measured"] and "latency_ms" not in r["measured"]
    assert r["arena_bytes"] == r["tflm"]["min_arena_bytes"]
    assert r["estimate"]["latency_ms"] > 0


def test_float_model_does_not_fit_int8_only_mcu(models):
    r = bench_run(models["float"], device="arduino_nano33_ble")
    assert r["verdict"] == "does not fit" and not r["fits"]["ops"]
    assert any("float32" in s for s in r["reasons"])


def test_flash_ram_and_latency_reasons(models, tmp_path):
    import yaml

    prof = yaml.safe_load((devices.HERE / "stm32f746.yaml").read_text())
    prof.update(name="tiny_mcu", ram_bytes=4096, flash_bytes=50_000)
    path = tmp_path / "tiny_mcu.yaml"
    path.write_text(yaml.safe_dump(prof))
    r = bench_run(models["int8"], device=str(path), max_latency_ms=1e-6)
    assert r["verdict"] == "does not fit"
    assert r["fits"] == {"flash": False, "ram": False, "latency": False, "ops": True}
    assert len(r["reasons"]) == 3


def test_host_measures_and_estimates(models):
    r = bench_run(models["int8"], device="host", runs=10)
    assert {"latency_ms", "init_ms", "first_inference_ms", "peak_rss_mb"} <= set(r["measured"])
    assert r["latency_ms"]["p50"] > 0 and r["estimate"]["latency_ms"] > 0
    assert r["verdict"] == "fits"


# --- CLI and robustness --------------------------------------------------------------------


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


@pytest.mark.parametrize(
    "name,code", [("truncated", 2), ("garbage", 2), ("text", 2), ("dynamic", 2), ("custom", 1)]
)
def test_cli_bad_models_one_line_error(models, name, code):
    r = _invoke(bench, [models[name], "--timeout", "30"])
    assert r.exit_code == code, r.output
    err = r.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ")
    assert _no_children()


def test_cli_missing_file(tmp_path):
    r = _invoke(bench, [tmp_path / "nope.tflite"])
    assert r.exit_code == 2 and "no such file" in r.output


def test_cli_json_fail_if_not_fit_and_report(models, tmp_path):
    r = _invoke(bench, [models["float"], "--device", "stm32h743", "--json"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert set(data) >= CONTRACT_KEYS and data["verdict"] == "does not fit"
    r = _invoke(bench, [models["float"], "--device", "stm32h743", "--fail-if-not-fit"])
    assert r.exit_code == 1
    rep = tmp_path / "rep"
    r = _invoke(bench, [models["int8"], models["float"], "--runs", "5", "--report", rep, "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 2
    text = (rep / "report.md").read_text()
    assert "int8.tflite" in text and "float.tflite" in text
    pngs = sorted(p.name for p in rep.glob("*.png"))
    assert any(p.endswith("_latency.png") for p in pngs) and any(
        p.endswith("_memory.png") for p in pngs
    )


def test_import_ondevice_result(models, tmp_path):
    out = tmp_path / "pi.json"
    subprocess.run([sys.executable, str(harness.ONDEVICE), str(models["int8"]), "--runs", "5",
                    "--device", "rpi4", "-o", str(out)], check=True, capture_output=True)  # fmt: skip
    r = _invoke(bench, [models["int8"], "--device", "rpi4", "--import", out, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["device"] == "rpi4" and "latency_ms" in data["measured"]
    assert data["latency_ms"]["p50"] == json.loads(out.read_text())["latency_ms"]["p50"]
    assert data["judged_latency"] == {"ms": data["latency_ms"]["p50"], "source": "measured p50"}


BENCHMARK_MODEL_LOG = """\
STARTING!
Num threads: [4]
Graph: [/data/local/tmp/mobilenet_v2.tflite]
Loaded model /data/local/tmp/mobilenet_v2.tflite
Initialized session in 21.23ms.
count=17 first=40569 curr=29212 min=28917 max=40569 avg=30180.4 std=2654

count=50 first=29347 curr=29154 min=28782 max=31247 avg=29339.8 std=441

Inference timings in us: Init: 21230, First inference: 40569, Warmup (avg): 30180.4, Inference (avg): 29339.8
Memory footprint delta from the start of the tool (MB): init=23.5 overall=31.1
"""


def test_parse_benchmark_model_output(tmp_path):
    r = harness.parse_benchmark_model(BENCHMARK_MODEL_LOG)
    assert r["runs"] == 50 and r["threads"] == 4 and r["model"] == "mobilenet_v2.tflite"
    assert r["latency_ms"]["mean"] == pytest.approx(29.3398)
    assert r["latency_ms"]["min"] == pytest.approx(28.782) and r["latency_ms"]["p50"] is None
    assert r["init_ms"] == pytest.approx(21.23) and r["first_inference_ms"] == pytest.approx(40.569)
    assert r["peak_rss_mb"] == pytest.approx(31.1)
    (tmp_path / "log.txt").write_text(BENCHMARK_MODEL_LOG)
    assert harness.load_result(tmp_path / "log.txt")["runs"] == 50
    with pytest.raises(InputError):
        harness.parse_benchmark_model("hello")


def test_devices_command():
    r = _invoke(devices_cmd, ["--json"])
    assert r.exit_code == 0
    names = {d["name"] for d in json.loads(r.stdout)}
    assert {"host", "stm32h743", "esp32s3", "pixel1"} <= names
    r = _invoke(devices_cmd, [])
    assert r.exit_code == 0 and "arduino_nano33_ble" in r.output


def test_import_without_model_judges_latency_only(tmp_path):
    log = tmp_path / "bm.txt"
    log.write_text(BENCHMARK_MODEL_LOG)
    r = _invoke(bench, ["--import", log, "--max-latency-ms", "20", "--json", "--fail-if-not-fit"])
    assert r.exit_code == 1, r.output  # 29.3 ms mean > 20 ms budget
    data = json.loads(r.stdout)
    assert data["verdict"] == "does not fit" and data["estimate"] is None
    assert data["fits"]["latency"] is False and "latency_ms" in data["measured"]
    r = _invoke(bench, [])
    assert r.exit_code == 2


def _bench_cli(*args) -> subprocess.CompletedProcess:
    """`mobilecv bench` in a fresh process (inheriting the environment and its host calibration)."""
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


# A benchmark_model run whose mean is 8 ms: it prints no percentiles, only the mean.
MEAN_8MS_LOG = BENCHMARK_MODEL_LOG.replace("avg=29339.8", "avg=8000.0")


def test_imported_mean_decides_the_latency_budget(models, tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(MEAN_8MS_LOG)
    args = [models["int8"], "--device", "pixel1", "--import", log, "--json"]
    out = _bench_cli(*args, "--max-latency-ms", 1)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["estimate"]["latency_ms"] < 1  # the estimate alone would say "fits"
    assert data["verdict"] == "does not fit" and data["fits"]["latency"] is False
    assert data["judged_latency"] == {"ms": pytest.approx(8.0), "source": "measured mean"}
    assert "latency: measured mean 8.00 ms exceeds the 1 ms budget" in data["reasons"]
    out = _bench_cli(*args, "--max-latency-ms", 10, "--fail-if-not-fit")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["verdict"] == "fits"
    # Without the model file the same measurement decides the same way.
    out = _bench_cli("--import", log, "--max-latency-ms", 1, "--json")
    data = json.loads(out.stdout)
    assert data["verdict"] == "does not fit"
    assert data["judged_latency"]["source"] == "measured mean"


def test_import_without_latency_is_unknown_not_fit(models, tmp_path):
    # A result with no latency at all, e.g. a bench JSON from an MCU profile re-imported.
    result = tmp_path / "mcu.json"
    result.write_text(json.dumps({"model": "m.tflite", "device": "stm32f746",
                                  "latency_ms": dict.fromkeys(("mean", "p50", "p90"))}))  # fmt: skip
    out = _bench_cli("--import", result, "--max-latency-ms", 5, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["verdict"] == "unknown" and data["fits"]["latency"] is None
    assert "latency_ms" not in data["measured"]
    assert any(r.startswith("latency: unknown") for r in data["reasons"])
    out = _bench_cli("--import", result, "--max-latency-ms", 5, "--fail-if-not-fit")
    assert out.returncode == 1, out.stderr  # unknown is not a fit
    assert "m.tflite on stm32f746: unknown" in out.stdout
    # With the model file there is an estimate, and the verdict says it decided.
    out = _bench_cli(models["int8"], "--device", "pixel1", "--import", result, "--max-latency-ms", 1e-6,
               "--json")  # fmt: skip
    data = json.loads(out.stdout)
    assert data["verdict"] == "does not fit" and "latency_ms" not in data["measured"]
    assert data["judged_latency"]["source"] == "estimated"
    assert any(r.startswith("latency: estimated") for r in data["reasons"])


def test_tflm_crash_decides_mcu_verdict(models, monkeypatch):
    monkeypatch.setattr(
        micro,
        "run",
        lambda *a, **k: {"ok": False, "error": "TFLM crashed with SIGABRT", "unresolved_ops": []},
    )
    r = bench_run(models["int8"], device="stm32h743")
    assert r["verdict"] == "does not fit" and r["fits"]["ops"] is False
    assert any("SIGABRT" in s for s in r["reasons"]) and "arena_bytes" not in r["measured"]


@pytest.fixture(scope="module")
def untrained_mobilenet_v1(tmp_path_factory):
    """What a new user benches first: a freshly built mobilenet_v1, int8 with image
    calibration. Its logits are nearly constant, so TFLM rejects its SOFTMAX scale."""
    import mobilecv
    from mobilecv.converters.tflite import convert

    model = mobilecv.build("mobilenet_v1", width=0.25, resolution=32, classes=10)
    result = convert(model, "int8", "fashion_mnist", samples=16, verify=False, progress=False)
    path = tmp_path_factory.mktemp("untrained") / "mobilenet_v1_int8.tflite"
    path.write_bytes(result.tflite)
    return path


def test_untrained_int8_model_gets_a_measured_arena_and_a_verdict(untrained_mobilenet_v1):
    g = tflite_graph.load(untrained_mobilenet_v1)
    softmax_in = [g.tensors[op.inputs[0]].scale[0] for op in g.ops if op.opcode == "SOFTMAX"]
    assert softmax_in and softmax_in[0] < micro.SOFTMAX_MIN_INPUT_SCALE  # the premise
    out = _bench_cli(untrained_mobilenet_v1, "--device", "stm32f746", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert "arena_bytes" in data["measured"] and data["arena_bytes"] > 0
    assert data["arena_bytes"] == data["tflm"]["min_arena_bytes"]
    assert data["tflm"]["softmax_untrained"]["input_scale"] == pytest.approx(softmax_in[0])
    # The ops are supported; the flash, RAM and latency verdicts decide, and they fit.
    assert data["fits"] == {"flash": True, "ram": True, "latency": True, "ops": True}
    assert data["verdict"] == "fits" and data["reasons"] == []
    note = " ".join(data["notes"])
    assert "every op is supported" in note and "untrained" in note and "trained model" in note
    # A budget it misses is the only reason it does not fit.
    out = _bench_cli(untrained_mobilenet_v1, "--device", "stm32f746", "--max-latency-ms", 1e-3,
                     "--json")  # fmt: skip
    data = json.loads(out.stdout)
    assert data["verdict"] == "does not fit" and data["fits"]["ops"] is True
    assert len(data["reasons"]) == 1 and data["reasons"][0].startswith("latency: estimated")


def test_untrained_softmax_copy_is_allocated_when_it_cannot_run(
    untrained_mobilenet_v1, monkeypatch
):
    # With 1000 flat logits this wheel's int8 softmax also aborts at invoke (seen on
    # keras MobileNetV2 and mobilenet_v1 at 1000 classes): the copy is then only allocated.
    ran = micro.run(untrained_mobilenet_v1)
    assert ran["ok"] and "by running it" in ran["note"]
    real, calls = micro._run_child, []

    def invoke_fails_on_the_copy(path, arena, find_min, timeout_s, invoke):
        calls.append((Path(path).name, invoke))
        if Path(path).name == "valid_softmax.tflite" and invoke:
            return {"ok": False, "error": "TFLM crashed with SIGABRT", "unresolved_ops": []}
        return real(path, arena, find_min, timeout_s, invoke)

    monkeypatch.setattr(micro, "_run_child", invoke_fails_on_the_copy)
    r = micro.run(untrained_mobilenet_v1)
    assert r["ok"] and "by allocating it only" in r["note"] and "SIGABRT" in r["note"]
    assert calls == [(untrained_mobilenet_v1.name, True), ("valid_softmax.tflite", True),
                     ("valid_softmax.tflite", False)]  # fmt: skip
    assert r["min_arena_bytes"] == ran["min_arena_bytes"]

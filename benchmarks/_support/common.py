"""What the benchmark scripts share: paths, logging, the machine block, their outputs.

Run a script as `python benchmarks/<name>.py`: its folder is then first on sys.path, so
`from _support import common` finds this file (a folder of its own: it is no benchmark and
writes no figures). Importing it quiets TensorFlow's C++ log (before
anything imports TensorFlow) and puts the repository root first on sys.path, so the
scripts use this checkout's mobilecv.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "out"  # where the scripts write by default
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT))

# The runtime versions that sliding_windows.py (and landmarks.py) record.
LITERT_PACKAGES = ("tensorflow", "tf_keras", "keras", "ai_edge_litert", "numpy")


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the result)."""
    print(msg, file=sys.stderr, flush=True)


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version, then each installed distribution's ("not installed" if absent)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine(
    packages: Iterable[str] = (), *, python_apart: bool = False, load_average: bool = False
) -> dict:
    """Where a result was measured: CPU model, core count, platform, versions, UTC date.

    python_apart: Python's version as its own key beside "versions" (not inside it).
    load_average: also the 1/5/15-minute load (other processes share the cores).
    """
    from mobilecv.bench.calibrate import _cpu_model

    versions = package_versions(packages)
    found = {"cpu": _cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()}
    if python_apart:
        found["python"] = versions.pop("python")
    found["versions"] = versions
    found["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if load_average:
        found["load_average_1_5_15_min"] = [round(v, 2) for v in os.getloadavg()]
    return found


def add_output_options(parser) -> None:
    """The options every benchmark shares: --json, --out, --no-readme and --render."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", default=str(OUT), help=f"output folder (default {OUT})")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not rewrite the README section"
    )
    parser.add_argument("--render", metavar="JSON", help="only re-print and re-write from a result")


def run_metadata(args, packages: Iterable[str], wall_start: float) -> dict:
    """What a result records of its run: the arguments (without the output options), the
    machine and the wall time since ``wall_start`` (time.perf_counter)."""
    return {
        "config": run_config(args, ("json", "out", "render", "no_readme")),
        "machine": machine(packages, load_average=True),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }


def run_config(args, omit: Iterable[str]) -> dict:
    """The run's arguments for its result, without those that only say where to write."""
    omit = set(omit)
    return {k: v for k, v in vars(args).items() if k not in omit}


def output_stem(name: str, quick: bool) -> str:
    """Output file stem: a --quick run writes beside the full result, never over it."""
    return f"{name}_quick" if quick else name


def write_result(
    out_dir: str | os.PathLike, name: str, result: dict, md: str | None = None
) -> Path:
    """Write `name`.json (and `name`.md if given) into `out_dir`, atomically; the JSON path."""
    from mobilecv.fileio import write_json, write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(out_dir / f"{name}.json", result, force=True)
    if md is not None:
        write_text(out_dir / f"{name}.md", md, force=True)
    return path


def start_run(args, name: str) -> tuple[float, Path, str]:
    """A run's start: its clock, the seed set, the output folder made, and the file stem."""
    from mobilecv.train import set_seed

    wall = time.perf_counter()
    set_seed(args.seed)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return wall, out_dir, output_stem(name, args.quick)


def publish(args, name: str, result: dict, md: str, readme: bool = True) -> None:
    """Write NAME[_quick].json and .md, and, for a full run that may, the README section."""
    quick = result["config"]["quick"]
    write_result(args.out, output_stem(name, quick), result, md)
    if readme and not (quick or args.no_readme):
        update_readme(name, md)


def publish_and_print(args, name: str, result: dict, md: str) -> int:
    """:func:`publish`, print the Markdown (or the JSON with --json), and the exit code:
    0 when every target passed, else 1."""
    publish(args, name, result, md)
    print(json.dumps(result, indent=2, default=str) if args.json else md)
    return 0 if all(t["pass"] for t in result["targets"]) else 1


def update_readme(section: str, md: str, readme: Path = README) -> bool:
    """Replace the README text between `<!-- section:begin -->` and `<!-- section:end -->`."""
    from mobilecv.fileio import write_text

    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        log(f"README markers not found in {readme}; section not written")
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text(readme, f"{head}{begin}\n{md}{end}{tail}", force=True)
    return True


def target_line(target: dict) -> str:
    """One checked target as the scripts print it: PASS/MISS, what, measured."""
    return f"{'PASS' if target['pass'] else 'MISS'}  {target['target']}: {target['measured']}"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, *, force: bool = True, **savefig) -> None:
    """Save a figure as PNG atomically, then close it."""
    from mobilecv.fileio import atomic_path

    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    pyplot().close(fig)


def qat_finetune(model, splits, *, epochs: int, batch_size: int, learning_rate: float, augment):
    """QAT of a trained float ``model`` through the compress pipeline (cosine schedule);
    the QAT model and {"seconds", "scheme"}."""
    from mobilecv.compress.pipeline import compress

    log(f"== QAT fine-tune of {model.name}, {epochs} epoch(s)")
    start = time.perf_counter()
    qat, report = compress(
        model,
        splits,
        qat=True,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        schedule="cosine",
        augment=augment,
    )
    return qat, {"seconds": round(time.perf_counter() - start, 1), "scheme": report.qat_scheme}


# ------------------------------------------------------------ converting and measuring


def to_tflite(model, quantize: str, calibration, path: Path) -> dict:
    """Convert and write ``path``; the conversion's summary."""
    from mobilecv.converters.tflite import convert

    result = convert(
        model, quantize, calibration=calibration, samples=len(calibration), progress=False
    )
    path.write_bytes(result.tflite)
    return {"bytes": result.size, "agreement": result.verification.agreement}


def device_figures(
    paths: list[Path], device_names: Iterable[str], runs: int, *, tflm: bool,
    repeats: list[int] | None = None,
) -> dict:  # fmt: skip
    """Host p50 on 1 thread (measured), each device's estimate and, when ``tflm``, the real
    TFLite Micro arena. Several paths are one pipeline, model i run ``repeats[i]`` times an
    image (a two-stage detector's head once per proposal): latencies and MACs add up."""
    import mobilecv.bench as bench
    from mobilecv.bench import devices, estimate, micro

    figures = {"bytes": 0, "macs": 0, "host_p50_ms": 0.0}
    figures["estimate_ms"] = dict.fromkeys(device_names, 0.0)
    figures["arena_bytes"] = 0 if tflm else None
    for path, times in zip(paths, repeats or [1] * len(paths), strict=True):
        graph = bench.load(path)
        figures["bytes"] += graph.model_bytes
        figures["macs"] += times * int(graph.macs)
        host = bench.run(path, "host", threads=1, runs=runs, warmup=5)
        figures["host_p50_ms"] += times * float(host["latency_ms"]["p50"])
        for name in device_names:
            ms = estimate.estimate(graph, devices.get(name)).latency_ms
            figures["estimate_ms"][name] += times * float(ms)
        if tflm:
            run = micro.run(path)
            if not run.get("ok"):
                raise SystemExit(f"error: TFLite Micro could not run {path}: {run.get('error')}")
            figures["arena_bytes"] = max(figures["arena_bytes"], run["min_arena_bytes"])
    return figures


def tflite_outputs(path: Path, x, names):
    from mobilecv.evaluate import TfliteModel

    return TfliteModel(path, threads=2).predict_outputs(x, names)


def training_summary(model, report) -> dict:
    return {
        "params": int(model.count_params()),
        "train_samples": report.train_samples,
        "seconds": report.seconds,
        "val_metrics": report.val_metrics,
        "history": report.history,
    }


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def shown_path(path: str | Path) -> Path:
    """A picture's path from the checkout's root; one a run in another checkout (or
    worktree) wrote keeps its path from that checkout's `benchmarks` folder."""
    path = Path(path).resolve()
    if path.is_relative_to(ROOT):
        return path.relative_to(ROOT)
    parts = path.parts
    if "benchmarks" in parts:
        return Path(*parts[len(parts) - 1 - parts[::-1].index("benchmarks") :])
    return path


# ------------------------------------------------------------------ tables


def text_table(rows: dict, columns, row_cells) -> list[str]:
    """Fixed-width text: ``columns`` (title, format spec) pairs, a rule, one line a row
    (``row_cells(name, row)`` gives its cells as text)."""
    head = "".join(format(title, spec) for title, spec in columns)
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        cells = row_cells(name, row)
        lines.append("".join(format(c, spec) for c, (_, spec) in zip(cells, columns, strict=True)))
    return lines


def markdown_table(rows: dict, columns, row_cells) -> list[str]:
    """The same rows as a Markdown table, the first column left-aligned."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |"]
    lines.append("|---|" + "---:|" * (len(columns) - 1))
    lines += ["| " + " | ".join(row_cells(name, row)) + " |" for name, row in rows.items()]
    return lines


def target_bullets(targets: list[dict]) -> list[str]:
    return [f"- {'PASS' if t['pass'] else 'MISS'} {t['target']}: {t['measured']}" for t in targets]

"""Markdown + PNG report for one or more bench results: a side-by-side table, the
latency histogram, each op's estimated share of the time, and memory over the ops."""

from __future__ import annotations

import os
from pathlib import Path

from mobilecv.fileio import atomic_path, write_text


def _fmt(v, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}{unit}"
    return f"{v}{unit}"


_FIT_WORDS = {True: "yes", False: "no", None: "unknown"}


def _kib(v) -> str:
    return "–" if v is None else f"{v / 1024:.1f} KiB"


def _save(fig, out: Path, name: str, force: bool) -> str:
    """Write `fig` to out/name as PNG (atomically), close it, return the name."""
    import matplotlib.pyplot as plt

    with atomic_path(out / name, force) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return name


def plots(result: dict, out: Path, stem: str, force: bool = False) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    samples = result.get("samples_ms") or []
    if samples:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(samples, bins=min(40, max(5, len(samples) // 3)), color="tab:blue")
        for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            v = result["latency_ms"].get(key)
            if v is not None:
                ax.axvline(v, color="k", linestyle=style, label=f"{key} {v:.3g} ms")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("runs")
        ax.set_title(f"{stem} on {result['device']} (measured)")
        ax.legend(fontsize=8)
        files.append(_save(fig, out, f"{stem}_latency.png", force))

    per_op = result.get("estimate_per_op") or []
    if per_op:
        total = sum(o["ms"] for o in per_op) or 1.0
        by_type: dict[str, float] = {}
        for o in per_op:
            by_type[o["opcode"]] = by_type.get(o["opcode"], 0.0) + o["ms"]
        items = sorted(by_type.items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(items) + 1))
        ax.barh([k for k, _ in items], [100 * v / total for _, v in items], color="tab:orange")
        ax.set_xlabel(f"share of estimated latency on {result['device']} (%)")
        files.append(_save(fig, out, f"{stem}_ops.png", force))

    live = result.get("live_bytes") or []
    if live:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(range(len(live)), [b / 1024 for b in live], marker=".", label="live activations")
        peak = result["estimate"]["peak_activation_bytes"] / 1024
        ax.axhline(peak, color="tab:red", linestyle="--", label=f"planned arena {peak:.1f} KiB")
        ax.set_xlabel("op index (execution order)")
        ax.set_ylabel("KiB")
        ax.legend(fontsize=8)
        files.append(_save(fig, out, f"{stem}_memory.png", force))
    return files


def markdown(results: list[dict], images: dict[int, list[str]] | None = None) -> str:
    images = images or {}
    lines = ["# mobilecv bench report", ""]
    lines += [
        "| model | device | verdict | p50 ms | p90 ms | p99 ms | mean ms | est. ms | init ms | "
        "peak RSS MB | model | arena | est. activations | est. flash | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r.get("latency_ms") or {}
        est = r.get("estimate") or {}
        lines.append(
            f"| {Path(r['model']).name} | {r['device']} | {r['verdict']} | {_fmt(lat.get('p50'))} | "
            f"{_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('mean'))} | "
            f"{_fmt(est.get('latency_ms'))} | "
            f"{_fmt(r.get('init_ms'))} | {_fmt(r.get('peak_rss_mb'))} | {_kib(r.get('model_bytes'))} | "
            f"{_kib(r.get('arena_bytes'))} | {_kib(est.get('peak_activation_bytes'))} | "
            f"{_kib(est.get('flash_bytes'))} | {', '.join(r.get('measured', []))} |"
        )
    lines.append("")
    lines.append("Figures not listed under *measured* are estimates from the device profile.")
    for i, r in enumerate(results):
        lines += ["", f"## {Path(r['model']).name} on {r['device']}: {r['verdict']}", ""]
        for reason in r.get("reasons", []):
            lines.append(f"- {reason}")
        if r.get("fits"):
            lines.append(
                "- fits: " + ", ".join(f"{k} {_FIT_WORDS[v]}" for k, v in r["fits"].items())
            )
        judged = r.get("judged_latency") or {}
        if judged.get("ms") is not None:
            lines.append(
                f"- latency judged by the {judged['source']} figure: {judged['ms']:.4g} ms"
            )
        for note in r.get("notes", []):
            lines.append(f"- note: {note}")
        per_op = r.get("estimate_per_op") or []
        if per_op:
            slow = sorted(per_op, key=lambda o: -o["ms"])[:5]
            lines += ["", "Slowest ops (estimated):", "", "| # | op | MACs | bytes | ms | bound |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for o in slow:
                lines.append(
                    f"| {o['index']} | {o['opcode']} | {o['macs']} | {o['bytes']} | {o['ms']:.4g} | {o['bound']} |"
                )
        for img in images.get(i, []):
            lines += ["", f"![{img}]({img})"]
    return "\n".join(lines) + "\n"


def write(results: list[dict], out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write report.md and its PNGs into out_dir; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, r in enumerate(results):
        stem = f"{i}_{Path(r['model']).stem}_{r['device']}"
        images[i] = plots(r, out, stem, force)
    path = out / "report.md"
    write_text(path, markdown(results, images), force)
    return path

"""Benchmark result writer: one Markdown table, one JSON file and one PNG per benchmark.

Rows are plain dicts (JSON-ready). The runtime benchmark's rows carry ``label``
(e.g. ``"executorch/int8"``), ``window_s``, ``p50_ms``, ``p90_ms``, ``size_bytes``,
``peak_rss_mb`` and optionally ``accuracy``; :func:`runtime_ratios` derives the ratios
that are meaningful inside one run on a shared machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge_ser.io import atomic_path, write_json_atomic, write_text_atomic

RATIO_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("executorch int8 / fp32", "executorch/int8", "executorch/fp32"),
    ("executorch fp32 / eager", "executorch/fp32", "eager/fp32"),
    ("executorch int8 / eager", "executorch/int8", "eager/fp32"),
    ("onnx int8 / fp32", "onnx/int8", "onnx/fp32"),
    ("onnx fp32 / eager", "onnx/fp32", "eager/fp32"),
    ("truncated / full FM (eager)", "eager/fp32", "eager-full/fp32"),
)
"""(name, numerator label, denominator label) of the reported ratios."""


def runtime_ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Latency (p50) and size ratios per window for every pair in :data:`RATIO_PAIRS` present in ``rows``."""
    by_key = {(r["label"], float(r["window_s"])): r for r in rows}
    windows = sorted({float(r["window_s"]) for r in rows})
    ratios = []
    for name, num, den in RATIO_PAIRS:
        for w in windows:
            a, b = by_key.get((num, w)), by_key.get((den, w))
            if not a or not b or not a.get("p50_ms") or not b.get("p50_ms"):
                continue
            size = (a["size_bytes"] / b["size_bytes"]) if a.get("size_bytes") and b.get("size_bytes") else None
            ratios.append({"ratio": name, "window_s": w, "latency_p50": a["p50_ms"] / b["p50_ms"], "size": size})
    return ratios


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[Mapping[str, Any]], ratios: Sequence[Mapping[str, Any]],
                   context: Mapping[str, Any]) -> str:
    lines = ["# Runtime benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += ["", "| artifact | window s | p50 ms | p90 ms | RTF | size MB | peak RSS MB | lowering s | delegated |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (float(r["window_s"]), r["label"])):
        size = r.get("size_bytes")
        lines.append(
            f"| {r['label']} | {r['window_s']:g} | {_fmt(r.get('p50_ms'), '.2f')} | {_fmt(r.get('p90_ms'), '.2f')} | "
            f"{_fmt(r.get('rtf'), '.4f')} | {_fmt(size / 1e6 if size else None, '.2f')} | "
            f"{_fmt(r.get('peak_rss_mb'), '.0f')} | {_fmt(r.get('lowering_s'), '.1f')} | "
            f"{_fmt(r.get('delegated_share'), '.3f')} |"
        )
    if ratios:
        lines += ["", "| ratio | window s | latency p50 | size |", "|---|---|---|---|"]
        lines += [f"| {q['ratio']} | {q['window_s']:g} | {q['latency_p50']:.3f} | {_fmt(q['size'], '.3f')} |"
                  for q in ratios]
    return "\n".join(lines) + "\n"


def latency_size_plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str) -> Path:
    """p50 latency (ms, log) vs size (MB, log), one marker per artifact kind, one point per window;
    the accuracy, where a row has one, is written next to its point."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    markers = "osD^v<>pP*Xh"
    fig, ax = plt.subplots(figsize=(7, 5))
    labels = sorted({r["label"] for r in rows})
    for i, label in enumerate(labels):
        pts = [r for r in rows if r["label"] == label and r.get("size_bytes") and r.get("p50_ms")]
        if not pts:
            continue
        ax.scatter([r["size_bytes"] / 1e6 for r in pts], [r["p50_ms"] for r in pts], marker=markers[i % len(markers)],
                   label=label, s=50)
        for r in pts:
            note = f"{r['window_s']:g}s" + (f", acc {r['accuracy']:.3f}" if r.get("accuracy") is not None else "")
            ax.annotate(note, (r["size_bytes"] / 1e6, r["p50_ms"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("p50 latency per window (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(*, rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, name: str,
                 context: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.json`` (rows, ratios, context) and ``<name>.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ratios = runtime_ratios(rows)
    paths = {
        "md": write_text_atomic(out / f"{name}.md", markdown_table(rows, ratios, context)),
        "json": write_json_atomic(out / f"{name}.json", {"context": dict(context), "rows": list(rows),
                                                         "ratios": ratios}),
    }
    plotted = [r for r in rows if r.get("p50_ms")]
    if plotted:
        paths["png"] = latency_size_plot(plotted, out / f"{name}.png", title=f"{name}: latency vs size")
    return paths

"""PNG plots for evaluation reports (matplotlib Agg; never opens a display).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly,
not pyplot, so no global backend or figure registry is touched. Every function writes
one PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edge_ser.io import atomic_path

_DIM_LABELS = {"arousal": "Activation", "valence": "Valence", "dominance": "Dominance"}


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def plot_confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[int]],
    *,
    classes: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (rows = reference, ``(C, C)`` counts) with counts annotated.

    Rows of classes absent from the references are left blank.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(support > 0, counts / np.where(support > 0, support, 1), np.nan)
    size = 1.0 + 0.65 * len(classes)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(share), vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of reference class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if support[i, 0] > 0:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    return _save(fig, path)


def plot_speaker_uar_histogram(
    per_speaker_uar: Mapping[str, Mapping[str, float]],
    *,
    path: str | os.PathLike,
    title: str = "Per-speaker UAR",
) -> Path:
    """Histogram of per-speaker UAR (in %) for each k (``{"1": {speaker: uar}, ...}``), 50/75 marked."""
    ks = list(per_speaker_uar)
    fig = Figure(figsize=(4.0 * max(len(ks), 1), 3.2))
    bins = np.linspace(0.0, 100.0, 21)
    for i, k in enumerate(ks):
        ax = fig.add_subplot(1, max(len(ks), 1), i + 1)
        values = 100.0 * np.asarray(list(per_speaker_uar[k].values()), dtype=np.float64)
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8, edgecolor="white")
        for x, style in ((50, "--"), (75, ":")):
            ax.axvline(x, color="tab:red", linestyle=style, label=f"{x}%")
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"speaker UAR@{k} (%)")
        ax.set_ylabel("speakers")
        ax.set_title(f"{title} (k={k}, {values.size} speakers)", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_ccc_scatter(
    pairs: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    ccc: Mapping[str, float | None],
    path: str | os.PathLike,
    title: str = "Dimensions",
) -> Path:
    """Predicted vs reference scatter, one panel per dimension (``{dim: {"ref": [...], "pred": [...]}}``)."""
    dims = list(pairs)
    fig = Figure(figsize=(3.4 * max(len(dims), 1), 3.4))
    for i, dim in enumerate(dims):
        ax = fig.add_subplot(1, max(len(dims), 1), i + 1)
        ref = np.asarray(pairs[dim]["ref"], dtype=np.float64)
        pred = np.asarray(pairs[dim]["pred"], dtype=np.float64)
        ax.scatter(ref, pred, s=6, alpha=0.5, color="tab:blue")
        if ref.size:
            lo = float(min(ref.min(), pred.min()))
            hi = float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8, linestyle="--")
        value = ccc.get(dim)
        label = "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
        ax.set_title(f"{_DIM_LABELS.get(dim, dim)}: CCC {label}", fontsize=9)
        ax.set_xlabel("reference")
        ax.set_ylabel("predicted")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_condition_bars(
    values: Mapping[str, Mapping[str, float | None]],
    *,
    path: str | os.PathLike,
    title: str = "Clean vs noise",
) -> Path:
    """Grouped bars: for each test set (outer key) the metrics in the inner mapping.

    ``{"clean": {"UAR@1": 0.41, "CCC A": 0.6, ...}, "snr5dB": {...}}``; missing or None
    values draw no bar. Values should share a scale (UAR and CCC are both in [0, 1]).
    """
    sets = list(values)
    metrics: list[str] = []
    for inner in values.values():
        metrics.extend(m for m in inner if m not in metrics)
    fig = Figure(figsize=(1.0 + 1.2 * max(len(metrics), 1) * max(len(sets), 1) / 2, 3.4))
    ax = fig.add_subplot()
    width = 0.8 / max(len(sets), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(sets):
        heights = [values[name].get(m) for m in metrics]
        heights = [np.nan if h is None else float(h) for h in heights]
        ax.bar(x + (i - (len(sets) - 1) / 2) * width, heights, width=width, label=name)
    ax.set_xticks(x, labels=metrics, rotation=30, ha="right")
    ax.set_ylim(min(0.0, np.nanmin([v for inner in values.values() for v in inner.values() if v is not None]
                                   or [0.0])), 1.0)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(
    *,
    bin_edges: Sequence[float],
    confidence: Sequence[float | None],
    accuracy: Sequence[float | None],
    count: Sequence[int],
    ece: float,
    path: str | os.PathLike,
    title: str = "Reliability",
) -> Path:
    """Reliability diagram: per-bin accuracy vs mean confidence, diagonal = perfect calibration."""
    edges = np.asarray(bin_edges, dtype=np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in accuracy], dtype=np.float64)
    conf = np.array([np.nan if c is None else c for c in confidence], dtype=np.float64)
    fig = Figure(figsize=(4.0, 4.0))
    ax = fig.add_subplot()
    ax.bar(centers, acc, width=np.diff(edges), edgecolor="white", color="tab:blue", alpha=0.8, label="accuracy")
    ax.plot(conf, acc, "o", color="tab:orange", markersize=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {ece:.3f}, n={int(np.sum(count))}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)

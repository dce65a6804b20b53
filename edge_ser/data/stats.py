"""Describe a prepared corpus: class, speaker, gender, split, fold and duration counts (+ a plot)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edge_ser.data.table import GENDERS, load_corpus
from edge_ser.io import atomic_path
from edge_ser.labels import CATEGORIES, DIMENSIONS

PLOT_FILE = "stats.png"
_PER_SPEAKER_BARS_MAX = 60  # beyond this many speakers, per-speaker bars are unreadable: use histograms


@dataclasses.dataclass(frozen=True)
class CorpusStats:
    """Counts of a prepared corpus. Durations in seconds; `hours` in hours."""

    corpus: str
    corpus_dir: str
    utterances: int
    speakers: int
    speakers_by_gender: dict[str, int]
    utterances_by_gender: dict[str, int]
    by_label: dict[str, int]
    by_source_label: dict[str, int]
    by_split: dict[str, int]
    folds: dict[str, dict[str, int]]
    hours: float
    duration_s: dict[str, float]
    utterances_per_speaker: dict[str, float]
    with_soft_targets: int
    with_votes: int
    with_dimensions: dict[str, int]
    plot_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        g = self.speakers_by_gender
        lines = [
            f"corpus {self.corpus} ({self.corpus_dir})",
            f"  {self.utterances} utterances, {self.hours:.2f} h, {self.speakers} speakers "
            f"({g['female']} female / {g['male']} male / {g['unknown']} unknown)",
            "  duration s: " + ", ".join(f"{k} {v:.2f}" for k, v in self.duration_s.items()),
            "  utterances per speaker: " + ", ".join(f"{k} {v:g}" for k, v in self.utterances_per_speaker.items()),
            "  labels: " + ", ".join(f"{k} {v}" for k, v in self.by_label.items()),
            "  source labels: " + ", ".join(f"{k} {v}" for k, v in self.by_source_label.items()),
            "  splits: " + ", ".join(f"{k} {v}" for k, v in self.by_split.items()),
            f"  soft targets: {self.with_soft_targets}, grader votes: {self.with_votes}, dimensions: "
            + ", ".join(f"{k} {v}" for k, v in self.with_dimensions.items()),
        ]
        for fold, info in self.folds.items():
            lines.append(f"  fold {fold}: {info['speakers']} speakers ({info['female']} F / {info['male']} M), "
                         f"{info['utterances']} utterances")
        if self.plot_path:
            lines.append(f"  plot: {self.plot_path}")
        return "\n".join(lines)


def _summary(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"min": float("nan"), "median": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"min": float(values.min()), "median": float(np.median(values)), "mean": float(values.mean()),
            "max": float(values.max())}


def corpus_stats(*, corpus_dir: Path, plot: bool) -> CorpusStats:
    """Counts for the prepared corpus in `corpus_dir`; with `plot`, also write ``stats.png`` there."""
    corpus = load_corpus(corpus_dir)
    table = corpus.table
    speakers = table.drop_duplicates("speaker")
    per_speaker = table.groupby("speaker").size()
    labels = table["label"].replace("", "(none)").value_counts()
    label_order = [c for c in CATEGORIES if c in labels.index] + [c for c in labels.index if c not in CATEGORIES]
    folds: dict[str, dict[str, int]] = {}
    for fold, group in sorted(table[table["fold"] >= 0].groupby("fold"), key=lambda item: item[0]):
        spk = group.drop_duplicates("speaker")
        folds[str(int(fold))] = {"speakers": int(len(spk)), "female": int((spk["gender"] == "female").sum()),
                                 "male": int((spk["gender"] == "male").sum()), "utterances": int(len(group))}
    durations = table["duration_s"].to_numpy(dtype=float)
    stats = CorpusStats(
        corpus=corpus.name,
        corpus_dir=os.fspath(corpus.root),
        utterances=int(len(table)),
        speakers=int(len(speakers)),
        speakers_by_gender={g: int((speakers["gender"] == g).sum()) for g in GENDERS},
        utterances_by_gender={g: int((table["gender"] == g).sum()) for g in GENDERS},
        by_label={k: int(labels[k]) for k in label_order},
        by_source_label={str(k): int(v) for k, v in
                         table["source_label"].replace("", "(none)").value_counts().sort_index().items()},
        by_split={k or "(none)": int(v) for k, v in table["split"].value_counts().sort_index().items()},
        folds=folds,
        hours=float(np.nansum(durations) / 3600.0),
        duration_s=_summary(durations),
        utterances_per_speaker=_summary(per_speaker.to_numpy(dtype=float)),
        with_soft_targets=int((~np.isnan(corpus.soft_targets()).all(axis=1)).sum()),
        with_votes=int((table["votes"] != "").sum()),
        with_dimensions={d: int(table[d].notna().sum()) for d in DIMENSIONS},
        plot_path=os.fspath(Path(corpus.root) / PLOT_FILE) if plot else None,
    )
    if plot:
        _plot(table, stats, Path(corpus.root) / PLOT_FILE)
    return stats


def _plot(table: pd.DataFrame, stats: CorpusStats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"female": "tab:red", "male": "tab:blue", "unknown": "tab:gray"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.bar(list(stats.by_label), list(stats.by_label.values()), color="tab:green")
    ax.set_title("utterances per class (consensus label)")
    ax.tick_params(axis="x", rotation=45)

    ax = axes[1]
    counts = table.groupby(["speaker", "gender"]).size().reset_index(name="n")
    if len(counts) <= _PER_SPEAKER_BARS_MAX:
        counts = counts.sort_values(["gender", "speaker"])
        ax.bar(range(len(counts)), counts["n"], color=[colours.get(g, "tab:gray") for g in counts["gender"]])
        ax.set_xticks(range(len(counts)), counts["speaker"], rotation=90, fontsize=6)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=colours[g], label=g) for g in GENDERS if (counts["gender"] == g).any()])
        ax.set_ylabel("utterances")
    else:
        for gender in GENDERS:
            values = counts.loc[counts["gender"] == gender, "n"]
            if len(values):
                ax.hist(values, bins=30, alpha=0.6, color=colours[gender], label=gender)
        ax.set_xlabel("utterances per speaker")
        ax.set_ylabel("speakers")
        ax.legend()
    ax.set_title("utterances per speaker, by gender")

    ax = axes[2]
    durations = table["duration_s"].to_numpy(dtype=float)
    ax.hist(durations[np.isfinite(durations)], bins=40, color="tab:purple")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("utterances")
    ax.set_title(f"durations ({stats.hours:.2f} h total)")
    fig.suptitle(f"{stats.corpus}: {stats.utterances} utterances, {stats.speakers} speakers")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

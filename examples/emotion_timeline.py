"""Emotion timeline of a long recording: one prediction per window, plotted and tabulated.

    python examples/emotion_timeline.py ARTIFACT_DIR AUDIO_FILE --hop 1.0 --out timeline.png

Windows of the artifact's fixed length (``window_s`` in its manifest, 3 s by default)
start every ``--hop`` seconds; the last one is aligned to the end of the recording.
Writes a PNG (stacked class probabilities over time above the arousal/valence/dominance
curves) and a CSV next to it (``timeline.csv`` for ``--out timeline.png``) with one row
per window: start_s, end_s, label, the 9 class probabilities in manifest order, arousal,
valence, dominance.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_ser.audio import load_audio  # noqa: E402
from edge_ser.errors import EdgeSerError  # noqa: E402
from edge_ser.io import atomic_path, write_text_atomic  # noqa: E402
from edge_ser.runtime import TimelinePoint, load  # noqa: E402


def timeline_csv(points: list[TimelinePoint], *, labels: tuple[str, ...], dimensions: tuple[str, ...]) -> str:
    """CSV text: one row per window; times in seconds, probabilities in manifest label order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["start_s", "end_s", "label", *labels, *dimensions])
    for point in points:
        p = point.prediction
        writer.writerow([f"{point.start_s:.3f}", f"{point.end_s:.3f}", p.label,
                         *(f"{p.probabilities[name]:.6f}" for name in labels),
                         f"{p.arousal:.6f}", f"{p.valence:.6f}", f"{p.dominance:.6f}"])
    return buffer.getvalue()


def plot_timeline(points: list[TimelinePoint], *, labels: tuple[str, ...], out: Path, title: str) -> None:
    """Stacked class probabilities (top) and A/V/D (bottom) at each window's centre time (s)."""
    centres = np.array([(p.start_s + p.end_s) / 2 for p in points])
    probs = np.array([[p.prediction.probabilities[name] for name in labels] for p in points])  # (W, 9)
    avd = np.array([[p.prediction.arousal, p.prediction.valence, p.prediction.dominance] for p in points])
    fig, (ax_p, ax_d) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=(2, 1))
    colours = plt.get_cmap("tab10").colors
    ax_p.stackplot(centres, probs.T, labels=labels, colors=colours[: len(labels)], step="mid")
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("class probability")
    ax_p.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax_p.set_title(title)
    for j, name in enumerate(("arousal", "valence", "dominance")):
        ax_d.plot(centres, avd[:, j], marker="o", markersize=3, label=name)
    ax_d.axhline(0.5, color="grey", linewidth=0.5)  # middle of the graders' scale
    ax_d.set_ylabel("score [0, 1]")
    ax_d.set_xlabel("time (s, window centre)")
    ax_d.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact folder written by `edge-ser convert`")
    parser.add_argument("audio", help="recording to analyse (any length; wav, flac, ...)")
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between window starts (default 1.0)")
    parser.add_argument("--out", type=Path, default=Path("timeline.png"), help="PNG to write; the CSV goes next to it")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    args = parser.parse_args(argv)

    try:
        model = load(args.artifact, threads=args.threads)
        window_s = model.manifest.window_s
        if not 0 < args.hop <= window_s:
            # A hop longer than the window would leave audio between windows unanalysed.
            print(f"error: --hop {args.hop}; expected 0 < hop <= the artifact's window ({window_s:g} s).",
                  file=sys.stderr)
            return 2
        clip = load_audio(args.audio, target_sr=model.sample_rate)
        points = model.timeline(clip, model.sample_rate, hop_s=args.hop)
    except EdgeSerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    labels, dimensions = model.manifest.labels, model.manifest.dimensions
    csv_path = args.out.with_suffix(".csv")
    write_text_atomic(csv_path, timeline_csv(points, labels=labels, dimensions=dimensions))
    plot_timeline(points, labels=labels, out=args.out,
                  title=f"{Path(args.audio).name}: {len(clip) / model.sample_rate:.1f} s, "
                        f"{len(points)} windows of {window_s:g} s every {args.hop:g} s")
    for point in points:
        p = point.prediction
        print(f"{point.start_s:7.2f}-{point.end_s:7.2f} s  {p.label:<9s} {p.probabilities[p.label]:.2f}  "
              f"A {p.arousal:.2f} V {p.valence:.2f} D {p.dominance:.2f}")
    print(f"wrote {args.out} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

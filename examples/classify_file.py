"""Classify one audio file with an edge-ser artifact.

    python examples/classify_file.py ARTIFACT_DIR AUDIO_FILE [--top 3] [--threads 2]

ARTIFACT_DIR is a folder written by `edge-ser convert` (manifest.json + model.pte /
model.onnx / model.mlpackage). AUDIO_FILE is anything libsndfile reads (wav, flac, ogg);
it is resampled to the artifact's rate and downmixed to mono. Clips longer than the
model's window are cut into windows whose results are averaged; see
`edge_ser.runtime.EmotionModel.predict`.
"""

from __future__ import annotations

import argparse
import sys

from edge_ser.errors import EdgeSerError
from edge_ser.runtime import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact folder written by `edge-ser convert`")
    parser.add_argument("audio", help="audio file to classify")
    parser.add_argument("--top", type=int, default=3, help="how many emotions to print (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    args = parser.parse_args(argv)

    try:
        model = load(args.artifact, threads=args.threads)
        prediction = model.predict_file(args.audio)
    except (EdgeSerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    manifest = model.manifest
    print(f"{args.audio}: {prediction.windows} window(s) of {manifest.window_s:g} s, "
          f"{manifest.target}/{manifest.precision}")
    for rank, (label, probability) in enumerate(prediction.top_k(args.top), start=1):
        print(f"  {rank}. {label:<9s} {probability:.3f}")
    # A/V/D are on the [0, 1] scale: 0.5 is the middle of the graders' 1..7 scale.
    print(f"  arousal {prediction.arousal:.3f}  valence {prediction.valence:.3f}  "
          f"dominance {prediction.dominance:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

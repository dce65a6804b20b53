"""A live emotion timeline: read an audio file the way a microphone delivers it and print one
estimate per hop as it arrives.

    python examples/live_stream.py ARTIFACT_DIR AUDIO_FILE [--chunk 0.1] [--realtime] [--segment 10]

ARTIFACT_DIR is a *streaming* artifact (`edge-ser convert --run R --target executorch
--stream-hop 1.0 --out A`). The file is read in chunks of ``--chunk`` seconds at its own rate
(resampled as it streams); with ``--realtime`` the script waits between chunks as a live capture
would, so the printed latency is what an app sees. Each line is the estimate after one hop, pooled
over everything since the segment started (the stream's start, or every ``--segment`` seconds).
"""

from __future__ import annotations

import argparse
import sys
import time

import soundfile as sf

from edge_ser.errors import EdgeSerError
from edge_ser.runtime import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="streaming artifact folder (edge-ser convert ... --stream-hop S)")
    parser.add_argument("audio", help="audio file to stream")
    parser.add_argument("--chunk", type=float, default=0.1, help="seconds of audio per chunk (default 0.1)")
    parser.add_argument("--realtime", action="store_true", help="wait between chunks as a live capture would")
    parser.add_argument("--segment", type=float, default=None,
                        help="restart the estimate every SEGMENT seconds (a whole number of hops)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    args = parser.parse_args(argv)
    if not args.chunk > 0:
        print(f"error: --chunk {args.chunk}; expected a positive number of seconds such as 0.1", file=sys.stderr)
        return 2

    try:
        model = load(args.artifact, threads=args.threads)
        audio = sf.SoundFile(args.audio)
    except (EdgeSerError, FileNotFoundError, RuntimeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with audio:
        try:
            stream = model.stream(sample_rate=audio.samplerate, segment_s=args.segment)
        except (EdgeSerError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.audio}: hops of {stream.hop_s:g} s, {model.manifest.target}/{model.manifest.precision}")
        print(f"{'hop':>13s}  {'since':>6s}  {'label':9s} {'p':>5s}  {'A':>5s} {'V':>5s} {'D':>5s}  compute")
        block = max(1, int(round(args.chunk * audio.samplerate)))
        started = time.perf_counter()
        chunks = audio.blocks(blocksize=block, dtype="float32", always_2d=True)
        for i, chunk in enumerate((*chunks, None)):
            if args.realtime:  # the chunk is "captured" only once its last sample has been spoken
                time.sleep(max(0.0, started + (i + 1) * args.chunk - time.perf_counter()))
            tick = time.perf_counter()
            try:
                points = stream.flush() if chunk is None else stream.push(chunk)
            except EdgeSerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            compute_ms = (time.perf_counter() - tick) * 1e3
            for point in points:
                p = point.prediction
                label, prob = p.top_k(1)[0]
                print(f"{point.start_s:6.2f}-{point.end_s:6.2f}  {point.segment_start_s:6.2f}  {label:9s} {prob:5.2f}  "
                      f"{p.arousal:5.2f} {p.valence:5.2f} {p.dominance:5.2f}  {compute_ms:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming benchmark: per-hop latency and real-time factor of a streaming artifact against
re-running the windowed artifact once per hop, and how close the streamed features are to the
whole-clip features the head was trained on.

    python benchmarks/bench_streaming.py --model whisper-base --hops 0.5,1.0 --contexts 3.0,2.0
    python benchmarks/bench_streaming.py --model tiny-whisper --head tiny      # smoke run, seconds

For every target (ExecuTorch, ONNX; fp32) it converts the windowed artifact (``--window-s``, the
baseline: one full window per hop) and one streaming artifact per (context window, hop)
(``convert(..., hop_s=...)``, parity-gated: streamed == offline over the same samples), loads them
with the runtime and times one call each (threads pinned, warm-up, p50/p90 of ``--runs``). The
real-time factor is latency / hop (below 1 keeps up with live audio).

Fidelity (eager PyTorch, the foundation model only): each clip is streamed from silence (the
stream's start) and the frames that feed the head are compared with the foundation model run on
the whole clip (what feature extraction caches for training): cosine per frame, mean and 5th
percentile. ``--clips DIR`` takes audio files (e.g. RAVDESS); default: generated speech-like audio.

The head is random (latency does not depend on its weights). Writes
``benchmarks/results/streaming.json`` and prints a Markdown table. The machine may be shared:
compare numbers from one run only, and say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_ser.labels import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]


def speechlike(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * rng.uniform(90, 260) * (t + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)))
    return (rng.uniform(0.1, 0.5) * tone * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3)}


def time_calls(call, *, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def build_fused(model_name: str, layer: int | None, head_kind: str, window_s: float):
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    random_init = model_name.startswith("tiny-")
    fm = load_foundation_model(model_name, random_init=random_init, seed=0)
    layer = layer or max(1, fm.spec.n_layers // 2)
    torch.manual_seed(0)
    if head_kind == "paper":
        head = TCGRU(fm.spec.hidden_size)
    else:
        head = TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1)
    return fm, layer, build_fused_model(feature_model=fm, layer=layer, head=head.eval(), window_s=window_s)


def load_clips(folder: str | None, n: int) -> list[np.ndarray]:
    if folder is None:
        return [speechlike(100 + i, 3.5) for i in range(n)]
    from edge_ser.audio import load_audio

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    step = max(1, len(files) // n)
    return [load_audio(p, target_sr=SAMPLE_RATE) for p in files[::step][:n]]


def feature_fidelity(fused, whole_front, *, hop_s: float, clips: list[np.ndarray]) -> dict[str, float]:
    """Cosine between the frames a stream feeds the head and the whole-clip frames (same index)."""
    from edge_ser.converters.streaming import stream_geometry

    hop = int(round(hop_s * SAMPLE_RATE))
    g = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop)
    per_frame = []
    with torch.no_grad():
        for clip in clips:
            n_hops = len(clip) // hop
            if n_hops < 1:
                continue
            wave = torch.from_numpy(clip[:n_hops * hop])
            padded = torch.cat([torch.zeros(g.context_samples), wave])
            streamed = torch.cat([fused.front(padded[k * hop:k * hop + g.window_samples].reshape(1, -1))[:, -g.hop_frames:]
                                  for k in range(n_hops)], dim=1)[0]
            whole = whole_front(wave.reshape(1, -1))[0]  # the FM on the whole clip, as feature extraction runs it
            n = min(len(streamed), len(whole))
            per_frame.append(torch.nn.functional.cosine_similarity(streamed[:n], whole[:n], dim=-1).numpy())
    values = np.concatenate(per_frame)
    return {"mean_cosine": round(float(values.mean()), 5), "p05_cosine": round(float(np.percentile(values, 5)), 5),
            "frames": int(values.size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--layer", type=int, default=None, help="cut after this block (default: the middle one)")
    parser.add_argument("--head", choices=("paper", "tiny"), default=None)
    parser.add_argument("--window-s", type=float, default=3.0, help="the windowed baseline's window")
    parser.add_argument("--contexts", default=None, help="streaming context windows in s (default: --window-s)")
    parser.add_argument("--hops", default="0.5,1.0")
    parser.add_argument("--targets", default="executorch,onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clips", default=None, help="folder of audio files for the fidelity check")
    parser.add_argument("--n-clips", type=int, default=24)
    parser.add_argument("--skip-fidelity", action="store_true", help="latency only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "streaming.json"))
    args = parser.parse_args(argv)

    from edge_ser.converters.pipeline import convert
    from edge_ser.cpu_features import cpu_features
    from edge_ser.io import write_json_atomic
    from edge_ser.runtime import load

    torch.set_num_threads(args.threads)
    head_kind = args.head or ("tiny" if args.model.startswith("tiny-") else "paper")
    hops = [float(h) for h in args.hops.split(",")]
    contexts = [float(c) for c in (args.contexts or str(args.window_s)).split(",")]
    targets = args.targets.split(",")
    clips = load_clips(args.clips, args.n_clips)
    rows, fidelity = [], []
    work = Path(tempfile.mkdtemp(prefix="edge-ser-bench-stream-"))
    fm, layer, baseline_fused = build_fused(args.model, args.layer, head_kind, args.window_s)
    whole_front = fm.truncated(layer).eval()
    validation = [speechlike(s, args.window_s) for s in (1, 2)]
    source = {**baseline_fused.source, "run": "bench"}
    for context in [] if args.skip_fidelity else contexts:
        fused = baseline_fused if context == args.window_s else build_fused(args.model, layer, head_kind, context)[2]
        for hop_s in hops:
            fidelity.append({"context_s": context, "hop_s": hop_s,
                             **feature_fidelity(fused, whole_front, hop_s=hop_s, clips=clips)})
            print(f"fidelity context {context:g} s hop {hop_s:g} s: {fidelity[-1]}", flush=True)
    for target in targets:
        start = time.perf_counter()
        windowed_dir = work / f"{target}-window"
        convert(fused=baseline_fused, target=target, precision="fp32", out=windowed_dir, calibration_waveforms=[],
                validation_waveforms=validation, source_info=source)
        windowed = load(windowed_dir, threads=args.threads)
        window = speechlike(7, args.window_s)
        base = percentiles(time_calls(lambda: windowed.run_window(window), runs=args.runs, warmup=args.warmup))
        print(f"{target} windowed {args.window_s:g} s: {base} (converted in {time.perf_counter() - start:.0f} s)",
              flush=True)
        del windowed
        for context in contexts:
            fused = (baseline_fused if context == args.window_s
                     else build_fused(args.model, layer, head_kind, context)[2])
            for hop_s in hops:
                start = time.perf_counter()
                out = work / f"{target}-stream-{context:g}-{hop_s:g}"
                result = convert(fused=fused, target=target, precision="fp32", out=out, calibration_waveforms=[],
                                 validation_waveforms=[speechlike(s, context) for s in (1, 2)],
                                 source_info={**fused.source, "run": "bench"}, hop_s=hop_s)
                model = load(out, threads=args.threads)
                hop = model.manifest.hop_samples
                state = [np.zeros(st["shape"], np.float32) for st in model.manifest.streaming["state"]]
                audio = speechlike(8, 4 * args.window_s)
                for k in range(3):  # a mid-stream state
                    state = model.run_stream_hop(audio[k * hop:(k + 1) * hop], state)[3:]
                chunk = audio[3 * hop:4 * hop]
                lat = percentiles(time_calls(lambda: model.run_stream_hop(chunk, state), runs=args.runs,
                                             warmup=args.warmup))
                row = {"target": target, "precision": "fp32", "context_s": context, "hop_s": hop_s, **lat,
                       "rtf": round(lat["p50_ms"] / 1e3 / hop_s, 4),
                       "windowed_p50_ms": base["p50_ms"], "ratio_vs_windowed": round(lat["p50_ms"] / base["p50_ms"], 3),
                       "windowed_rtf_per_hop": round(base["p50_ms"] / 1e3 / hop_s, 4),
                       "parity_max_abs_error_of_scale": result.parity["outputs"] and max(
                           o["max_rel_of_scale"] for o in result.parity["outputs"]),
                       "parity_passed": result.parity["passed"], "convert_s": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del model
    report = {"model": args.model, "layer": layer, "head": head_kind, "threads": args.threads, "runs": args.runs,
              "window_s": args.window_s, "cpu": cpu_features().to_dict().get("model_name", platform.processor()),
              "torch": torch.__version__, "rows": rows, "fidelity": fidelity,
              "note": "shared machine; compare ratios within this run"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out), report)
    print(f"\n{args.model} layer {layer}, {head_kind} head, {args.threads} threads, CPU {report['cpu']}")
    print("| target | context s | hop s | p50 ms | p90 ms | RTF | windowed p50 ms | stream/windowed | parity max err/scale |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['context_s']:g} | {r['hop_s']:g} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{r['rtf']:.3f} | {r['windowed_p50_ms']:.1f} | {r['ratio_vs_windowed']:.2f} | "
              f"{r['parity_max_abs_error_of_scale']:.1e} |")
    print("\n| context s | hop s | mean cosine (streamed vs whole-clip frames) | 5th pct | frames |")
    print("|---|---|---|---|---|")
    for f in fidelity:
        print(f"| {f['context_s']:g} | {f['hop_s']:g} | {f['mean_cosine']:.4f} | {f['p05_cosine']:.4f} | {f['frames']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming benchmark: per-hop latency and real-time factor of streaming artifacts (foundation model
per hop in ``window`` and ``cached`` mode, fp32 and int8) against re-running the windowed artifact
once per hop, and how close the streamed features are to the whole-clip features the head was trained on.

    python benchmarks/bench_streaming.py --model whisper-base --layer 1 --hops 0.5,1.0 --contexts 3.0,2.0 \
        --targets executorch --precisions fp32,int8 --fm-modes window,cached --clips "$EDGE_SER_RAVDESS"
    python benchmarks/bench_streaming.py --model tiny-whisper --head tiny      # smoke run

For every target and precision it converts the windowed artifact (``--window-s``, the baseline: one
full window per hop) and one streaming artifact per (FM mode, context window, hop)
(``convert(..., hop_s=..., fm_mode=...)``, parity-gated: streamed == offline over the same samples).
All artifacts are loaded first and then timed **interleaved** (one call of each in turn, ``--runs``
rounds after ``--warmup``), so load drift on a shared machine hits every row alike; p50/p90 per
artifact, threads pinned. The real-time factor is latency / hop (below 1 keeps up with live audio);
``stream/windowed`` divides by the windowed artifact of the same target and precision.

Fidelity (eager PyTorch, the foundation model only): each clip is streamed from silence (the
stream's start, one segment) and the frames that feed the head are compared with the foundation
model run on the whole clip (what feature extraction caches for training): cosine per frame, mean
and 5th percentile, per FM mode. ``--clips DIR`` takes audio files (e.g. RAVDESS; they also give the
int8 calibration and the validation audio); default: generated speech-like audio.

The head is random (latency does not depend on its weights). Writes
``benchmarks/results/streaming.json`` and prints Markdown tables. The machine may be shared:
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


def load_clips(folder: str | None, n: int, *, offset: float = 0.0) -> list[np.ndarray]:
    """``n`` clips spread evenly over the sorted files of ``folder`` (every ``len / n``-th, starting
    ``offset`` of a stride in: offset 0.5 picks files between those of offset 0), or generated audio."""
    if folder is None:
        return [speechlike(100 + i + int(1000 * offset), 3.5) for i in range(n)]
    from edge_ser.audio import load_audio

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    step = max(1, len(files) // n)
    return [load_audio(p, target_sr=SAMPLE_RATE) for p in files[int(offset * step)::step][:n]]


def feature_fidelity(fused, whole_front, *, hop_s: float, clips: list[np.ndarray],
                     fm_mode: str = "window") -> dict[str, float]:
    """Cosine between the frames a stream feeds the head and the whole-clip frames (same index)."""
    from edge_ser.converters.stream_fm import FRONT_CONTEXT_SAMPLES
    from edge_ser.converters.streaming import build_streaming_model, stream_geometry

    hop = int(round(hop_s * SAMPLE_RATE))
    g = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop)
    cached = build_streaming_model(fused, hop_s=hop_s, fm_mode="cached").front if fm_mode == "cached" else None
    per_frame = []
    with torch.no_grad():
        for clip in clips:
            n_hops = len(clip) // hop
            if cached is not None:
                n_hops = min(n_hops, cached.max_segment_frames // g.hop_frames)  # one segment
            if n_hops < 1:
                continue
            wave = torch.from_numpy(clip[:n_hops * hop])
            if cached is None:
                padded = torch.cat([torch.zeros(g.context_samples), wave])
                frames = [fused.front(padded[k * hop:k * hop + g.window_samples].reshape(1, -1))[:, -g.hop_frames:]
                          for k in range(n_hops)]
            else:
                state = [torch.zeros(shape) for shape in cached.state_shapes().values()]
                assert state[0].shape[1] == FRONT_CONTEXT_SAMPLES
                frames = []
                for k in range(n_hops):
                    features, *state = cached(wave[k * hop:(k + 1) * hop].reshape(1, -1), *state)
                    frames.append(features)
            streamed = torch.cat(frames, dim=1)[0]
            whole = whole_front(wave.reshape(1, -1))[0]  # the FM on the whole clip, as feature extraction runs it
            n = min(len(streamed), len(whole))
            per_frame.append(torch.nn.functional.cosine_similarity(streamed[:n], whole[:n], dim=-1).numpy())
    values = np.concatenate(per_frame)
    return {"mean_cosine": round(float(values.mean()), 5), "p05_cosine": round(float(np.percentile(values, 5)), 5),
            "frames": int(values.size)}


def time_interleaved(calls: dict[str, object], *, runs: int, warmup: int) -> dict[str, list[float]]:
    """``runs`` rounds of one timed call of every entry in turn (after ``warmup`` rounds): ms per call."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--layer", type=int, default=None, help="cut after this block (default: the middle one)")
    parser.add_argument("--head", choices=("paper", "tiny"), default=None)
    parser.add_argument("--window-s", type=float, default=3.0, help="the windowed baseline's window")
    parser.add_argument("--contexts", default=None, help="streaming context windows in s (default: --window-s)")
    parser.add_argument("--hops", default="0.5,1.0")
    parser.add_argument("--targets", default="executorch,onnx")
    parser.add_argument("--precisions", default="fp32", help="e.g. fp32,int8")
    parser.add_argument("--fm-modes", default="window,cached", help="streaming FM modes: window, cached")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clips", default=None, help="folder of audio files for the fidelity check")
    parser.add_argument("--n-clips", type=int, default=24)
    parser.add_argument("--calibration-clips", type=int, default=8, help="int8 calibration utterances")
    parser.add_argument("--skip-fidelity", action="store_true", help="latency only")
    parser.add_argument("--skip-latency", action="store_true", help="fidelity only")
    parser.add_argument("--keep", default=None, help="write the artifacts into this folder (kept) instead of a "
                                                     "temporary one")
    parser.add_argument("--time-only", default=None, help="convert nothing: time again the artifacts a --keep run "
                                                          "left in this folder")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "streaming.json"))
    args = parser.parse_args(argv)

    from edge_ser.converters.fused import fit_to_window
    from edge_ser.converters.pipeline import convert
    from edge_ser.cpu_features import cpu_features
    from edge_ser.io import write_json_atomic
    from edge_ser.runtime import load

    torch.set_num_threads(args.threads)
    head_kind = args.head or ("tiny" if args.model.startswith("tiny-") else "paper")
    hops = [float(h) for h in args.hops.split(",")]
    contexts = [float(c) for c in (args.contexts or str(args.window_s)).split(",")]
    targets, precisions = args.targets.split(","), args.precisions.split(",")
    fm_modes = args.fm_modes.split(",")
    clips = load_clips(args.clips, args.n_clips)
    # Calibration and validation audio, spread over the folder half a stride off the fidelity clips
    # (the two sets may share a file; fidelity measures the eager FM, not the artifacts).
    extra = load_clips(args.clips, args.calibration_clips + 2, offset=0.5)
    calibration_clips, validation_clips = extra[:args.calibration_clips], extra[args.calibration_clips:][:2]
    fidelity = []
    work = Path(args.keep or args.time_only or tempfile.mkdtemp(prefix="edge-ser-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.time_only:
        args.skip_fidelity = args.skip_latency = True  # only the timing loop below runs
    fm, layer, baseline_fused = build_fused(args.model, args.layer, head_kind, args.window_s)
    fused_by_context = {c: baseline_fused if c == args.window_s else build_fused(args.model, layer, head_kind, c)[2]
                        for c in contexts}
    whole_front = fm.truncated(layer).eval()
    for context in [] if args.skip_fidelity else contexts:
        for fm_mode in fm_modes:
            for hop_s in hops:
                fidelity.append({"fm_mode": fm_mode, "context_s": context, "hop_s": hop_s,
                                 **feature_fidelity(fused_by_context[context], whole_front, hop_s=hop_s, clips=clips,
                                                    fm_mode=fm_mode)})
                print(f"fidelity: {fidelity[-1]}", flush=True)

    def fitted(waves, window_samples):
        return [fit_to_window(w, window_samples) for w in waves]

    artifacts: dict[str, dict] = {}
    for target in [] if args.skip_latency else targets:
        for precision in precisions:
            start = time.perf_counter()
            out = work / f"{target}-{precision}-window"
            calibration = fitted(calibration_clips, baseline_fused.window_samples) if precision == "int8" else []
            result = convert(fused=baseline_fused, target=target, precision=precision, out=out,
                             calibration_waveforms=calibration,
                             validation_waveforms=fitted(validation_clips, baseline_fused.window_samples),
                             source_info={**baseline_fused.source, "run": "bench"})
            artifacts[f"{target}/{precision}/windowed"] = {
                "target": target, "precision": precision, "kind": "windowed", "context_s": args.window_s,
                "dir": out, "convert_s": round(time.perf_counter() - start, 1), "parity": result.parity,
                "size_mb": round(result.size_bytes / 1e6, 2)}
            print(f"converted {target}/{precision} windowed in {time.perf_counter() - start:.0f} s", flush=True)
            for fm_mode in fm_modes:
                for context in contexts:
                    fused = fused_by_context[context]
                    for hop_s in hops:
                        start = time.perf_counter()
                        out = work / f"{target}-{precision}-{fm_mode}-{context:g}-{hop_s:g}"
                        calibration = fitted(calibration_clips, fused.window_samples) if precision == "int8" else []
                        result = convert(fused=fused, target=target, precision=precision, out=out,
                                         calibration_waveforms=calibration,
                                         validation_waveforms=fitted(validation_clips, fused.window_samples),
                                         source_info={**fused.source, "run": "bench"}, hop_s=hop_s, fm_mode=fm_mode)
                        artifacts[f"{target}/{precision}/{fm_mode}/{context:g}/{hop_s:g}"] = {
                            "target": target, "precision": precision, "kind": "stream", "fm_mode": fm_mode,
                            "context_s": context, "hop_s": hop_s, "dir": out,
                            "convert_s": round(time.perf_counter() - start, 1), "parity": result.parity,
                            "size_mb": round(result.size_bytes / 1e6, 2)}
                        print(f"converted {target}/{precision} {fm_mode} {context:g}/{hop_s:g} in "
                              f"{time.perf_counter() - start:.0f} s, parity passed {result.parity['passed']}",
                              flush=True)

    if args.time_only:
        artifacts = kept_artifacts(work)
    calls, models = {}, []
    audio = speechlike(8, 4 * args.window_s)
    for name, item in artifacts.items():
        model = load(item["dir"], threads=args.threads)
        models.append(model)
        if item["kind"] == "windowed":
            window = speechlike(7, model.manifest.window_s)  # the artifact's own window (--time-only reads it)
            calls[name] = lambda model=model, window=window: model.run_window(window)
            continue
        hop = model.manifest.hop_samples
        state = [np.zeros(st["shape"], np.float32) for st in model.manifest.streaming["state"]]
        n_out = len(model.manifest.outputs) - len(state)
        for k in range(3):  # a mid-stream state
            state = model.run_stream_hop(audio[k * hop:(k + 1) * hop], state)[n_out:]
        chunk = audio[3 * hop:4 * hop]
        calls[name] = lambda model=model, chunk=chunk, state=state: model.run_stream_hop(chunk, state)
    load_before = _load_average()
    samples = time_interleaved(calls, runs=args.runs, warmup=args.warmup) if calls else {}
    load_after = _load_average()
    rows = []
    for name, item in artifacts.items():
        lat = percentiles(samples[name])
        base = percentiles(samples[f"{item['target']}/{item['precision']}/windowed"])
        hop_s = item.get("hop_s")
        parity = item["parity"]
        rows.append({
            "target": item["target"], "precision": item["precision"], "kind": item["kind"],
            "fm_mode": item.get("fm_mode"), "context_s": item["context_s"], "hop_s": hop_s, **lat,
            "rtf": round(lat["p50_ms"] / 1e3 / hop_s, 4) if hop_s else None,
            "windowed_p50_ms": base["p50_ms"],
            "ratio_vs_windowed": round(lat["p50_ms"] / base["p50_ms"], 3),
            "parity_passed": parity["passed"],
            "parity_max_abs_error_of_scale": max(o["max_rel_of_scale"] for o in parity["outputs"]),
            "parity_embedding_cosine": next(o["cosine"] for o in parity["outputs"] if o["name"] == "embedding"),
            "size_mb": item["size_mb"], "convert_s": item["convert_s"]})
    cpu = cpu_features().to_dict()
    report = {"model": args.model, "layer": layer, "head": head_kind, "threads": args.threads, "runs": args.runs,
              "window_s": args.window_s, "cpu": cpu, "torch": torch.__version__, "rows": rows, "fidelity": fidelity,
              "load_average_1min": {"before_timing": load_before, "after_timing": load_after},
              "timing": "interleaved: one call of every artifact per round",
              "clips": "folder given" if args.clips else "generated speech-like audio",
              "note": "shared machine; compare ratios within this run"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out), report)
    print(f"\n{args.model} layer {layer}, {head_kind} head, {args.threads} threads, CPU {cpu.get('model_name')} "
          f"({cpu.get('isa_class', '')}), load average {load_before} -> {load_after}")
    print("| target | precision | FM per hop | context s | hop s | p50 ms | p90 ms | RTF | windowed p50 ms | "
          "stream/windowed | parity max err/scale | emb. cosine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = "windowed artifact" if r["kind"] == "windowed" else r["fm_mode"]
        hop = f"{r['hop_s']:g}" if r["hop_s"] else "-"
        rtf = f"{r['rtf']:.3f}" if r["rtf"] else "-"
        print(f"| {r['target']} | {r['precision']} | {kind} | {r['context_s']:g} | {hop} | {r['p50_ms']:.1f} | "
              f"{r['p90_ms']:.1f} | {rtf} | {r['windowed_p50_ms']:.1f} | {r['ratio_vs_windowed']:.2f} | "
              f"{r['parity_max_abs_error_of_scale']:.1e} | {r['parity_embedding_cosine']:.5f} |")
    print("\n| FM per hop | context s | hop s | mean cosine (streamed vs whole-clip frames) | 5th pct | frames |")
    print("|---|---|---|---|---|---|")
    for f in fidelity:
        print(f"| {f['fm_mode']} | {f['context_s']:g} | {f['hop_s']:g} | {f['mean_cosine']:.4f} | "
              f"{f['p05_cosine']:.4f} | {f['frames']} |")
    return 0


def kept_artifacts(folder: Path) -> dict[str, dict]:
    """The artifacts a ``--keep`` run wrote into ``folder``, described from their manifests and parity.json."""
    artifacts = {}
    for path in sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()):
        manifest = json.loads((path / "manifest.json").read_text())
        parity = json.loads((path / "parity.json").read_text())["parity"]
        stream = manifest.get("streaming")
        item = {"target": manifest["target"], "precision": manifest["precision"], "dir": path,
                "kind": "stream" if stream else "windowed", "parity": parity, "convert_s": None,
                "size_mb": round(manifest["size_bytes"] / 1e6, 2)}
        if stream:
            item.update(fm_mode=stream.get("fm_mode", "window"), context_s=stream["window_samples"] / SAMPLE_RATE,
                        hop_s=stream["hop_s"])
            name = f"{item['target']}/{item['precision']}/{item['fm_mode']}/{item['context_s']:g}/{item['hop_s']:g}"
        else:
            item["context_s"] = manifest["window_samples"] / SAMPLE_RATE
            name = f"{item['target']}/{item['precision']}/windowed"
        artifacts[name] = item
    if not artifacts:
        raise SystemExit(f"{folder} holds no artifact folders; expected the --keep folder of an earlier run.")
    return artifacts


def _load_average() -> float | None:
    try:
        import os

        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


if __name__ == "__main__":
    sys.exit(main())

"""Feature extraction speed: Whisper-base, all layers (target: 30x real time on 2 cores).

Utterances: the first 48 RAVDESS clips (sorted by path) when ``EDGE_SER_RAVDESS`` is
set, else a fixed synthetic corpus (6 speakers x 8 utterances, seed 0). Weights: the
installed real Whisper-base when present, else random init (same cost).

Also measures the batching question of edge_ser.features.extract: 8 equal-length 3 s
clips run as one batch vs one by one (padded batches are not exact for Whisper, so only
equal lengths could be batched at all).

Run: ``.venv/bin/python -m pytest -q benchmarks/bench_features.py --benchmark-only -s``
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_ser.cpu_features import cpu_features

THREADS = 2


@pytest.fixture(scope="module")
def bench_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "corpus"
    root = os.environ.get("EDGE_SER_RAVDESS")
    if root and Path(root).is_dir():
        from edge_ser.audio import audio_duration_s
        from edge_ser.data.table import save_corpus

        files = sorted(Path(root).rglob("*.flac"))[:48] or sorted(Path(root).rglob("*.wav"))[:48]
        rows = [{"utt_id": p.stem, "path": str(p.resolve()), "speaker": p.parent.name,
                 "duration_s": audio_duration_s(p)} for p in files]
        save_corpus(rows, out, corpus="ravdess-bench", audio_root="/", label_mapping={}, soft_target_rule="none")
    else:
        from edge_ser.data.synthetic import synthesize_corpus

        synthesize_corpus(out=out, n_speakers=6, utterances_per_speaker=8, seed=0)
    return out


def _whisper_base_weights() -> tuple[Path | None, bool]:
    from edge_ser.fm.weights import installed_whisper_base_ct2

    path = installed_whisper_base_ct2()
    return path, path is None


def test_whisper_base_all_layer_throughput(benchmark, bench_corpus, tmp_path):
    from edge_ser.features.extract import extract_features

    torch.set_num_threads(THREADS)
    weights, random_init = _whisper_base_weights()
    runs = []

    def run():
        out = tmp_path / f"f{len(runs)}"
        cache = extract_features(corpus_dir=bench_corpus, model="whisper-base", out=out, layers="all",
                                 weights=weights, random_init=random_init, resume=False, show_progress=False)
        runs.append(cache.manifest["throughput"])

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    best = max(runs, key=lambda t: t["realtime_factor"])
    benchmark.extra_info.update({
        "model": "whisper-base", "layers": "all (7 hidden states)", "random_init": random_init,
        "utterances": best["utterances"], "audio_s": best["audio_s"],
        "realtime_factor_per_round": [t["realtime_factor"] for t in runs],
        "utterances_per_s_per_round": [t["utterances_per_s"] for t in runs],
        "target_realtime_factor": 30.0, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": cpu_features().to_dict(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "corpus": "ravdess" if os.environ.get("EDGE_SER_RAVDESS") else "synthetic",
    })
    print(f"\nwhisper-base all layers: {best['utterances']} utt, {best['audio_s']:.1f} s audio, "
          f"{best['realtime_factor']:.1f}x real time, {best['utterances_per_s']:.2f} utt/s "
          f"({torch.get_num_threads()} threads; target 30x)")


def test_batching_equal_length_vs_one_by_one(benchmark):
    from edge_ser.fm import load_foundation_model

    torch.set_num_threads(THREADS)
    fm = load_foundation_model("whisper-base", random_init=True)
    batch = torch.from_numpy(np.random.default_rng(0).normal(scale=0.1, size=(8, 48_000)).astype(np.float32))

    def timed(fn, repeats=3):  # type: ignore[no-untyped-def]
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.inference_mode():
        one_by_one = timed(lambda: [fm.hidden_states(batch[i:i + 1]) for i in range(8)])
        batched = benchmark.pedantic(lambda: timed(lambda: fm.hidden_states(batch)), rounds=1, iterations=1)
    benchmark.extra_info.update({"clips": 8, "clip_s": 3.0, "one_by_one_s": one_by_one, "batched_s": batched,
                                 "batched_speedup": one_by_one / batched, "threads": torch.get_num_threads()})
    print(f"\n8 x 3 s whisper-base: one by one {one_by_one * 1e3:.0f} ms, one batch {batched * 1e3:.0f} ms "
          f"(speed-up {one_by_one / batched:.2f}x)")

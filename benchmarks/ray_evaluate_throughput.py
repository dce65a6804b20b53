"""Time of the evaluation's prediction from audio: the local engine (2 and 1 threads) vs Ray (1 and 2 workers).

Set-up (not timed): features of one layer of `--corpus-dir` (local engine), a 1-epoch TC-GRU run
on them, white-noise copies of every row at 15 and 5 dB. Then each configuration runs
``evaluate_run(..., source="audio", split=None)`` on the clean corpus and both copies (every row
of each, so three times the corpus is predicted from audio), one after another in this
process; the Ray runs start their own local Ray instance (``workers`` CPUs). Reported per run:
end-to-end wall seconds (model loading and Ray start-up included), Ray start-up (Ray, the
workers' imports and model loads), utterances/s over the rest, peak resident memory per
worker, and whether the predictions files equal the local 1-thread run's byte for byte.
Results go to ``--out``/results.json and a markdown table on stdout (docs/scale.md quotes them).

Run (the corpus is a prepared corpus folder: ``edge-ser data synth`` or ``data prepare``)::

    nice -n 10 .venv/bin/python benchmarks/ray_evaluate_throughput.py --corpus-dir work/syn \\
        --model whisper-base --layer 1 --out work/ray-eval-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def _predictions(report_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((report_dir / "predictions").glob("*.csv"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-dir", type=Path, required=True)
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--snr", default="15,5", help="comma-separated SNRs (dB) of the noisy copies")
    parser.add_argument("--configs", default="local1,ray1,ray2,local",
                        help="comma-separated: local (2 threads), local1 (1 thread), ray1, ray2 (workers)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from edge_ser.data.noise import make_noisy_corpus
    from edge_ser.data.table import load_corpus
    from edge_ser.evaluation.suite import evaluate_run, load_test_sets
    from edge_ser.features.extract import extract_features
    from edge_ser.train.dataset import CacheFeatureSource
    from edge_ser.train.trainer import TrainConfig, train_run

    from ray_engine_throughput import _cpu_name

    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    setup = time.perf_counter()
    feats, run = args.out / "features", args.out / "run"
    extract_features(corpus_dir=args.corpus_dir, model=args.model, out=feats, layers=[args.layer],
                     random_init=args.random_init, show_progress=False)
    if not (run / "run.json").is_file():
        train_run(source=CacheFeatureSource(feats, layer=args.layer), out=run,
                  config=TrainConfig(max_epochs=1), progress=False)
    tests = [args.corpus_dir]
    for snr in (float(s) for s in args.snr.split(",") if s.strip()):
        noisy = args.out / f"noisy{snr:g}"
        if not (noisy / "manifest.json").is_file():
            make_noisy_corpus(corpus_dir=args.corpus_dir, snr_db=snr, out=noisy, noise="white", split="all", seed=0)
        tests.append(noisy)
    n_utts = sum(len(load_corpus(t).table) for t in tests)
    print(f"set-up {time.perf_counter() - setup:.1f} s; {n_utts} utterances to predict per run", flush=True)

    rows = []
    reference = None
    for config in args.configs.split(","):
        out = args.out / f"eval-{config}"
        shutil.rmtree(out, ignore_errors=True)
        load_before = os.getloadavg()[0]
        common = dict(run_dir=run, test_dirs=tests, out=out, source="audio", split=None, bootstrap=0,
                      progress=False)
        start = time.perf_counter()
        if config.startswith("local"):
            torch.set_num_threads(1 if config == "local1" else 2)
            evaluate_run(**common)
        else:
            evaluate_run(**common, engine="ray", workers=int(config.removeprefix("ray")))
        wall = time.perf_counter() - start
        torch.set_num_threads(1)
        row = {"config": config, "utterances": n_utts, "end_to_end_s": round(wall, 2),
               "utt_per_s_end_to_end": round(n_utts / wall, 3), "load_avg_1min_before": round(load_before, 2)}
        engine = load_test_sets(out).get("engine")
        if engine:
            steady = wall - engine["startup_s"]
            row.update(startup_s=engine["startup_s"], utt_per_s_after_startup=round(n_utts / steady, 3),
                       worker_compute_s=engine["worker_compute_s"], worker_peak_rss_mb=engine["worker_peak_rss_mb"],
                       shard_attempts=engine["shard_attempts"])
        predictions = _predictions(out)
        if config == "local1":
            reference = predictions
        elif reference is not None:  # equal bytes need equal threads (docs/scale.md)
            row["predictions_identical_to_local1"] = predictions == reference
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"cpu": _cpu_name(), "cores": os.cpu_count(), "model": args.model, "layer": args.layer,
              "corpus": str(args.corpus_dir), "test_sets": [str(t) for t in tests], "rows": rows,
              "note": "shared 2-core machine, other jobs running; nice -n 10"}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']}, {result['cores']} cores, {args.model}, layer {args.layer}, {n_utts} utterances\n")
    print("| engine | end to end s | utt/s end to end | Ray start-up s | utt/s after start-up | "
          "peak RSS per worker MB | predictions = local 1 thread |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['end_to_end_s']} | {r['utt_per_s_end_to_end']} | {r.get('startup_s', '-')} | "
              f"{r.get('utt_per_s_after_startup', '-')} | {r.get('worker_peak_rss_mb', '-')} | "
              f"{r.get('predictions_identical_to_local1', '-')} |")


if __name__ == "__main__":
    main()

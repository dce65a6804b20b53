"""Throughput of feature extraction: the local engine (2 threads) vs the Ray engine (1 and 2 workers).

Each configuration extracts the same corpus into a fresh cache (same shards), one after another
in this process; the Ray runs start their own local Ray instance (``workers`` CPUs). Reported per
run: steady-state utterances/s from the cache manifest (model loading and Ray start-up excluded),
end-to-end wall seconds (included), Ray start-up, per-shard overhead (driver wall minus worker
compute, per shard, for 1 worker) and peak resident memory per worker process. The caches are
compared file by file with the local one. Results go to ``--out``/results.json and a markdown table
on stdout (docs/scale.md quotes them).

Run (the corpus is a prepared corpus folder: ``edge-ser data synth`` or ``data prepare``)::

    nice -n 10 .venv/bin/python benchmarks/ray_engine_throughput.py --corpus-dir work/syn \\
        --model whisper-base --layers 1 --shard-utterances 16 --out work/ray-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-dir", type=Path, required=True)
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--layers", default="1")
    parser.add_argument("--shard-utterances", type=int, default=16)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--configs", default="local,local1,ray1,ray2",
                        help="comma-separated: local (2 threads), local1 (1 thread), ray1, ray2 (workers)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from edge_ser.features.extract import extract_features
    from edge_ser.features.ray_engine import extract_features_ray

    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(corpus_dir=args.corpus_dir, model=args.model, layers=[int(k) for k in args.layers.split(",")],
                  random_init=args.random_init, shard_utterances=args.shard_utterances, show_progress=False)
    rows = []
    local_root = None
    for config in args.configs.split(","):
        out = args.out / config
        shutil.rmtree(out, ignore_errors=True)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        if config.startswith("local"):
            torch.set_num_threads(1 if config == "local1" else 2)
            cache = extract_features(out=out, **common)
            local_root = cache.root if config == "local" else local_root
        else:
            cache = extract_features_ray(out=out, workers=int(config.removeprefix("ray")), **common)
        end_to_end = time.perf_counter() - start
        speed = cache.manifest["throughput"]
        engine = cache.manifest["extraction"].get("engine", {})
        row = {"config": config, "utterances": speed["utterances"], "audio_s": speed["audio_s"],
               "steady_wall_s": speed["wall_s"], "utt_per_s": speed["utterances_per_s"],
               "realtime_factor": speed["realtime_factor"], "end_to_end_s": round(end_to_end, 2),
               "load_avg_1min_before": round(load_before, 2)}
        if engine:
            shards = speed["shards_computed"]
            row.update(startup_s=engine["startup_s"], worker_peak_rss_mb=engine["worker_peak_rss_mb"],
                       overhead_per_shard_s=round((speed["wall_s"] * engine["workers"] - engine["worker_compute_s"])
                                                  / shards, 3))
        else:  # the process's peak so far: meaningful for the first local run
            row["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if local_root is not None and config != "local":  # equal bytes need equal threads (docs/scale.md)
            row["identical_to_local"] = _files(cache.root) == _files(local_root)
        rows.append(row)
        print(json.dumps(row), flush=True)
    local = next((r for r in rows if r["config"] == "local"), None)
    for row in rows:
        if local and row is not local:
            row["vs_local"] = round(row["utt_per_s"] / local["utt_per_s"], 3)
    result = {"cpu": _cpu_name(), "cores": os.cpu_count(), "model": args.model, "layers": args.layers,
              "shard_utterances": args.shard_utterances, "corpus": str(args.corpus_dir), "rows": rows,
              "note": "shared 2-core machine, other jobs running; nice -n 10"}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']}, {result['cores']} cores, {args.model}, layers {args.layers}\n")
    print("| engine | utt/s (steady) | x real time | vs local | end to end s | Ray start-up s | "
          "overhead/shard s | peak RSS per worker MB | same files |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['utt_per_s']} | {r['realtime_factor']} | {r.get('vs_local', 1.0)} | "
              f"{r['end_to_end_s']} | {r.get('startup_s', '-')} | {r.get('overhead_per_shard_s', '-')} | "
              f"{r.get('worker_peak_rss_mb', r.get('driver_peak_rss_mb'))} | {r.get('identical_to_local', '-')} |")


if __name__ == "__main__":
    main()

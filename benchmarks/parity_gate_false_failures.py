"""How often does the task-level parity gate refuse an artifact that is not worse? (docs/parity.md)

The tiny chain: a synthetic corpus, random-init tiny-wavlm features, a small TC-GRU trained on
them, its ExecuTorch int8 artifact. Reference (PyTorch) and artifact outputs are computed once
for every held-out utterance (valid + test speakers, one window each); then many random subsets
of ``--subset`` utterances (the size of the tiny chain's test split) are drawn and judged by

- the old rule: ΔUAR > 1 point fails (or ΔCCC > 0.02);
- the current rule (:func:`edge_ser.runtime.parity.compare`): the drop must also be significant
  (95 % paired-bootstrap interval above 0);
- the whole gate (every rule of the tolerance, top-1 agreement on decisive utterances included).

The same is done for a *degraded* artifact (the int8 outputs with the top-2 classes swapped on
a fraction of utterances), to show the gate still refuses real damage. Run:

    python benchmarks/parity_gate_false_failures.py --out bench-out/gate [--draws 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge_ser.cpu_features import cpu_features
from edge_ser.runtime.parity import _task_drop_failures, compare, tolerance_for

WINDOW_S = 1.0


def _outputs(root: Path, *, speakers: int, per_speaker: int) -> dict:
    from edge_ser.converters.fused import build_fused_model, fit_to_window
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.audio import load_audio
    from edge_ser.data.synthetic import synthesize_corpus
    from edge_ser.features.extract import extract_features
    from edge_ser.labels import CATEGORY_INDEX, DIMENSIONS
    from edge_ser.runtime import load
    from edge_ser.train.dataset import CacheFeatureSource
    from edge_ser.train.trainer import TrainConfig, train_run

    corpus = synthesize_corpus(out=root / "corpus", n_speakers=speakers, utterances_per_speaker=per_speaker, seed=0)
    extract_features(corpus_dir=corpus.root, model="tiny-wavlm", out=root / "feats", layers=[2], random_init=True,
                     show_progress=False)
    config = TrainConfig(batch_size=8, lr=3e-3, conv_channels=32, gru_hidden=32, gru_layers=1, embed_dim=32,
                         max_epochs=8)
    train_run(source=CacheFeatureSource(root / "feats", layer=2), out=root / "run", config=config, progress=False)
    convert_run(run_dir=root / "run", target="executorch", precision="int8", out=root / "et-int8", window_s=WINDOW_S,
                overwrite=True)
    artifact = load(root / "et-int8")
    fused = build_fused_model(run_dir=root / "run", window_s=WINDOW_S).eval()
    rows = corpus.table[corpus.table["split"] != "train"]
    ref, art, labels, dims = {"probs": [], "avd": [], "embedding": []}, {"probs": [], "avd": [], "embedding": []}, [], []
    for _, row in rows.iterrows():
        window = fit_to_window(load_audio(corpus.audio_path(row.to_dict())), artifact.window_samples)
        with torch.no_grad():
            outs = [t.numpy().reshape(-1) for t in fused(torch.from_numpy(window).reshape(1, -1))]
        for name, value in zip(ref, outs):
            ref[name].append(value)
        got = artifact.run_window(window)
        for name in art:
            art[name].append(np.asarray(got[name]).reshape(-1))
        labels.append(CATEGORY_INDEX.get(row["label"], -1))
        dims.append([row[d] for d in DIMENSIONS])
    return {"reference": {k: np.stack(v) for k, v in ref.items()}, "artifact": {k: np.stack(v) for k, v in art.items()},
            "labels": np.array(labels), "dims": np.array(dims, dtype=np.float64)}


def _degrade(outputs: dict, *, fraction: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    probs = outputs["probs"].copy()
    idx = rng.choice(len(probs), int(round(fraction * len(probs))), replace=False)
    for i in idx:
        first, second = np.argsort(-probs[i])[:2]
        probs[i, first], probs[i, second] = probs[i, second], probs[i, first]
    return {**outputs, "probs": probs}


def judge(data: dict, candidate: dict, *, subset: int, draws: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tol = tolerance_for("executorch", "int8")
    n = len(data["labels"])
    old = new = whole = 0
    drops = []
    for _ in range(draws):
        idx = rng.choice(n, subset, replace=False)
        ref = {k: v[idx] for k, v in data["reference"].items()}
        cand = {k: v[idx] for k, v in candidate.items()}
        present = sorted(int(c) for c in set(data["labels"][idx].tolist()) if c >= 0)
        report = compare(ref, cand, target="executorch", precision="int8", label_idx=data["labels"][idx],
                         dims=data["dims"][idx], score_classes=present)
        task = report.task
        drops.append(task.uar_drop_points)
        old_fail = (task.uar_drop_points or 0) > tol.max_uar_drop_points or (task.ccc_max_drop or 0) > tol.max_ccc_drop
        old += bool(old_fail)
        new += bool(_task_drop_failures(task, tol))
        whole += bool(report.failures)
    return {"draws": draws, "subset": subset, "refused_old_rule": old / draws, "refused_new_rule": new / draws,
            "refused_whole_gate": whole / draws,
            "uar_drop_mean": float(np.mean(drops)), "uar_drop_p95": float(np.percentile(drops, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--subset", type=int, default=80)
    parser.add_argument("--speakers", type=int, default=12)
    parser.add_argument("--per-speaker", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    cached = args.out / "outputs.npz"
    if cached.is_file():  # re-judge without re-training (delete the file to start over)
        raw = np.load(cached)
        data = {"reference": {k: raw[f"reference_{k}"] for k in ("probs", "avd", "embedding")},
                "artifact": {k: raw[f"artifact_{k}"] for k in ("probs", "avd", "embedding")},
                "labels": raw["labels"], "dims": raw["dims"]}
    else:
        data = _outputs(args.out, speakers=args.speakers, per_speaker=args.per_speaker)
        np.savez(cached, labels=data["labels"], dims=data["dims"],
                 **{f"{who}_{k}": v for who in ("reference", "artifact") for k, v in data[who].items()})
    result = {"cpu": cpu_features().to_dict(), "held_out_utterances": int(len(data["labels"])),
              "full_set": compare(data["reference"], data["artifact"], target="executorch", precision="int8",
                                  label_idx=data["labels"], dims=data["dims"]).to_dict()["task"],
              "int8_artifact": judge(data, data["artifact"], subset=args.subset, draws=args.draws, seed=1)}
    for fraction in (0.05, 0.10, 0.20):
        result[f"degraded_{int(fraction * 100)}pct_swapped"] = judge(
            data, _degrade(data["artifact"], fraction=fraction, seed=2), subset=args.subset, draws=args.draws, seed=1)
    (args.out / "parity_gate.json").write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: v for k, v in result.items() if k != "full_set"}, indent=2, default=float))


if __name__ == "__main__":
    main()

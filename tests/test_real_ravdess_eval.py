"""Real tier: the full RAVDESS k-fold evaluation (clean + 15/5 dB noisy copies) into one report.

By default the test builds what it needs on the RAVDESS Whisper-base features of the real tier
(``ravdess_whisper_features`` in conftest.py): short k-fold runs on the salient layer (all 6
folds, 3 epochs each, two worker processes) in ``<work>/ravdess/folds-short``. That checks the
whole path on real data, not the accuracy of a fully trained model (the issue notes report
that). To evaluate existing full runs instead, set:

- ``EDGE_SER_EVAL_FOLDS``: k-fold run folder (``edge-ser train --folds all``);
- ``EDGE_SER_EVAL_CORPUS``: the prepared k-fold RAVDESS corpus;
- ``EDGE_SER_EVAL_NOISY``: noisy copies at 15 and 5 dB, ``os.pathsep``-separated, default
  ``<work>/noisy15`` and ``<work>/noisy5``. A missing one is made here with
  :func:`edge_ser.data.noise.make_noisy_corpus` (pink noise, seed 0, every fold) in a temp folder.
- ``EDGE_SER_EVAL_FEATURES``: the runs' feature cache, if it moved since training (optional).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_ser.data.table import load_corpus
from edge_ser.evaluation.report import load_report, summary_metrics

pytestmark = pytest.mark.real


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else default


@pytest.fixture(scope="module")
def ravdess_eval_inputs(request, tmp_path_factory, real_work_dir):
    folds_value = os.environ.get("EDGE_SER_EVAL_FOLDS")
    if folds_value:
        folds = Path(folds_value)
        corpus = _path("EDGE_SER_EVAL_CORPUS", folds.parent / "corpus")
        if not any(folds.glob("fold*_seed*/run.json")):
            pytest.fail(f"EDGE_SER_EVAL_FOLDS={folds} has no finished fold runs (fold*_seed*/run.json)")
    else:
        features = request.getfixturevalue("ravdess_whisper_features")
        from edge_ser.saliency import load_saliency
        from edge_ser.train.trainer import TrainConfig, train_folds

        folds, corpus = real_work_dir / "ravdess" / "folds-short", features.corpus_dir
        layer = load_saliency(features.saliency_dir).chosen_layer
        train_folds(cache_dir=features.features_dir, layer=layer, out=folds, resume=True, progress=False,
                    config=TrainConfig(max_epochs=3, patience=2), workers=2)
    work = folds.parent
    noisy_value = os.environ.get("EDGE_SER_EVAL_NOISY")
    noisy = ([Path(p) for p in noisy_value.split(os.pathsep) if p] if noisy_value
             else [work / "noisy15", work / "noisy5"])
    made = []
    for path, snr in zip(noisy, (15.0, 5.0)):
        if (path / "manifest.json").is_file():
            made.append(path)
            continue
        from edge_ser.data.noise import make_noisy_corpus

        out = tmp_path_factory.mktemp(f"noisy{snr:g}")
        make_noisy_corpus(corpus_dir=corpus, snr_db=snr, out=out, noise="pink", split="all", seed=0)
        made.append(out)
    features = os.environ.get("EDGE_SER_EVAL_FEATURES")
    return {"folds": folds, "corpus": corpus, "noisy": made, "features": Path(features) if features else None}


def test_ravdess_k_fold_report_clean_and_noisy(ravdess_eval_inputs, tmp_path):
    from edge_ser.evaluation.suite import evaluate_folds

    inputs = ravdess_eval_inputs
    out = evaluate_folds(folds_dir=inputs["folds"], test_dirs=[inputs["corpus"], *inputs["noisy"]],
                         out=tmp_path / "report", bootstrap=200, features_dir=inputs["features"], seeds=None)
    report = load_report(out)
    names = list(report["test_sets"])
    n_seeds = len(json.loads((out / "test_sets.json").read_text())["run_info"]["training_seeds"].split(","))
    assert len(names) == 3 * n_seeds
    assert sum("snr15dB" in n for n in names) == n_seeds and sum("snr5dB" in n for n in names) == n_seeds
    n_rows = len(load_corpus(inputs["corpus"]).table)
    for name, entry in report["test_sets"].items():
        assert entry["counts"]["utterances"] == n_rows, name
        for k in ("1", "2", "3"):
            assert set(entry["pa_uar"][k]) == {"75", "50"}, (name, k)
        genders = entry["pa_uar_by_gender"]
        assert {"female", "male"} <= set(genders), (name, genders.keys())
        assert all(genders[g]["n_speakers"] > 0 and "1" in genders[g]["pa_uar"] for g in ("female", "male"))
        summary = summary_metrics(entry)
        print(name, {k: round(v, 3) for k, v in summary.items() if v is not None})
    clean = report["test_sets"][names[0]]
    chance = 1.0 / len(clean["classes_present"])
    assert clean["uar"]["1"]["value"] > chance, f"clean UAR@1 {clean['uar']['1']['value']:.3f} <= chance {chance:.3f}"
    md = (out / "report.md").read_text()
    assert "## Clean vs noise" in md and "paUAR-75" in md and "By gender" in md
    assert (out / "clean_vs_noise.png").is_file() and (out / "conditions.png").is_file()

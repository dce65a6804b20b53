"""Evaluation glue: predictions from cache vs audio, report folders, k-fold pooling, the CLI.

One tiny pipeline per module: a 6-speaker synthetic corpus with 3 speaker folds, tiny-whisper
(random init) features of layer 2, one run on fold 0's split and three 1-epoch fold runs, a
white-noise copy of the corpus at 5 dB, and an MFBF0 run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from edge_ser.data.conditions import make_condition_corpus
from edge_ser.data.noise import make_noisy_corpus
from edge_ser.data.table import load_corpus, save_corpus
from edge_ser.errors import CorpusError, ManifestError
from edge_ser.evaluation.predict import predict_corpus, predict_folds
from edge_ser.evaluation.report import load_report
from edge_ser.evaluation.suite import compare_runs, evaluate_folds, evaluate_run
from edge_ser.features.cache import FeatureCache
from edge_ser.features.extract import extract_features
from edge_ser.labels import CATEGORIES, REPORTED_CATEGORIES
from edge_ser.train.dataset import CacheFeatureSource
from edge_ser.io import read_json, sha256_file, write_json_atomic
from edge_ser.train.runs import load_run, read_run_info
from edge_ser.train.trainer import TrainConfig, train_folds, train_run

LAYER = 2
TINY = TrainConfig(batch_size=8, lr=3e-3, conv_channels=16, gru_hidden=16, embed_dim=16, max_epochs=1)
PRED = [f"pred_{c}" for c in CATEGORIES]

# The cache stores frames as float16 (relative rounding <= 2**-11 ~ 4.9e-4 per value); the audio
# path feeds the same frames in float32. The head's outputs are O(1), so a change of more than
# one float16 step (~5e-4) would mean the two paths compute different features. Measured here:
# tiny-whisper max |dprob| ~4e-6, |davd| ~3e-5; MFBF0 ~4e-8 / ~3e-7.
CACHE_VS_AUDIO_ATOL = 5e-4


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_fold_corpus):
    root = tmp_path_factory.mktemp("evalpipe")
    corpus_root, _ = tiny_fold_corpus(root, LAYER)
    train_run(source=CacheFeatureSource(root / "feats", layer=LAYER), out=root / "run", config=TINY, progress=False)
    train_folds(cache_dir=root / "feats", layer=LAYER, out=root / "folds", config=TINY, progress=False)
    make_noisy_corpus(corpus_dir=corpus_root, snr_db=5.0, out=root / "noisy5", noise="white", split="all", seed=0)
    make_condition_corpus(corpus_dir=corpus_root, condition="gain+20dB", out=root / "loud", split="all")
    extract_features(corpus_dir=corpus_root, model="mfbf0", out=root / "mfbf0", show_progress=False)
    train_run(source=CacheFeatureSource(root / "mfbf0", layer=0), out=root / "mfbf0_run", config=TINY, progress=False)
    return root


@pytest.mark.parametrize("run", ["run", "mfbf0_run"])
def test_cache_and_audio_predictions_agree(pipeline, run):
    cached = predict_corpus(run_dir=pipeline / run, corpus_dir=pipeline / "corpus", source="cache", progress=False)
    audio = predict_corpus(run_dir=pipeline / run, corpus_dir=pipeline / "corpus", source="audio", batch_size=2,
                           progress=False)
    test_ids = load_corpus(pipeline / "corpus").subset("test")["utt_id"].tolist()
    assert cached["utt_id"].tolist() == audio["utt_id"].tolist() == test_ids
    assert set(cached["feature_source"]) == {"cache"} and set(audio["feature_source"]) == {"audio"}
    assert (cached["n_frames"] == audio["n_frames"]).all()
    for ref in ["label", "speaker", "gender", "p_neutral", "arousal"]:
        pd.testing.assert_series_equal(cached[ref], audio[ref])
    np.testing.assert_allclose(cached[PRED].sum(axis=1), 1.0, atol=1e-9)
    diff_p = np.abs(cached[PRED].to_numpy() - audio[PRED].to_numpy()).max()
    dims = ["pred_arousal", "pred_valence", "pred_dominance"]
    diff_d = np.abs(cached[dims].to_numpy() - audio[dims].to_numpy()).max()
    print(f"{run} cache vs audio: max |dprob| {diff_p:.2e}, max |davd| {diff_d:.2e}")
    assert diff_p < CACHE_VS_AUDIO_ATOL and diff_d < CACHE_VS_AUDIO_ATOL
    # Not trivially equal: float16 storage does change the numbers a little.
    assert diff_p > 0 or diff_d > 0
    assert cached.attrs["edge_ser"]["source"]["source"] == "cache"


def test_batched_predictions_equal_the_head_run_alone(pipeline):
    preds = predict_corpus(run_dir=pipeline / "run", corpus_dir=pipeline / "corpus", split=None, source="cache",
                           batch_size=5, progress=False)
    assert len(preds) == 18
    model, _ = load_run(pipeline / "run")
    cache = FeatureCache.open(pipeline / "feats")
    for row in (0, 7, 17):
        utt = preds["utt_id"][row]
        x = torch.from_numpy(np.asarray(cache.frames(utt, LAYER), dtype=np.float32))[None]
        with torch.no_grad():
            out = model(x)
        np.testing.assert_allclose(preds.loc[row, PRED].to_numpy(dtype=float),
                                   torch.softmax(out.logits, -1)[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(preds.loc[row, ["pred_arousal", "pred_valence", "pred_dominance"]]
                                   .to_numpy(dtype=float), out.avd[0].numpy(), rtol=1e-5, atol=1e-6)


def test_source_choice_and_errors(pipeline):
    auto = predict_corpus(run_dir=pipeline / "run", corpus_dir=pipeline / "noisy5", progress=False)
    assert set(auto["feature_source"]) == {"audio"}
    assert "not from this corpus" in auto.attrs["edge_ser"]["source"]["reason"]
    assert len(auto) == len(load_corpus(pipeline / "corpus").subset("test"))
    with pytest.raises(ManifestError, match="not from this corpus"):
        predict_corpus(run_dir=pipeline / "run", corpus_dir=pipeline / "noisy5", source="cache", progress=False)
    with pytest.raises(ValueError, match="expected one of"):
        predict_corpus(run_dir=pipeline / "run", corpus_dir=pipeline / "corpus", source="disk", progress=False)
    with pytest.raises(ManifestError, match="not found"):  # audio needs the cache manifest to rebuild the FM
        predict_corpus(run_dir=pipeline / "run", corpus_dir=pipeline / "noisy5", progress=False,
                       features_dir=pipeline / "nowhere")


def test_evaluate_run_writes_clean_and_noisy_report(pipeline, tmp_path):
    out = evaluate_run(run_dir=pipeline / "run", test_dirs=[pipeline / "corpus", pipeline / "noisy5"],
                       out=tmp_path / "eval", bootstrap=20, progress=False)
    report = load_report(out)
    assert list(report["test_sets"]) == ["corpus", "snr5dB"]
    n_test = len(load_corpus(pipeline / "corpus").subset("test"))
    for name, entry in report["test_sets"].items():
        assert entry["counts"]["utterances"] == n_test
        assert entry["ccc"]["arousal"]["value"] is not None and entry["ccc"]["arousal"]["n_valid_resamples"] > 0
        assert entry["pa_uar"]["1"].keys() == {"75", "50"}
        assert set(entry["classes"]) <= set(REPORTED_CATEGORIES)
    sets = json.loads((out / "test_sets.json").read_text())["test_sets"]
    assert sets["corpus"]["feature_source"] == "cache" and sets["snr5dB"]["feature_source"] == "audio"
    assert sets["snr5dB"]["snr_db"] == 5.0 and not sets["snr5dB"]["cross_corpus"]
    assert any("5 dB SNR" in n for n in report["test_sets"]["snr5dB"]["notes"])
    for name in ("corpus", "snr5dB"):
        table = pd.read_csv(out / "predictions" / f"{name}.csv")
        assert len(table) == n_test and set(PRED) <= set(table.columns)
    md = (out / "report.md").read_text()
    assert "## Clean vs noise" in md and "| snr5dB | SNR 5 dB |" in md and "## Test sets" in md
    assert (out / "clean_vs_noise.png").stat().st_size > 1000 and (out / "conditions.png").is_file()


def test_condition_copies_are_scored_next_to_clean(pipeline, tmp_path):
    out = evaluate_run(run_dir=pipeline / "run", test_dirs=[pipeline / "corpus", pipeline / "loud",
                                                          pipeline / "noisy5"],
                       out=tmp_path / "eval", bootstrap=10, progress=False)
    sets = json.loads((out / "test_sets.json").read_text())["test_sets"]
    assert sets["gain+20dB"]["condition"] == "gain+20dB" and sets["gain+20dB"]["feature_source"] == "audio"
    assert not sets["gain+20dB"]["cross_corpus"] and sets["gain+20dB"]["base_corpus"] == "synthetic"
    md = (out / "report.md").read_text()
    # clean first, then the condition copies, then noise (loudest SNR first), each with its change vs clean
    block = md[md.index("## Clean vs noise"):]
    assert block.index("| corpus | clean |") < block.index("| gain+20dB | gain+20dB |") < block.index("| snr5dB |")
    notes = load_report(out)["test_sets"]["gain+20dB"]["notes"]
    assert any("under condition gain+20dB" in n and "clipped samples" in n for n in notes)


def test_cross_corpus_scores_only_shared_classes(pipeline, tmp_path):
    corpus = load_corpus(pipeline / "corpus")
    rows = corpus.subset("test").copy()
    rows["path"] = [str(corpus.audio_path(r)) for r in rows.to_dict("records")]
    save_corpus(rows, tmp_path / "other", corpus="other-corpus", audio_root=".", label_mapping={},
                soft_target_rule="copied")
    out = evaluate_run(run_dir=pipeline / "run", test_dirs=[tmp_path / "other"], out=tmp_path / "eval",
                       bootstrap=0, progress=False)
    entry = load_report(out)["test_sets"]["other"]
    _, info = load_run(pipeline / "run")
    train_classes = info["valid_metrics"]["corpus_classes"]
    assert tuple(entry["classes"]) == tuple(c for c in REPORTED_CATEGORIES if c in train_classes)
    assert any(n.startswith("Cross-corpus: trained on 'synthetic', tested on 'other-corpus'") for n in entry["notes"])
    assert json.loads((out / "test_sets.json").read_text())["test_sets"]["other"]["cross_corpus"] is True


def test_k_fold_predictions_pool_held_out_folds(pipeline, tmp_path):
    pooled = predict_folds(folds_dir=pipeline / "folds", corpus_dir=pipeline / "corpus", progress=False)
    table = load_corpus(pipeline / "corpus").table
    assert pooled["utt_id"].tolist() == table["utt_id"].tolist()
    assert (pooled["fold_run"] == [f"fold{f}_seed0" for f in pooled["fold"]]).all()
    one = predict_corpus(run_dir=pipeline / "folds" / "fold1_seed0", corpus_dir=pipeline / "corpus", split=None,
                         source="cache", progress=False)
    mask = (pooled["fold"] == 1).to_numpy()
    np.testing.assert_allclose(pooled.loc[mask, PRED].to_numpy(), one.loc[mask, PRED].to_numpy(), rtol=1e-6)
    assert not np.allclose(pooled.loc[~mask, PRED].to_numpy(), one.loc[~mask, PRED].to_numpy())

    noisy = predict_folds(folds_dir=pipeline / "folds", corpus_dir=pipeline / "noisy5", progress=False)
    assert len(noisy) == 18 and set(noisy["feature_source"]) == {"audio"}

    # Speakers moved to other folds would be predicted by runs that trained on them.
    moved = table.copy()
    moved["fold"] = (moved["fold"] + 1) % 3
    save_corpus(moved, tmp_path / "moved", corpus="synthetic", audio_root=load_corpus(pipeline / "corpus").audio_root,
                label_mapping={}, soft_target_rule="copied")
    with pytest.raises(CorpusError, match="other folds"):
        predict_folds(folds_dir=pipeline / "folds", corpus_dir=tmp_path / "moved", progress=False)
    partial = tmp_path / "partial"
    for name in ("fold0_seed0", "fold1_seed0"):
        shutil.copytree(pipeline / "folds" / name, partial / name)
    with pytest.raises(ManifestError, match=r"missing \[2\]"):
        predict_folds(folds_dir=partial, corpus_dir=pipeline / "corpus", progress=False)

    out = evaluate_folds(folds_dir=pipeline / "folds", test_dirs=[pipeline / "corpus"], out=tmp_path / "eval",
                         bootstrap=0, progress=False)
    report = load_report(out)
    assert [e["counts"]["utterances"] for e in report["test_sets"].values()] == [18]
    assert report["run_info"]["k"] == 3 and "female" in report["test_sets"]["corpus"]["pa_uar_by_gender"]


@pytest.mark.parametrize("fold", [1, 2])
def test_a_fold_run_alone_is_scored_on_its_own_held_out_fold(pipeline, fold):
    """The table's split column is fold 0's assignment; a fold-1 run scored on it would be scored on
    speakers it trained on. Alone (evaluate --run, verify), it is scored on its fold, also on a copy."""
    table = load_corpus(pipeline / "corpus").table
    run_dir = pipeline / "folds" / f"fold{fold}_seed0"
    for corpus in ("corpus", "noisy5", "loud"):
        got = predict_corpus(run_dir=run_dir, corpus_dir=pipeline / corpus, split="test", progress=False)
        held_out = table.loc[table["fold"] == fold, "utt_id"].tolist()
        assert got["utt_id"].tolist() == held_out, corpus
        assert set(got["speaker"]) == set(table.loc[table["fold"] == fold, "speaker"])
    # verify samples its rows by the same rule
    from edge_ser.converters.verify import _select_rows

    rows, used = _select_rows(load_corpus(pipeline / "noisy5"), split="test", max_utterances=100, seed=0,
                              run=read_run_info(run_dir))
    assert used == "test" and sorted(rows["utt_id"]) == sorted(held_out)
    # fold 0's run and a run on the table's own split see the column as written
    zero = predict_corpus(run_dir=pipeline / "folds" / "fold0_seed0", corpus_dir=pipeline / "corpus", split="test",
                          progress=False)
    assert zero["utt_id"].tolist() == table.loc[table["split"] == "test", "utt_id"].tolist()


def test_a_window_trained_fold_run_is_scored_on_its_own_fold_of_the_corpus_it_was_cut_from(pipeline, tmp_path):
    """A run trained on a window corpus (edge-ser data windows) shares speakers and folds with the
    corpus the windows were cut from: scoring it there is not cross-corpus and uses its own fold."""
    from edge_ser.data.windows import make_window_corpus

    make_window_corpus(corpus_dir=pipeline / "corpus", out=tmp_path / "win", window_s=1.0, random_crops=1,
                       progress=False)
    extract_features(corpus_dir=tmp_path / "win", model="tiny-whisper", out=tmp_path / "wfeats", layers=[LAYER],
                     random_init=True, show_progress=False)
    train_folds(cache_dir=tmp_path / "wfeats", layer=LAYER, out=tmp_path / "wfolds", folds=[1], config=TINY,
                progress=False, windows=True)
    run_dir = tmp_path / "wfolds" / "fold1_seed0"
    info = read_run_info(run_dir)
    assert info.home_corpora == {"synthetic", load_corpus(tmp_path / "win").name}
    table = load_corpus(pipeline / "corpus").table
    held_out = table.loc[table["fold"] == 1, "utt_id"].tolist()
    for corpus in ("corpus", "noisy5"):
        got = predict_corpus(run_dir=run_dir, corpus_dir=pipeline / corpus, split="test", progress=False)
        assert got["utt_id"].tolist() == held_out, corpus
    out = evaluate_run(run_dir=run_dir, test_dirs=[pipeline / "corpus"], out=tmp_path / "eval", bootstrap=0,
                       progress=False)
    entry = json.loads((out / "test_sets.json").read_text())["test_sets"]["corpus"]
    assert entry["cross_corpus"] is False and entry["n_utterances"] == len(held_out)


def test_a_fold_run_on_a_corpus_without_its_folds_is_refused(pipeline, tmp_path):
    table = load_corpus(pipeline / "corpus").table.drop(columns=["fold"])
    save_corpus(table, tmp_path / "nofold", corpus="synthetic", audio_root=load_corpus(pipeline / "corpus").audio_root,
                label_mapping={}, soft_target_rule="copied")
    with pytest.raises(ManifestError, match="has no speaker folds"):
        predict_corpus(run_dir=pipeline / "folds" / "fold1_seed0", corpus_dir=tmp_path / "nofold", split="test",
                       progress=False)


def test_cli_evaluate_folds_and_compare(pipeline, tmp_path):
    from edge_ser.cli import root

    runner = CliRunner()
    result = runner.invoke(root, ["evaluate", "--run", str(pipeline / "run"), "--corpus-dir", str(pipeline / "corpus"),
                                  "--corpus-dir", str(pipeline / "noisy5"), "--out", str(tmp_path / "a"),
                                  "--bootstrap", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "snr5dB: CCC Act" in result.output and (tmp_path / "a" / "report.md").is_file()
    result = runner.invoke(root, ["evaluate", "--folds-dir", str(pipeline / "folds"), "--corpus-dir",
                                  str(pipeline / "corpus"), "--out", str(tmp_path / "b"), "--bootstrap", "0",
                                  "--source", "cache", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(root, ["evaluate", "--compare", str(tmp_path / "a"), "--compare", str(tmp_path / "b"),
                                  "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(comparison["runs"]) == {"a", "b"}
    assert {r["test_set"] for r in comparison["rows"]} == {"corpus", "snr5dB"}
    bad = runner.invoke(root, ["evaluate", "--run", str(pipeline / "run"), "--folds-dir", str(pipeline / "folds"),
                               "--corpus-dir", str(pipeline / "corpus"), "--out", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "exactly one of --run" in bad.output
    bad = runner.invoke(root, ["evaluate", "--run", str(pipeline / "run"), "--corpus-dir", str(pipeline / "noisy5"),
                               "--source", "cache", "--out", str(tmp_path / "d"), "--no-progress"])
    assert bad.exit_code != 0 and "cannot predict from cached features" in bad.output
    assert compare_runs([tmp_path / "a", tmp_path / "a"], tmp_path / "cmp2").joinpath("comparison.md").is_file()



# --------------------------------------------------------------------------- one run reader


def test_run_info_reads_what_later_stages_need(pipeline):
    run = read_run_info(pipeline / "run")
    assert (run.feature_model, run.layer, run.vocabulary.kind) == ("tiny-whisper", LAYER, "paper")
    assert run.weights_sha256 == sha256_file(pipeline / "run" / "model.safetensors")
    assert run.feature_cache() == pipeline / "feats"
    assert Path(run.provenance()["corpus_dir"]).resolve() == (pipeline / "corpus").resolve()
    folded = read_run_info(pipeline / "folds" / "fold1_seed0")
    assert (folded.fold, folded.k) == (1, 3)
    with pytest.raises(ManifestError, match="expected a training run folder"):
        read_run_info(pipeline / "feats")


def test_run_info_refuses_an_unfinished_run(pipeline, tmp_path):
    shutil.copytree(pipeline / "run", tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()  # what an interrupted training leaves
    with pytest.raises(ManifestError, match="no finished run.json.*--resume"):
        read_run_info(tmp_path / "run")


def _run_on_other_cache(pipeline, tmp_path, *, change_manifest: bool):
    """A copy of the run whose run.json points at a copy of its cache (optionally re-extracted: manifest changed)."""
    cache = tmp_path / "feats"
    shutil.copytree(pipeline / "feats", cache)
    if change_manifest:
        manifest = read_json(cache / "manifest.json")
        manifest["extraction_s"] = -1.0  # any edit: the digest no longer matches what the run recorded
        write_json_atomic(cache / "manifest.json", manifest)
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline / "run", run_dir)
    info = read_json(run_dir / "run.json")
    info["features"]["feature_dir"] = str(cache)
    write_json_atomic(run_dir / "run.json", info)
    return run_dir, cache


def test_one_rule_finds_a_moved_cache_and_refuses_a_re_extracted_one(pipeline, tmp_path):
    from edge_ser.converters.fused import build_fused_model

    moved, cache = _run_on_other_cache(pipeline, tmp_path / "moved", change_manifest=False)
    assert read_run_info(moved).feature_cache() == cache
    assert build_fused_model(run_dir=moved, window_s=1.0).source["provenance"]["feature_dir"] == str(cache)
    assert read_run_info(pipeline / "run").feature_cache(tmp_path / "nowhere") is None

    stale, _ = _run_on_other_cache(pipeline, tmp_path / "stale", change_manifest=True)
    # evaluation and conversion read the run the same way, so both refuse the re-extracted cache
    with pytest.raises(ManifestError, match="re-extracted"):
        predict_corpus(run_dir=stale, corpus_dir=pipeline / "corpus", source="cache", progress=False)
    with pytest.raises(ManifestError, match="re-extracted"):
        build_fused_model(run_dir=stale, window_s=1.0)

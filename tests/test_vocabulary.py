"""Corpus label vocabularies (`edge-ser train --labels corpus`) through every stage.

One tiny chain per module: a 4-speaker synthetic corpus whose own labels (``source_label``)
are renamed into a vocabulary the paper's 9 categories do not have, tiny-whisper (random
init) features of block 1, a 1-layer TC-GRU trained on the corpus vocabulary, its evaluation,
ONNX and ExecuTorch fp32 artifacts (0.3 s window) and the runtime loading them. Checks that
the class names and their order travel from the corpus to run.json, the report, the
artifact manifest and the runtime's predictions, and that augmented copies only train.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edge_ser.data.synthetic import synthesize_corpus
from edge_ser.data.table import save_corpus
from edge_ser.labels import CATEGORIES, PAPER_VOCABULARY, Vocabulary

LAYER = 1
WINDOW_S = 0.3
# Synthetic categories -> a corpus's own names, deliberately not the paper's.
RENAME = {"neutral": "calm", "happy": "joyful", "sad": "low", "angry": "furious"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_head_config):
    from edge_ser.features.extract import extract_features
    from edge_ser.train.dataset import open_training_source
    from edge_ser.train.trainer import train_run

    root = tmp_path_factory.mktemp("vocab")
    synth = synthesize_corpus(out=root / "synth", n_speakers=4, utterances_per_speaker=4, seed=0)
    table = synth.table.copy()
    table["source_label"] = [RENAME.get(label, "other-" + str(label)) for label in table["label"]]
    corpus = save_corpus(table, root / "corpus", corpus="synthetic-own-labels",
                         audio_root=(root / "synth" / "audio").resolve(), label_mapping={c: c for c in CATEGORIES},
                         soft_target_rule="copied")
    extract_features(corpus_dir=corpus.root, model="tiny-whisper", out=root / "feats", layers=[LAYER],
                     random_init=True, show_progress=False)
    config = tiny_head_config
    source = open_training_source(root / "feats", layer=LAYER, labels="corpus")
    train_run(source=source, out=root / "run", config=config, progress=False)
    return {"root": root, "corpus": corpus, "source": source,
            "vocabulary": Vocabulary.from_corpus_labels(table["source_label"])}


def test_corpus_vocabulary_is_sorted_own_labels_and_recorded(chain):
    source, vocabulary = chain["source"], chain["vocabulary"]
    assert source.vocabulary == vocabulary and vocabulary.kind == "corpus"
    own_names = set(chain["corpus"].table["source_label"])
    assert list(vocabulary.classes) == sorted(own_names) and not own_names & set(CATEGORIES)
    assert source.soft_targets.shape == (len(source), len(vocabulary.classes))
    own = chain["corpus"].table.set_index("utt_id").loc[list(source.utt_ids), "source_label"].tolist()
    assert [vocabulary.classes[i] for i in source.labels] == own  # one-hot target = the corpus's own label
    assert np.array_equal(np.argmax(source.soft_targets, axis=1), source.labels)
    run = json.loads((chain["root"] / "run" / "run.json").read_text())
    assert Vocabulary.from_dict(run["label_vocabulary"]) == vocabulary
    assert run["model"]["n_classes"] == len(vocabulary.classes)
    assert set(run["valid_metrics"]["corpus_classes"]) <= set(vocabulary.classes)


def test_vocabulary_records_and_errors():
    assert Vocabulary.from_dict(None) == PAPER_VOCABULARY  # runs written before vocabularies
    assert PAPER_VOCABULARY.reported != PAPER_VOCABULARY.classes  # the paper scores 6 of its 9
    assert Vocabulary("corpus", ("a", "b")).reported == ("a", "b")
    with pytest.raises(ValueError, match="source_label"):
        Vocabulary.from_corpus_labels(["only-one", "", None])
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary("corpus", ("a", "a"))
    with pytest.raises(ValueError, match="paper vocabulary"):
        Vocabulary("paper", ("a", "b"))


def test_evaluation_scores_the_corpus_vocabulary(chain, tmp_path):
    from edge_ser.evaluation.report import load_report
    from edge_ser.evaluation.suite import evaluate_run

    out = evaluate_run(run_dir=chain["root"] / "run", test_dirs=[chain["corpus"].root], out=tmp_path / "eval",
                       bootstrap=0, progress=False)
    report = load_report(out)["test_sets"]["corpus"]
    classes = chain["vocabulary"].classes
    assert tuple(report["classes"]) == classes  # every class of a corpus vocabulary is scored by default
    predictions = pd.read_csv(next((out / "predictions").glob("*.csv")))
    assert [c for c in predictions.columns if c.startswith("pred_") and c[5:] in classes] == [f"pred_{c}" for c in classes]
    test_rows = chain["corpus"].table[chain["corpus"].table["split"] == "test"]
    assert sorted(predictions["label"]) == sorted(test_rows["source_label"])  # references are the own labels
    top1 = np.asarray(classes)[np.argmax(predictions[[f"pred_{c}" for c in classes]].to_numpy(), axis=1)]
    recalls = [np.mean(top1[predictions["label"] == c] == c) for c in classes if (predictions["label"] == c).any()]
    assert report["uar"]["1"]["value"] == pytest.approx(float(np.mean(recalls)))


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_artifact_and_runtime_carry_the_labels_in_order(chain, target, tmp_path):
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.converters.verify import reference_label_indices
    from edge_ser.runtime import load

    result = convert_run(run_dir=chain["root"] / "run", target=target, precision="fp32", out=tmp_path / target,
                         window_s=WINDOW_S, validation_utterances=2)
    classes = chain["vocabulary"].classes
    assert tuple(result.manifest["labels"]) == classes
    model = load(tmp_path / target)
    assert model.manifest.labels == classes
    wave = 0.05 * np.random.default_rng(0).standard_normal(int(0.9 * 16000)).astype(np.float32)
    prediction = model.predict(wave, 16000)
    assert list(prediction.probabilities) == list(classes)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    rows = chain["corpus"].table.head(6)
    expected = [classes.index(v) for v in rows["source_label"]]
    assert reference_label_indices(rows, model.manifest.labels).tolist() == expected


def test_augmented_copies_only_train(chain, tmp_path):
    from edge_ser.data.conditions import make_condition_corpus
    from edge_ser.features.extract import extract_features
    from edge_ser.train.dataset import AUGMENT_EXCLUDED, fold_splits, open_training_source, with_splits

    root = chain["root"]
    make_condition_corpus(corpus_dir=chain["corpus"].root, condition="gain+20dB", out=tmp_path / "loud", split="all")
    extract_features(corpus_dir=tmp_path / "loud", model="tiny-whisper", out=tmp_path / "loud_feats",
                     layers=[LAYER], random_init=True, show_progress=False)
    source = open_training_source(root / "feats", layer=LAYER, labels="corpus", augment=[tmp_path / "loud_feats"])
    n = len(chain["source"])
    assert len(source) == 2 * n and source.augmented.sum() == n
    assert source.vocabulary == chain["vocabulary"]
    splits = np.asarray(source.splits)
    base_splits = np.asarray(chain["source"].splits)
    assert set(splits[source.augmented]) <= {"train", AUGMENT_EXCLUDED}
    assert (splits[source.augmented] == "train").sum() == (base_splits == "train").sum()
    # Copies get their original's fold: under k-fold splits a held-out speaker's copy never trains.
    folds = np.asarray(source.folds)
    if (folds >= 0).all():
        view = with_splits(source, fold_splits(folds, fold=0))
        held_out = set(np.asarray(source.speakers)[np.asarray(view.splits) == "test"])
        copies = np.asarray(view.splits)[source.augmented]
        speakers = np.asarray(source.speakers)[source.augmented]
        assert all(s == AUGMENT_EXCLUDED for s, spk in zip(copies, speakers) if spk in held_out)
    # A copy's frames are its own (louder audio), its targets the original's.
    assert np.array_equal(source.labels[n:], source.labels[:n])
    assert source.frames(n).shape[1] == source.frames(0).shape[1]

"""Real-data tier: prepare the real RAVDESS speech folder (header reads only, ~2 s)."""

from __future__ import annotations

import pytest

from edge_ser.data.prepare import prepare_corpus
from edge_ser.data.ravdess import LABEL_MAPPING
from edge_ser.data.stats import corpus_stats

pytestmark = pytest.mark.real


def test_prepare_real_ravdess(ravdess_root, tmp_path):
    corpus = prepare_corpus(corpus="ravdess", root=ravdess_root, out=tmp_path / "ravdess", folds=None, seed=0,
                            strict=True)
    table = corpus.table
    assert len(table) == 1440
    speakers = table.drop_duplicates("speaker")
    assert len(speakers) == 24
    assert (speakers["gender"] == "female").sum() == 12 and (speakers["gender"] == "male").sum() == 12
    assert all(int(s.split("_")[1]) % 2 == (g == "male") for s, g in zip(speakers["speaker"], speakers["gender"]))

    source = table["source_label"].value_counts().to_dict()
    assert source == {"neutral": 96, **{e: 192 for e in ("calm", "happy", "sad", "angry", "fearful", "disgust",
                                                          "surprised")}}
    mapped = table["label"].value_counts().to_dict()
    assert mapped["neutral"] == source["neutral"] + source["calm"] == 288
    for src, dst in LABEL_MAPPING.items():
        if src not in ("neutral", "calm"):
            assert mapped[dst] == source[src] == 192
    assert sum(mapped.values()) == 1440

    per_fold = speakers.groupby("fold")["gender"].value_counts().unstack()
    assert list(per_fold.index) == list(range(6))
    assert (per_fold["female"] == 2).all() and (per_fold["male"] == 2).all()
    assert (table.groupby("speaker")["fold"].nunique() == 1).all()
    assert set(table.loc[table["fold"] == 0, "split"]) == {"test"}
    assert table["split"].value_counts().to_dict() == {"train": 960, "valid": 240, "test": 240}
    assert corpus.manifest["audio_check"]["kept"] == 1440
    assert 1.4 < corpus.manifest["counts"]["hours"] < 1.6  # README: about 1.48 h

    stats = corpus_stats(corpus_dir=corpus.root, plot=False)
    assert stats.by_source_label["calm"] == 192 and stats.folds["5"] == {"speakers": 4, "female": 2, "male": 2,
                                                                           "utterances": 240}

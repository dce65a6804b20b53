"""edge_ser.data.splits: speaker-disjoint splits and gender-balanced speaker folds."""

from __future__ import annotations

import pandas as pd
import pytest

from edge_ser.data.splits import fold_assignment, speaker_folds, speaker_split
from edge_ser.errors import CorpusError


def make_table(n_female: int, n_male: int, *, per_speaker: int = 3, n_unknown: int = 0) -> pd.DataFrame:
    rows = []
    for gender, count in (("female", n_female), ("male", n_male), ("unknown", n_unknown)):
        for s in range(count):
            for u in range(per_speaker):
                rows.append({"utt_id": f"{gender[0]}{s}_{u}", "speaker": f"{gender[0]}{s:02d}", "gender": gender,
                             "split": "", "fold": -1})
    # shuffled rows must not change any assignment
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


def speakers_of(table: pd.DataFrame, column: str, value) -> set[str]:
    return set(table.loc[table[column] == value, "speaker"])


def test_speaker_split_is_disjoint_complete_and_balanced():
    out = speaker_split(make_table(20, 20), seed=3)
    sets = {s: speakers_of(out, "split", s) for s in ("train", "valid", "test")}
    assert set(out["split"]) == {"train", "valid", "test"}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not (sets[a] & sets[b]), (a, b)
    assert sum(len(v) for v in sets.values()) == 40
    assert [len(sets[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    for split in ("valid", "test"):
        genders = out[out["split"] == split].drop_duplicates("speaker")["gender"].value_counts()
        assert genders["female"] == genders["male"] == 2
    # every utterance of a speaker has the same split
    assert (out.groupby("speaker")["split"].nunique() == 1).all()


def test_speaker_split_deterministic_and_row_order_independent():
    table = make_table(10, 10)
    a = speaker_split(table, seed=7)
    b = speaker_split(table.iloc[::-1].reset_index(drop=True), seed=7)
    key = lambda t: dict(zip(t["utt_id"], t["split"]))  # noqa: E731
    assert key(a) == key(b)
    others = [key(speaker_split(table, seed=s)) for s in range(5)]
    assert any(o != key(a) for o in others), "different seeds never changed the split"


def test_speaker_split_unbalanced_genders_keep_proportions():
    out = speaker_split(make_table(16, 4), fractions=(0.6, 0.2, 0.2), seed=0)
    for split in ("valid", "test"):
        spk = out[out["split"] == split].drop_duplicates("speaker")
        assert len(spk) == 4
        assert (spk["gender"] == "male").sum() == 1  # 4 speakers x 20 % male


def test_speaker_split_small_and_bad_inputs():
    out = speaker_split(make_table(2, 1), seed=0)
    assert sorted(out.drop_duplicates("speaker")["split"]) == ["test", "train", "valid"]
    with pytest.raises(CorpusError, match=r"has 2 speaker\(s\).*needs at least 3"):
        speaker_split(make_table(1, 1))
    with pytest.raises(CorpusError, match="summing to 1"):
        speaker_split(make_table(3, 3), fractions=(0.5, 0.1, 0.1))
    with pytest.raises(CorpusError, match="empty speaker id"):
        speaker_split(pd.DataFrame({"utt_id": ["a"], "speaker": [""], "gender": ["male"]}))


def test_speaker_folds_balance_and_coverage():
    out = speaker_folds(make_table(12, 12), k=6, seed=0)
    assert (out.groupby("speaker")["fold"].nunique() == 1).all()
    per_fold = out.drop_duplicates("speaker").groupby("fold")["gender"].value_counts().unstack()
    assert list(per_fold.index) == list(range(6))
    assert (per_fold["female"] == 2).all() and (per_fold["male"] == 2).all()


def test_speaker_folds_uneven_counts_differ_by_at_most_one():
    out = speaker_folds(make_table(7, 4, n_unknown=2), k=3, seed=5)
    spk = out.drop_duplicates("speaker")
    sizes = spk.groupby("fold").size()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 13
    for gender in ("female", "male"):
        counts = spk[spk["gender"] == gender].groupby("fold").size().reindex(range(3), fill_value=0)
        assert counts.max() - counts.min() <= 1


def test_speaker_folds_deterministic_and_errors():
    table = make_table(6, 6)
    assert speaker_folds(table, k=4, seed=1)["fold"].tolist() == speaker_folds(table, k=4, seed=1)["fold"].tolist()
    with pytest.raises(CorpusError, match=r"k=13 folds but the table has only 12 speaker\(s\).*k <= 12"):
        speaker_folds(table, k=13)
    with pytest.raises(CorpusError, match="integer >= 2"):
        speaker_folds(table, k=1)


def test_fold_assignment_rotates_test_and_valid():
    folded = speaker_folds(make_table(6, 6), k=6, seed=0)
    for f in range(6):
        out = fold_assignment(folded, fold=f)
        assert speakers_of(out, "split", "test") == speakers_of(folded, "fold", f)
        assert speakers_of(out, "split", "valid") == speakers_of(folded, "fold", (f + 1) % 6)
        assert len(speakers_of(out, "split", "train")) == 8
    with pytest.raises(CorpusError, match=r"fold=6; expected an integer in 0\.\.5"):
        fold_assignment(folded, fold=6)
    with pytest.raises(CorpusError, match="have no fold"):
        fold_assignment(make_table(3, 3), fold=0)
    with pytest.raises(CorpusError, match="needs at least 3"):
        fold_assignment(speaker_folds(make_table(2, 2), k=2), fold=0)

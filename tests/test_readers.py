"""Corpus readers (RAVDESS, MSP-Podcast, user manifest) and prepare_corpus on miniature corpora."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_ser.audio import write_audio
from edge_ser.data.msp_podcast import parse_emo_detail, read_msp_podcast
from edge_ser.data.manifest_reader import read_manifest
from edge_ser.data.prepare import CORPUS_READERS, get_reader, prepare_corpus
from edge_ser.data.ravdess import LABEL_MAPPING as RAVDESS_MAPPING
from edge_ser.data.ravdess import read_ravdess
from edge_ser.data.soft_labels import SOFT_TARGET_RULE_SINGLE, SOFT_TARGET_RULE_VOTES
from edge_ser.data.table import PROB_COLUMNS, load_corpus
from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES, SAMPLE_RATE

CATS = list(CATEGORIES)


def tone(seconds: float = 0.4, *, sr: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def onehot(name: str) -> list[float]:
    return [1.0 if c == name else 0.0 for c in CATS]


# ---- RAVDESS ------------------------------------------------------------------------------

def make_ravdess(root: Path, actors=range(1, 5), emotions=("01", "02", "03", "06")) -> Path:
    for actor in actors:
        for emotion in emotions:
            for statement in ("01", "02"):
                name = f"03-01-{emotion}-01-{statement}-01-{actor:02d}.flac"
                write_audio(root / f"Actor_{actor:02d}" / name, tone(0.3))
    return root


def test_ravdess_rows(tmp_path):
    root = make_ravdess(tmp_path / "rav")
    reading = read_ravdess(root)
    table = pd.DataFrame(reading.rows)
    assert len(table) == 4 * 4 * 2
    assert reading.soft_target_rule == SOFT_TARGET_RULE_SINGLE and reading.default_folds == 6
    assert reading.label_mapping["calm"] == "neutral" and reading.label_mapping["fearful"] == "fear"
    assert set(RAVDESS_MAPPING.values()) <= set(CATEGORIES)
    row = table.set_index("utt_id").loc["03-01-02-01-02-01-03"]
    assert row["speaker"] == "Actor_03" and row["gender"] == "male" and row["source_label"] == "calm"
    assert row["label"] == "neutral" and json.loads(row["votes"]) == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert [row[c] for c in PROB_COLUMNS] == onehot("neutral")
    assert json.loads(row["extras"]) == {"intensity": "normal", "statement": 2, "repetition": 1}
    assert row["path"] == "Actor_03/03-01-02-01-02-01-03.flac"
    assert np.isnan(row["arousal"]) and np.isnan(row["valence"])  # missing, not zeros
    assert set(table.loc[table["speaker"] == "Actor_04", "gender"]) == {"female"}
    assert set(table.loc[table["source_label"] == "fearful", "label"]) == {"fear"}


@pytest.mark.parametrize("bad_name", ["03-01-09-01-01-01-01.flac", "03-01-01-01-01-01.flac", "hello.flac",
                                      "03-01-01-02-01-01-01.flac", "03-01-03-01-01-01-25.flac"])
def test_ravdess_bad_file_name(tmp_path, bad_name):
    root = make_ravdess(tmp_path / "rav", actors=[1])
    write_audio(root / "Actor_01" / bad_name, tone(0.3))
    with pytest.raises(CorpusError, match=rf"{bad_name.split('.')[0]}.*expected 03-01-EE-II-SS-RR-AA|"
                                          rf"{bad_name.split('.')[0]}.*strong intensity"):
        read_ravdess(root)


def test_ravdess_misplaced_file_and_empty_root(tmp_path):
    root = make_ravdess(tmp_path / "rav", actors=[1])
    write_audio(root / "Actor_01" / "03-01-01-01-01-01-02.flac", tone(0.3))
    with pytest.raises(CorpusError, match="belongs to Actor_02"):
        read_ravdess(root)
    with pytest.raises(CorpusError, match="no Actor_XX folders"):
        read_ravdess(tmp_path)


def test_prepare_ravdess_folds(tmp_path):
    root = make_ravdess(tmp_path / "rav", actors=range(1, 13), emotions=("01", "05"))
    corpus = prepare_corpus(corpus="ravdess", root=root, out=tmp_path / "out", folds=None, seed=0, strict=True)
    table = corpus.table
    assert corpus.manifest["splits"]["k"] == 6 and corpus.manifest["audio_root"] == str(root.resolve())
    spk = table.drop_duplicates("speaker")
    assert (spk.groupby("fold")["gender"].value_counts().unstack() == 1).all().all()  # 1 F + 1 M per fold
    assert set(table.loc[table["fold"] == 0, "split"]) == {"test"}
    assert set(table.loc[table["fold"] == 1, "split"]) == {"valid"}
    assert table["duration_s"].round(3).eq(0.3).all()
    reloaded = load_corpus(tmp_path / "out")
    assert reloaded.audio_path(0).is_file()
    np.testing.assert_allclose(reloaded.soft_targets().sum(axis=1), 1.0)


# ---- MSP-Podcast --------------------------------------------------------------------------

CONSENSUS = [
    # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ("MSP-PODCAST_0001_0001.wav", "H", 5.2, 6.0, 4.4, "10", "Female", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "X", 4.0, 4.0, 4.0, "10", "Female", "Development"),
    ("MSP-PODCAST_0002_0001.wav", "A", 6.0, 2.0, 5.0, "11", "Male", "Test1"),
    ("MSP-PODCAST_0003_0001.wav", "N", 3.0, 4.0, 3.0, "Unknown", "Unknown", "Test2"),
]
# (FileName, worker, primary, secondary, A, V, D)
DETAILED = [
    ("MSP-PODCAST_0001_0001.wav", "WORKER00001", "Happy", "Excited", 5.0, 6.0, 4.0),
    ("MSP-PODCAST_0001_0001.wav", "WORKER00002", "Happy", "", 6.0, 7.0, 5.0),
    ("MSP-PODCAST_0001_0001.wav", "WORKER00003", "Other - amused", "Amused", 4.0, 5.0, 4.0),
    ("MSP-PODCAST_0001_0001.wav", "WORKER00004", "Surprise", "", 6.0, 6.0, 5.0),
    ("MSP-PODCAST_0001_0002.wav", "WORKER00001", "Sad", "", 2.0, 3.0, 3.0),
    ("MSP-PODCAST_0001_0002.wav", "WORKER00005", "Neutral", "Concerned,Disappointed", 3.0, 4.0, 4.0),
    ("MSP-PODCAST_0002_0001.wav", "WORKER00002", "Angry", "", 7.0, 1.0, 6.0),
    ("MSP-PODCAST_0002_0001.wav", "WORKER00003", "Contempt", "", 5.0, 2.0, 5.0),
    ("MSP-PODCAST_0002_0001.wav", "WORKER00004", "Angry", "", 6.0, 2.0, 7.0),
    ("MSP-PODCAST_0003_0001.wav", "WORKER00001", "Frustrated", "", 4.0, 3.0, 4.0),
]
EXPECTED_VOTES = {
    "MSP-PODCAST_0001_0001": {"happy": 2, "other": 1, "surprise": 1},
    "MSP-PODCAST_0001_0002": {"sad": 1, "neutral": 1},
    "MSP-PODCAST_0002_0001": {"angry": 2, "contempt": 1},
    "MSP-PODCAST_0003_0001": {"other": 1},
}


def make_msp(root: Path, *, consensus: str = "csv", detailed: str | None = "csv16") -> Path:
    (root / "Labels").mkdir(parents=True)
    for record in CONSENSUS:
        write_audio(root / "Audios" / record[0], tone(0.3), subtype="PCM_16")
    cols = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
    frame = pd.DataFrame(CONSENSUS, columns=cols)
    if consensus == "csv":
        frame.to_csv(root / "Labels" / "labels_consensus.csv", index=False)
    else:  # JSON keyed by file name, EmoClass named EmoClass_Major as in some releases
        data = {r["FileName"]: {("EmoClass_Major" if k == "EmoClass" else k): v
                                for k, v in r.items() if k != "FileName"}
                for r in frame.to_dict("records")}
        (root / "Labels" / "labels_consensus.json").write_text(json.dumps(data))
    if detailed == "csv16":  # release 1.6: worker, EmoClass_Major, EmoClass_Second, attributes
        pd.DataFrame(
            [(f, w, p, s, a, v, d) for f, w, p, s, a, v, d in DETAILED],
            columns=["FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom"],
        ).to_csv(root / "Labels" / "labels_detailed.csv", index=False)
    elif detailed == "csv_detail":  # later releases: EmoDetail strings
        pd.DataFrame([(f, f"{w}; {p}; {s}; A:{a}; V:{v}; D:{d}") for f, w, p, s, a, v, d in DETAILED],
                     columns=["FileName", "EmoDetail"]).to_csv(root / "Labels" / "labels_detailed.csv", index=False)
    elif detailed == "json_detail":
        data: dict = {}
        for f, w, p, s, a, v, d in DETAILED:
            data.setdefault(f, []).append(f"{w}; {p}; {s}; A:{a}; V:{v}; D:{d}")
        (root / "Labels" / "labels_detailed.json").write_text(json.dumps(data))
    elif detailed == "json16":
        data = {}
        for f, w, p, s, a, v, d in DETAILED:
            data.setdefault(f, {})[w] = {"EmoClass_Major": p, "EmoClass_Second": s, "EmoAct": a, "EmoVal": v,
                                         "EmoDom": d}
        (root / "Labels" / "labels_detailed.json").write_text(json.dumps(data))
    return root


def expected_dims(file_name: str) -> np.ndarray:
    rows = np.array([(a, v, d) for f, _, _, _, a, v, d in DETAILED if f.startswith(file_name)], dtype=float)
    return (rows.mean(axis=0) - 1.0) / 6.0


@pytest.mark.parametrize(("consensus", "detailed"), [("csv", "csv16"), ("json", "csv_detail"),
                                                      ("csv", "json_detail"), ("json", "json16")])
def test_msp_podcast_votes_dimensions_splits(tmp_path, consensus, detailed):
    reading = read_msp_podcast(make_msp(tmp_path / "msp", consensus=consensus, detailed=detailed))
    assert reading.soft_target_rule == SOFT_TARGET_RULE_VOTES
    table = pd.DataFrame(reading.rows).set_index("utt_id")
    for utt, expected in EXPECTED_VOTES.items():
        votes = json.loads(table.loc[utt, "votes"])
        assert votes == [expected.get(c, 0) for c in CATS], utt
        probs = np.array([table.loc[utt, c] for c in PROB_COLUMNS])
        np.testing.assert_allclose(probs, np.array(votes) / sum(votes))
        np.testing.assert_allclose(table.loc[utt, ["arousal", "valence", "dominance"]].to_numpy(float),
                                   expected_dims(utt), atol=1e-12)
    assert table.loc["MSP-PODCAST_0001_0001", "label"] == "happy"
    assert table.loc["MSP-PODCAST_0001_0002", "label"] == ""  # 1-1 tie, consensus X
    assert table.loc["MSP-PODCAST_0002_0001", "label"] == "angry"
    assert table["split"].tolist() == ["train", "valid", "test", ""]
    assert json.loads(table.loc["MSP-PODCAST_0003_0001", "extras"])["split_set"] == "Test2"
    assert table["gender"].tolist() == ["female", "female", "male", "unknown"]
    assert table.loc["MSP-PODCAST_0003_0001", "speaker"] == "unknown"
    assert reading.audio_root.name == "Audios"


def test_msp_podcast_consensus_only(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        reading = read_msp_podcast(make_msp(tmp_path / "msp", detailed=None))
    assert "no labels_detailed.csv" in caplog.text
    table = pd.DataFrame(reading.rows).set_index("utt_id")
    assert reading.soft_target_rule == SOFT_TARGET_RULE_SINGLE
    assert [table.loc["MSP-PODCAST_0002_0001", c] for c in PROB_COLUMNS] == onehot("angry")
    assert np.isnan(table.loc["MSP-PODCAST_0001_0002", "p_neutral"])  # X: no categorical target
    np.testing.assert_allclose(table.loc["MSP-PODCAST_0001_0001", ["arousal", "valence", "dominance"]].to_numpy(float),
                               (np.array([5.2, 6.0, 4.4]) - 1) / 6)


def test_msp_podcast_missing_files_and_columns(tmp_path):
    with pytest.raises(CorpusError, match=r"expected Audios/\*\.wav and Labels/labels_consensus\.csv"):
        read_msp_podcast(tmp_path)
    root = make_msp(tmp_path / "msp")
    frame = pd.read_csv(root / "Labels" / "labels_consensus.csv").drop(columns=["Split_Set", "EmoVal"])
    frame.to_csv(root / "Labels" / "labels_consensus.csv", index=False)
    with pytest.raises(CorpusError, match=r"lacks column\(s\) \['EmoVal', 'Split_Set'\]"):
        read_msp_podcast(root)
    root2 = make_msp(tmp_path / "msp2")
    pd.DataFrame({"FileName": ["x"], "Vote": ["Happy"]}).to_csv(root2 / "Labels" / "labels_detailed.csv", index=False)
    with pytest.raises(CorpusError, match="expected FileName plus EmoDetail"):
        read_msp_podcast(root2)


def test_parse_emo_detail():
    assert parse_emo_detail("W1; Other - bored; ; A:2.5; V:3; D:4")[0] == "other"
    cat, dims = parse_emo_detail("W1; Contempt")
    assert cat == "contempt" and all(np.isnan(dims))
    with pytest.raises(CorpusError, match="no primary emotion"):
        parse_emo_detail("WORKER00001")


def test_prepare_msp_keeps_corpus_splits(tmp_path):
    root = make_msp(tmp_path / "msp", detailed="csv_detail")
    corpus = prepare_corpus(corpus="msp-podcast", root=root, out=tmp_path / "out", folds=None, seed=0, strict=False)
    assert corpus.manifest["splits"] == {"method": "from_corpus"}
    assert corpus.manifest["counts"]["by_split"] == {"(none)": 1, "test": 1, "train": 1, "valid": 1}
    assert corpus.manifest["target_sources"]["grader_votes"] == 4


# ---- user manifest ------------------------------------------------------------------------

def write_manifest_audio(root: Path, names: list[str]) -> None:
    for name in names:
        write_audio(root / name, tone(0.3))


def test_manifest_csv_all_target_kinds(tmp_path):
    write_manifest_audio(tmp_path / "audio", ["a.wav", "b.wav", "c.wav", "d.wav"])
    absolute = (tmp_path / "audio" / "d.wav").resolve()
    (tmp_path / "m.csv").write_text(
        "path,speaker,gender,label,votes,arousal,valence,dominance,split\n"
        "audio/a.wav,s1,F,joy,,,,,train\n"
        "audio/b.wav,s2,male,,\"[0,2,1,0,0,0,0,0,0]\",,,,test\n"
        "audio/c.wav,s3,,,,7,4,1,valid\n"
        f"{absolute},s1,female,sad,,2.5,,,train\n"
    )
    reading = read_manifest(tmp_path / "m.csv", label_mapping={"joy": "happy"})
    table = pd.DataFrame(reading.rows).set_index("utt_id")
    assert reading.audio_root == tmp_path.resolve()
    assert table.loc["a", "label"] == "happy" and table.loc["a", "source_label"] == "joy"
    assert [table.loc["a", c] for c in PROB_COLUMNS] == onehot("happy")
    assert table.loc["b", "label"] == "happy" and table.loc["b", "p_sad"] == pytest.approx(1 / 3)
    assert np.isnan(table.loc["c", "p_neutral"])
    np.testing.assert_allclose(table.loc["c", ["arousal", "valence", "dominance"]].to_numpy(float), [1.0, 0.5, 0.0])
    assert table.loc["d", "arousal"] == pytest.approx(0.25)
    assert table["gender"].tolist() == ["female", "male", "unknown", "female"]
    assert reading.extra["dimension_scale"] == "1-7"
    corpus = prepare_corpus(corpus="manifest", root=tmp_path / "m.csv", out=tmp_path / "out", folds=None, seed=0,
                            strict=False, reader_options={"label_mapping": {"joy": "happy"}})
    assert corpus.audio_path(3) == absolute and corpus.audio_path(0).is_file()
    assert corpus.manifest["splits"] == {"method": "from_corpus"}


def test_manifest_jsonl_with_p_columns_and_auto_split(tmp_path):
    write_manifest_audio(tmp_path, [f"u{i}.flac" for i in range(6)])
    lines = []
    for i in range(6):
        probs = {f"p_{c}": (0.5 if c in ("sad", "neutral") else 0.0) for c in CATS}
        probs["p_neutral"] = 0.75 if i % 2 else 0.5
        probs["p_sad"] = 1 - probs["p_neutral"]
        lines.append(json.dumps({"path": f"u{i}.flac", "speaker": f"s{i}", "gender": "female" if i % 2 else "male",
                                 "utt_id": f"utt{i}", "arousal": 0.1 * i, **probs}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    corpus = prepare_corpus(corpus="manifest", root=tmp_path / "m.jsonl", out=tmp_path / "out", folds=None, seed=0,
                            strict=True)
    table = corpus.table.set_index("utt_id")
    assert table.loc["utt1", "label"] == "neutral" and table.loc["utt0", "label"] == ""  # 0.5/0.5 tie
    assert corpus.manifest["splits"]["method"] == "speaker_split"
    assert set(table["split"]) == {"train", "valid", "test"}
    assert table.loc["utt3", "arousal"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("content", "kwargs", "pattern"),
    [
        ("path,label\na.wav,happy\n", {}, r"lacks required column\(s\) \['speaker'\].*needs \['path', 'speaker'\]"),
        ("path,speaker,gender\na.wav,s1,male\n", {}, r"has no label columns.*'label', 'votes'"),
        ("path,speaker,label\na.wav,s1,joy\n", {}, r"m\.csv row 2: label 'joy' is not a known category.*label_mapping"),
        ("path,speaker,label,arousal\na.wav,s1,,\n", {}, r"m\.csv row 2 \(a\.wav\) has no target"),
        ("path,speaker,votes\na.wav,s1,\"[1,2]\"\n", {}, r"expected 9 whole-number counts"),
        ("path,speaker,arousal\na.wav,s1,9\n", {}, r"range over \[9, 9\]; expected \[0, 1\]"),
        ("path,speaker,arousal\na.wav,s1,3\n", {"dimension_scale": "unit"}, r"dimension_scale='unit'"),
        ("path,speaker,label,split\na.wav,s1,sad,dev\n", {}, r"split 'dev'; expected one of"),
        ("path,speaker,p_happy\na.wav,s1,1\n", {}, r"expected all 9"),
        ("path,speaker,label\n", {}, r"lists no utterances"),
        # issue 17: a 400-digit vote count was a traceback (OverflowError), an infinite score was dropped silently
        (f"path,speaker,votes\na.wav,s1,\"[{'9' * 400}, 0, 0, 0, 0, 0, 0, 0, 0]\"\n", {},
         r"m\.csv row 2: votes '\[9{76}\.\.\.' is not a JSON list of 9 counts .*expected e\.g\. \[3, 1, 0"),
        ("path,speaker,votes\na.wav,s1,\"[1e300, 0, 0, 0, 0, 0, 0, 0, 0]\"\n", {},
         r"expected 9 whole-number counts from 0 to 1000000"),
        ("path,speaker,label,arousal\na.wav,s1,sad,inf\n", {},
         r"m\.csv row 2: arousal = 'inf' is infinite; expected a score in \[0, 1\] or on the 1\.\.7 scale, or an "
         r"empty cell"),
    ],
)
def test_manifest_bad_inputs(tmp_path, content, kwargs, pattern):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(CorpusError, match=pattern):
        read_manifest(tmp_path / "m.csv", **kwargs)


def test_manifest_bad_mapping_and_file(tmp_path):
    (tmp_path / "m.csv").write_text("path,speaker,label\na.wav,s1,joy\n")
    with pytest.raises(CorpusError, match=r"maps 'joy' to 'glee'"):
        read_manifest(tmp_path / "m.csv", label_mapping={"joy": "glee"})
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"expected a \.csv or \.jsonl"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\nnot json\n')
    with pytest.raises(CorpusError, match="line 2 is not valid JSON"):
        read_manifest(tmp_path / "m.jsonl")


# ---- prepare: registry and audio header policy ----------------------------------------------

def test_registry_names_and_unknown_corpus(tmp_path):
    assert set(CORPUS_READERS) == {"ravdess", "msp-podcast", "manifest"}
    assert all(callable(get_reader(name)) for name in CORPUS_READERS)
    with pytest.raises(CorpusError, match=r"unknown corpus 'iemocap'; expected one of \['manifest', 'msp-podcast'"):
        prepare_corpus(corpus="iemocap", root=tmp_path, out=tmp_path / "o", folds=None, seed=0, strict=False)


def _problem_manifest(tmp_path: Path) -> Path:
    write_manifest_audio(tmp_path, [f"ok{i}.wav" for i in range(4)])
    (tmp_path / "bad.wav").write_bytes(b"garbage" * 50)
    write_audio(tmp_path / "short.wav", tone(0.1))
    write_audio(tmp_path / "stereo.flac", tone(0.3, channels=2))
    write_audio(tmp_path / "hi.wav", tone(0.3, sr=48_000), sample_rate=48_000)
    names = [f"ok{i}.wav" for i in range(4)] + ["bad.wav", "short.wav", "missing.wav", "stereo.flac", "hi.wav"]
    lines = ["path,speaker,label"] + [f"{n},s{i},sad" for i, n in enumerate(names)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_prepare_skips_unreadable_and_short_files_with_counts(tmp_path, caplog):
    manifest = _problem_manifest(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edge_ser.data.prepare"):
        corpus = prepare_corpus(corpus="manifest", root=manifest, out=tmp_path / "out", folds=3, seed=0, strict=False)
    assert sorted(corpus.table["utt_id"]) == ["hi", "ok0", "ok1", "ok2", "ok3", "stereo"]
    check = corpus.manifest["audio_check"]
    assert (check["checked"], check["kept"], check["skipped_unreadable"], check["skipped_too_short"]) == (9, 6, 2, 1)
    assert check["multichannel_downmixed_on_load"] == 1 and check["other_rate_resampled_on_load"] == 1
    assert "skipped 2 file(s) unreadable" in caplog.text
    assert corpus.manifest["splits"]["k"] == 3 and set(corpus.table["fold"]) == {0, 1, 2}


def test_prepare_strict_lists_problem_files(tmp_path):
    manifest = _problem_manifest(tmp_path)
    with pytest.raises(CorpusError, match=r"(?s)2 of 9 audio files of manifest are unreadable or missing:.*bad\.wav"
                                          r".*missing\.wav"):
        prepare_corpus(corpus="manifest", root=manifest, out=tmp_path / "out", folds=None, seed=0, strict=True)
    assert not (tmp_path / "out" / "manifest.json").exists()
    for name in ("bad.wav", "missing.wav", "short.wav"):
        (tmp_path / "m.csv").write_text("\n".join(l for l in (tmp_path / "m.csv").read_text().splitlines()
                                                  if not l.startswith(name)) + "\n")
    with pytest.raises(CorpusError, match=r"(?s)1 of 6 audio files of manifest are not mono:.*stereo\.flac"):
        prepare_corpus(corpus="manifest", root=manifest, out=tmp_path / "out", folds=None, seed=0, strict=True)


def test_a_stored_votes_cell_out_of_int64_is_a_corpus_error():
    from edge_ser.data.table import parse_votes

    with pytest.raises(CorpusError, match=r"votes cell '\[9{76}\.\.\.' is not a JSON list of 9 integer counts .*"
                                          r"Re-create the corpus folder"):
        parse_votes(f"[{'9' * 400}, 0, 0, 0, 0, 0, 0, 0, 0]")
    assert parse_votes("[1, 0, 0, 0, 0, 0, 0, 0, 2]").tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 2]


def test_msp_podcast_infinite_score_is_refused_not_dropped(tmp_path):
    root = make_msp(tmp_path / "msp", detailed=None)
    frame = pd.read_csv(root / "Labels" / "labels_consensus.csv", dtype=str)
    frame.loc[0, "EmoAct"] = "inf"
    frame.to_csv(root / "Labels" / "labels_consensus.csv", index=False)
    with pytest.raises(CorpusError, match=r"an MSP-Podcast A/V/D score is 'inf'; expected a number on the 1\.\.7 grader "
                                          r"scale or an empty cell\. Fix the label file"):
        read_msp_podcast(root)

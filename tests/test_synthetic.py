"""The synthetic corpus: determinism, table contents, graders, and learnable emotion cues."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edge_ser.data import soft_labels
from edge_ser.data.synthetic import (
    CATEGORY_PRIOR,
    EMOTION_PROFILES,
    simulate_graders,
    speaker_profiles,
    synthesize_corpus,
    synthesize_utterance,
)
from edge_ser.data.table import load_corpus, parse_votes
from edge_ser.errors import CorpusError
from edge_ser.io import sha256_file
from edge_ser.labels import CATEGORIES, SAMPLE_RATE

MAIN_CLASSES = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(out=tmp_path_factory.mktemp("syn") / "c", n_speakers=6, utterances_per_speaker=30,
                             seed=1)


def _file_hashes(root):
    return {p.name: sha256_file(p) for p in sorted((root / "audio").glob("*.flac"))}


def test_same_seed_gives_byte_identical_corpus(tmp_path):
    a = synthesize_corpus(out=tmp_path / "a", n_speakers=4, utterances_per_speaker=3, seed=7)
    b = synthesize_corpus(out=tmp_path / "b", n_speakers=4, utterances_per_speaker=3, seed=7)
    c = synthesize_corpus(out=tmp_path / "c", n_speakers=4, utterances_per_speaker=3, seed=8)
    hashes_a, hashes_b, hashes_c = _file_hashes(a.root), _file_hashes(b.root), _file_hashes(c.root)
    assert len(hashes_a) == 12
    assert hashes_a == hashes_b
    assert sha256_file(a.root / "utterances.csv") == sha256_file(b.root / "utterances.csv")
    assert a.manifest["table_sha256"] == b.manifest["table_sha256"]
    assert {k: v for k, v in a.manifest.items() if k != "created_utc"} == \
        {k: v for k, v in b.manifest.items() if k != "created_utc"}
    assert set(hashes_a) == set(hashes_c)  # same ids, different content
    assert all(hashes_a[k] != hashes_c[k] for k in hashes_a)
    assert a.manifest["table_sha256"] != c.manifest["table_sha256"]


def test_utterances_do_not_depend_on_generation_order(tmp_path):
    short = synthesize_corpus(out=tmp_path / "short", n_speakers=3, utterances_per_speaker=2, seed=3)
    long = synthesize_corpus(out=tmp_path / "long", n_speakers=3, utterances_per_speaker=4, seed=3)
    hashes_long = _file_hashes(long.root)
    for name, digest in _file_hashes(short.root).items():
        assert hashes_long[name] == digest


def test_table_audio_and_manifest(corpus):
    table = corpus.table
    assert len(table) == 180
    assert sorted(table["speaker"].unique()) == [f"syn_f0{i}" for i in (1, 2, 3)] + [f"syn_m0{i}" for i in (1, 2, 3)]
    assert set(table.loc[table["speaker"].str.startswith("syn_f"), "gender"]) == {"female"}
    assert set(table.loc[table["speaker"].str.startswith("syn_m"), "gender"]) == {"male"}
    for _, row in table.iterrows():
        votes = parse_votes(row["votes"])
        assert 5 <= votes.sum() <= 7
        probs = np.array([row[f"p_{c}"] for c in CATEGORIES])
        np.testing.assert_allclose(probs, soft_labels.grader_vote_distribution(votes), atol=1e-6)
        assert row["label"] == (soft_labels.consensus_label(votes) or "")
        assert row["source_label"] in CATEGORIES
        extras = json.loads(row["extras"])
        assert extras["true_category"] == row["source_label"]
        assert extras["acoustic"]["category"] == row["source_label"]
    dims = corpus.dimension_targets()
    assert np.isfinite(dims).all() and dims.min() >= 0.0 and dims.max() <= 1.0
    for row in table.head(5).itertuples():
        info = sf.info(corpus.audio_path(row.utt_id))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "FLAC", "PCM_16")
        assert info.frames / SAMPLE_RATE == pytest.approx(row.duration_s, abs=1e-6)
        assert 1.5 <= row.duration_s <= 4.0
    # speaker-disjoint splits, every split present
    speakers_in = {s: set(table.loc[table["split"] == s, "speaker"]) for s in ("train", "valid", "test")}
    assert all(speakers_in.values())
    assert not (speakers_in["train"] & speakers_in["valid"] or speakers_in["train"] & speakers_in["test"]
                or speakers_in["valid"] & speakers_in["test"])
    reloaded = load_corpus(corpus.root)
    assert reloaded.manifest["corpus"] == "synthetic"
    assert reloaded.manifest["audio_root"] == "audio"
    assert reloaded.manifest["generator"]["seed"] == 1
    assert reloaded.manifest["label_mapping"] == {c: c for c in CATEGORIES}
    assert reloaded.manifest["soft_target_rule"] == soft_labels.SOFT_TARGET_RULE_VOTES


def test_default_speaker_layout_is_8_2_2_gender_balanced(tmp_path):
    table = synthesize_corpus(out=tmp_path / "c", n_speakers=12, utterances_per_speaker=1, seed=0).table
    per_split = table.groupby("split")["gender"].value_counts().unstack(fill_value=0)
    assert per_split.loc["train"].tolist() == [4, 4]
    assert per_split.loc["valid"].tolist() == [1, 1]
    assert per_split.loc["test"].tolist() == [1, 1]


def test_graders_disagree_but_mostly_find_the_true_class(corpus):
    table = corpus.table
    agreement = float((table["label"] == table["source_label"]).mean())
    assert 0.6 < agreement < 0.99
    probs = corpus.soft_targets()
    assert (probs.max(axis=1) < 1.0).mean() > 0.3  # many soft (non one-hot) targets
    # neutral-heavy prior
    counts = table["source_label"].value_counts()
    assert counts.idxmax() == "neutral"
    rng = np.random.default_rng(0)
    votes = np.sum([simulate_graders(category="sad", intensity=1.0, avd=EMOTION_PROFILES["sad"].avd, rng=rng)[0]
                    for _ in range(200)], axis=0)
    ranked = [CATEGORIES[i] for i in np.argsort(-votes)]
    assert ranked[0] == "sad" and set(ranked[1:3]) <= {"neutral", "fear", "other"}


def test_dimensions_follow_categories(corpus):
    table = corpus.table
    mean = table.groupby("source_label")[["arousal", "valence", "dominance"]].mean()
    assert mean.loc["angry", "arousal"] > mean.loc["sad", "arousal"] + 0.3
    assert mean.loc["happy", "valence"] > mean.loc["sad", "valence"] + 0.3
    assert mean.loc["angry", "dominance"] > mean.loc["sad", "dominance"] + 0.3


def _features(x: np.ndarray) -> list[float]:
    """log RMS (dB) of active 40 ms frames, median spectral centroid, median autocorrelation F0, active share."""
    frames = x[: len(x) // 640 * 640].reshape(-1, 640).astype(np.float64)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    active = frames[rms > 0.1 * rms.max()]
    level = 20 * np.log10(rms[rms > 0.1 * rms.max()].mean())
    power = np.abs(np.fft.rfft(active * np.hanning(640), axis=1)) ** 2
    freqs = np.fft.rfftfreq(640, 1 / SAMPLE_RATE)
    centroid = np.median((power * freqs).sum(axis=1) / power.sum(axis=1))
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(active, n=1280, axis=1)) ** 2, axis=1)
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 70
    f0 = np.median(SAMPLE_RATE / (lo + np.argmax(autocorr[:, lo:hi], axis=1)))
    return [level, np.log(centroid), np.log(f0), len(active) / len(frames)]


def test_angry_and_sad_differ_in_level_and_pitch():
    for speaker in speaker_profiles(n_speakers=2, seed=5):
        feats = {}
        for category in ("angry", "sad"):
            feats[category] = np.array([
                _features(synthesize_utterance(category=category, speaker=speaker,
                                               rng=np.random.default_rng(i))[0]) for i in range(6)])
        level_gap = feats["angry"][:, 0].mean() - feats["sad"][:, 0].mean()
        f0_ratio = np.exp(feats["angry"][:, 2].mean() - feats["sad"][:, 2].mean())
        assert level_gap > 10.0, (speaker.speaker, level_gap)
        assert f0_ratio > 1.3, (speaker.speaker, f0_ratio)


def test_trivial_classifier_beats_chance_on_unseen_speakers(corpus):
    table = corpus.table
    feats = np.array([_features(sf.read(corpus.audio_path(row))[0]) for _, row in table.iterrows()])
    speakers = table["speaker"].to_numpy()
    for spk in np.unique(speakers):  # per-speaker z-score, as speaker normalisation in SER
        m = speakers == spk
        feats[m] = (feats[m] - feats[m].mean(axis=0)) / feats[m].std(axis=0)
    truth = table["source_label"].to_numpy()
    train = (table["split"] == "train").to_numpy()
    held_out = ~train
    for classes, floor in ((MAIN_CLASSES, 0.6), (CATEGORIES, 0.3)):
        present = [c for c in classes if (train & (truth == c)).any()]
        means = np.stack([feats[train & (truth == c)].mean(axis=0) for c in present])
        mask = held_out & np.isin(truth, present)
        pred = np.array(present)[np.argmin(((feats[mask][:, None] - means[None]) ** 2).sum(-1), axis=1)]
        recalls = [(pred[truth[mask] == c] == c).mean() for c in present if (truth[mask] == c).any()]
        uar = float(np.mean(recalls))
        assert uar > floor, (classes, uar, 1 / len(present))


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(CorpusError, match="at least 3"):
        synthesize_corpus(out=tmp_path / "x", n_speakers=2, utterances_per_speaker=2)
    with pytest.raises(ValueError, match="unknown emotion category"):
        synthesize_utterance(category="bored", speaker=speaker_profiles(n_speakers=1)[0],
                             rng=np.random.default_rng(0))


def test_prior_and_profiles_cover_all_categories():
    assert set(CATEGORY_PRIOR) == set(CATEGORIES)
    assert sum(CATEGORY_PRIOR.values()) == pytest.approx(1.0)
    assert set(EMOTION_PROFILES) == set(CATEGORIES) - {"other"}

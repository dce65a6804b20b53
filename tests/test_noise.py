"""Noise mixing at a whole-signal SNR, noise sources, and noisy corpus copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edge_ser.data.noise import (
    NOISE_SOURCES,
    BabbleNoise,
    make_noisy_corpus,
    measure_snr_db,
    mix_at_snr,
    pink_noise,
    resolve_noise,
    scale_noise_to_snr,
    white_noise,
)
from edge_ser.data.synthetic import synthesize_corpus
from edge_ser.data.table import load_corpus
from edge_ser.errors import AudioError, CorpusError
from edge_ser.io import sha256_file
from edge_ser.labels import SAMPLE_RATE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 6 speakers so babble can pick up to 5 other talkers; 3 utterances each keeps it fast.
    return synthesize_corpus(out=tmp_path_factory.mktemp("noise") / "clean", n_speakers=6, utterances_per_speaker=3,
                             seed=2)


def _snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    # Independent of measure_snr_db: the definition written out.
    return 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((noisy - clean.astype(np.float64)) ** 2))


def _clean_signal(seconds: float = 1.0, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return amplitude * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))


@pytest.mark.parametrize("snr_db", [15.0, 5.0, -3.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_mix_at_snr_hits_requested_snr(kind, snr_db):
    clean = _clean_signal()
    noise = (white_noise if kind == "white" else pink_noise)(5000, rng=np.random.default_rng(1))  # shorter: loops
    mixture = mix_at_snr(clean, 0.3 * noise, snr_db=snr_db)
    assert mixture.shape == clean.shape and mixture.dtype == np.float32
    assert abs(_snr(clean, mixture) - snr_db) < 0.01
    assert abs(measure_snr_db(clean, mixture) - snr_db) < 0.01
    long_noise = white_noise(3 * len(clean), rng=np.random.default_rng(2))  # longer: cropped
    assert abs(_snr(clean, mix_at_snr(clean, long_noise, snr_db=snr_db)) - snr_db) < 0.01


def test_joint_rescaling_avoids_clipping_and_keeps_snr():
    clean = _clean_signal(amplitude=0.9)
    noise = white_noise(len(clean), rng=np.random.default_rng(3))
    mixture = mix_at_snr(clean, noise, snr_db=0.0).astype(np.float64)
    assert np.max(np.abs(mixture)) == pytest.approx(0.99, abs=1e-6)
    unscaled = clean + scale_noise_to_snr(clean, noise, snr_db=0.0)
    gain = np.max(np.abs(mixture)) / np.max(np.abs(unscaled))
    assert gain < 0.5
    np.testing.assert_allclose(mixture, gain * unscaled, atol=1e-6)
    assert abs(measure_snr_db(gain * clean, mixture)) < 0.01


def test_pink_noise_has_equal_power_per_octave_and_white_does_not():
    n = 1 << 16
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)

    def octave_powers(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        return np.array([power[(freqs >= f) & (freqs < 2 * f)].sum() for f in (125, 250, 500, 1000, 2000, 4000)])

    pink = octave_powers(pink_noise(n, rng=np.random.default_rng(0)))
    white = octave_powers(white_noise(n, rng=np.random.default_rng(0)))
    assert np.all(np.abs(10 * np.log10(pink / pink.mean())) < 1.0)
    np.testing.assert_allclose(white[1:] / white[:-1], 2.0, rtol=0.15)


def test_babble_never_uses_the_target_speaker(corpus):
    babble = BabbleNoise(corpus)
    speaker_of = dict(zip(corpus.table["utt_id"], corpus.table["speaker"]))
    rng = np.random.default_rng(0)
    counts = set()
    for target in sorted(set(speaker_of.values())):
        for _ in range(10):
            signal, detail = babble(8000, rng=rng, speaker=target)
            assert signal.shape == (8000,) and np.mean(signal ** 2) > 0
            talkers = [speaker_of[u] for u in detail["utterances"]]
            assert target not in talkers
            assert len(set(talkers)) == len(talkers)  # distinct speakers
            counts.add(len(talkers))
    assert counts <= {3, 4, 5} and len(counts) > 1


@pytest.mark.parametrize("noise", ["white", "pink", "babble"])
def test_noisy_corpus_measured_snr(corpus, tmp_path, noise):
    test_rows = corpus.subset("test")
    for snr_db in (15.0, 5.0):
        noisy = make_noisy_corpus(corpus_dir=corpus.root, snr_db=snr_db, out=tmp_path / f"{snr_db:g}", noise=noise,
                                  split="test", seed=0)
        assert len(noisy.table) == len(test_rows) > 0
        assert list(noisy.table["utt_id"]) == list(test_rows["utt_id"])
        assert list(noisy.table["label"]) == list(test_rows["label"])
        for (_, row), (_, clean_row) in zip(noisy.table.iterrows(), test_rows.iterrows()):
            info = json.loads(row["extras"])["noisy"]
            assert info["snr_db"] == snr_db and info["noise"] == noise
            assert abs(info["snr_db_measured"] - snr_db) < 0.1
            clean, _ = sf.read(corpus.audio_path(clean_row))
            mixed, rate = sf.read(noisy.audio_path(row))
            assert rate == SAMPLE_RATE and mixed.shape == clean.shape
            assert abs(_snr(clean * info["gain"], mixed) - snr_db) < 0.1
            if noise == "babble":
                assert all(not u.startswith(row["speaker"] + "_") for u in info["noise_detail"]["utterances"])
        extra = load_corpus(noisy.root).manifest["noisy"]
        assert extra["snr_db"] == snr_db and extra["noise"] == noise and extra["seed"] == 0
        assert extra["base_corpus"] == "synthetic"
        assert extra["base_table_sha256"] == corpus.manifest["table_sha256"]


def test_noisy_corpus_is_deterministic_per_seed(corpus, tmp_path):
    runs = {}
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        made = make_noisy_corpus(corpus_dir=corpus.root, snr_db=10.0, out=tmp_path / name, noise="babble",
                                 split="all", seed=seed)
        runs[name] = (made.manifest["table_sha256"],
                      {p.name: sha256_file(p) for p in sorted((made.root / "audio").glob("*.flac"))})
    assert len(runs["a"][1]) == len(corpus.table)
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]
    assert all(runs["a"][1][k] != runs["c"][1][k] for k in runs["a"][1])


def test_noise_folder_with_other_rates_and_channels(corpus, tmp_path):
    folder = tmp_path / "noises"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "sub" / "hum.wav", 0.2 * rng.standard_normal((8000, 2)), 8000)  # stereo 8 kHz
    (folder / "notes.txt").write_text("not audio")
    noisy = make_noisy_corpus(corpus_dir=corpus.root, snr_db=5.0, out=tmp_path / "out", noise=str(folder),
                              split="valid", seed=0)
    infos = [json.loads(e)["noisy"] for e in noisy.table["extras"]]
    assert all(i["noise_detail"] == {"kind": "folder", "file": "sub/hum.wav"} for i in infos)
    assert all(abs(i["snr_db_measured"] - 5.0) < 0.1 for i in infos)


def test_bad_noise_name_lists_known_ones(corpus, tmp_path):
    with pytest.raises(CorpusError) as excinfo:
        make_noisy_corpus(corpus_dir=corpus.root, snr_db=5.0, out=tmp_path / "x", noise="traffic")
    message = str(excinfo.value)
    assert "'traffic'" in message and all(name in message for name in NOISE_SOURCES)


def test_empty_noise_folder_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="holds no audio files"):
        resolve_noise(tmp_path / "empty")


def test_bad_inputs_fail_clearly(corpus, tmp_path):
    clean = _clean_signal()
    with pytest.raises(AudioError, match="equal lengths"):
        measure_snr_db(clean, clean[:-1])
    with pytest.raises(AudioError, match="all zeros"):
        mix_at_snr(np.zeros(100), np.ones(10), snr_db=5.0)
    with pytest.raises(AudioError, match="noise signal"):
        mix_at_snr(clean, np.zeros(100), snr_db=5.0)
    with pytest.raises(AudioError, match="1-D"):
        mix_at_snr(np.ones((2, 100)), np.ones(10), snr_db=5.0)
    with pytest.raises(CorpusError, match="unknown split"):
        make_noisy_corpus(corpus_dir=corpus.root, snr_db=5.0, out=tmp_path / "x", noise="white", split="dev")
    assert measure_snr_db(clean, clean) == float("inf")

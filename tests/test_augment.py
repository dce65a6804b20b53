"""Augmented training copies (`edge-ser data augment`): deterministic per seed, labels kept, leak-free babble."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_ser.audio import load_audio
from edge_ser.cli import root
from edge_ser.data.augment import AugmentRecipe, apply_chain, draw_chain, make_augmented_corpus
from edge_ser.data.splits import speaker_folds
from edge_ser.data.synthetic import synthesize_corpus
from edge_ser.data.table import load_corpus, save_corpus
from edge_ser.labels import CATEGORIES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    synth = synthesize_corpus(out=root / "synth", n_speakers=6, utterances_per_speaker=2, seed=0)
    table = speaker_folds(synth.table, k=3, seed=0)
    return save_corpus(table, root / "corpus", corpus="synthetic", audio_root=(root / "synth" / "audio").resolve(),
                       label_mapping={c: c for c in CATEGORIES}, soft_target_rule="copied")


def _waves(corpus):
    return {r["utt_id"]: load_audio(corpus.audio_path(r)) for r in corpus.table.to_dict("records")}


def test_same_seed_same_copy_other_seed_other_copy(corpus, tmp_path):
    a = make_augmented_corpus(corpus_dir=corpus.root, out=tmp_path / "a", seed=3, progress=False)
    b = make_augmented_corpus(corpus_dir=corpus.root, out=tmp_path / "b", seed=3, progress=False)
    c = make_augmented_corpus(corpus_dir=corpus.root, out=tmp_path / "c", seed=4, progress=False)
    wa, wb, wc = _waves(a), _waves(b), _waves(c)
    assert wa.keys() == wb.keys() == set(corpus.table["utt_id"])
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert sum(not np.array_equal(wa[k], wc[k]) for k in wa) == len(wa)
    chains_a = [json.loads(e)["augment"] for e in a.table["extras"]]
    chains_b = [json.loads(e)["augment"] for e in b.table["extras"]]
    assert chains_a == chains_b
    # labels, speakers, folds and splits are the original's
    for column in ("utt_id", "label", "source_label", "speaker", "fold", "split"):
        assert a.table[column].tolist() == corpus.table[column].tolist()
    assert a.manifest["augment"]["seed"] == 3 and a.manifest["augment"]["recipe"]["gain_db"] == [-20.0, 20.0]


def test_chain_draws_follow_the_recipe():
    recipe = AugmentRecipe(noise_probability=0.5, telephone_probability=0.25, snr_db=(0, 20), gain_db=(-20, 20))
    rng = np.random.default_rng(0)
    chains = [draw_chain(recipe, rng) for _ in range(4000)]
    noisy = [c for c in chains if c["noise"] is not None]
    assert abs(len(noisy) / len(chains) - 0.5) < 0.04
    assert abs(np.mean([c["telephone"] for c in chains]) - 0.25) < 0.03
    assert all(0 <= c["snr_db"] <= 20 for c in noisy) and {c["noise"] for c in noisy} == {"babble", "white"}
    gains = np.array([c["gain_db"] for c in chains])
    assert gains.min() >= -20 and gains.max() <= 20 and gains.min() < -19 and gains.max() > 19
    with pytest.raises(ValueError, match="probability"):
        AugmentRecipe(noise_probability=1.5)
    with pytest.raises(ValueError, match="range"):
        AugmentRecipe(gain_db=(10.0, -10.0))


def test_apply_chain_gain_clips_and_noise_hits_the_snr():
    t = np.arange(16000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    loud, clipped = apply_chain(wave, {"noise": None, "snr_db": None, "telephone": False, "gain_db": 20.0}, noise=None)
    assert clipped > 0.5 and np.abs(loud).max() <= 1.0
    quiet, clipped = apply_chain(wave, {"noise": None, "snr_db": None, "telephone": False, "gain_db": -20.0}, noise=None)
    assert clipped == 0.0 and np.allclose(quiet, wave / 10, atol=1e-6)
    noise = np.random.default_rng(0).standard_normal(len(wave))
    mixed, _ = apply_chain(wave, {"noise": "white", "snr_db": 10.0, "telephone": False, "gain_db": 0.0}, noise=noise)
    snr = 10 * np.log10(np.mean(wave ** 2) / np.mean((mixed - wave) ** 2))
    assert snr == pytest.approx(10.0, abs=0.05)
    with pytest.raises(ValueError, match="noise"):
        apply_chain(wave, {"noise": "white", "snr_db": 10.0, "telephone": False, "gain_db": 0.0}, noise=None)


def test_babble_comes_from_the_same_fold_and_other_speakers(corpus, tmp_path):
    recipe = AugmentRecipe(noise_probability=1.0, noise_kinds=("babble",), telephone_probability=0.0, gain_db=(0, 0))
    copy = make_augmented_corpus(corpus_dir=corpus.root, out=tmp_path / "babble", recipe=recipe, progress=False)
    rows = corpus.table.set_index("utt_id")
    checked = 0
    for record in copy.table.to_dict("records"):
        detail = json.loads(record["extras"])["augment"]
        assert detail["noise"] == "babble"
    # Each fold's babble source only ever offers talkers of that fold other than the target speaker.
    from edge_ser.data.augment import _babble_pools

    pools = _babble_pools(load_corpus(corpus.root))
    assert pools["by"] == "fold"
    for record in corpus.table.to_dict("records"):
        pool = pools["pools"][record["fold"]]
        rng = np.random.default_rng(0)
        _, info = pool(1600, rng=rng, speaker=str(record["speaker"]))
        for utt in info["utterances"]:
            assert rows.loc[utt, "speaker"] != record["speaker"] and rows.loc[utt, "fold"] == record["fold"]
            checked += 1
    assert checked > 0


def test_cli_augment_and_bad_options(corpus, tmp_path):
    result = CliRunner().invoke(root, ["data", "augment", "--corpus-dir", str(corpus.root), "--out",
                                       str(tmp_path / "cli"), "--seed", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "augmented utterances (seed 1" in result.output
    again = CliRunner().invoke(root, ["data", "augment", "--corpus-dir", str(corpus.root), "--out",
                                      str(tmp_path / "cli"), "--no-progress"])
    assert again.exit_code != 0 and "--overwrite" in again.output + str(again.exception)
    bad = CliRunner().invoke(root, ["data", "augment", "--corpus-dir", str(corpus.root), "--out",
                                    str(tmp_path / "bad"), "--gain-db", "10", "-10"])
    assert bad.exit_code == 2 and "range" in bad.output


def test_speed_perturbation_scales_duration_and_pitch():
    from edge_ser.data.augment import speed_length, speed_perturb

    t = np.arange(16000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 200 * t)
    for factor in (0.9, 1.1):
        fast = speed_perturb(wave, factor)
        assert len(fast) == speed_length(len(wave), factor) == pytest.approx(16000 / factor, abs=1)
        spectrum = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
        peak_hz = np.argmax(spectrum) * 16000 / len(fast)
        assert peak_hz == pytest.approx(200 * factor, abs=2)
    assert np.array_equal(speed_perturb(wave, 1.0), wave)
    # In a chain the speed comes first; the noise must then have the new length.
    noise = np.random.default_rng(0).standard_normal(speed_length(len(wave), 1.1))
    mixed, _ = apply_chain(wave, {"noise": "white", "snr_db": 10.0, "telephone": False, "gain_db": 0.0,
                                  "speed": 1.1}, noise=noise)
    assert len(mixed) == len(noise)


def test_speed_draws_leave_the_other_draws_and_old_recipes_unchanged():
    plain, sped = AugmentRecipe(), AugmentRecipe(speed_probability=0.5, speed_factors=(0.9, 1.1))
    a = [draw_chain(plain, np.random.default_rng(seed)) for seed in range(400)]
    b = [draw_chain(sped, np.random.default_rng(seed)) for seed in range(400)]
    drop = lambda c: {k: v for k, v in c.items() if k != "speed"}  # noqa: E731
    assert [drop(c) for c in a] == [drop(c) for c in b]
    assert {c["speed"] for c in a} == {1.0}
    speeds = np.array([c["speed"] for c in b])
    assert set(speeds) == {0.9, 1.0, 1.1} and abs(np.mean(speeds != 1.0) - 0.5) < 0.07
    with pytest.raises(ValueError, match="speed_factors"):
        AugmentRecipe(speed_factors=(3.0,))
    with pytest.raises(ValueError, match="probability"):
        AugmentRecipe(speed_probability=-0.1)


def test_cli_augment_with_speed(corpus, tmp_path):
    result = CliRunner().invoke(root, ["data", "augment", "--corpus-dir", str(corpus.root), "--out",
                                       str(tmp_path / "speed"), "--speed-probability", "1", "--speed-factors", "0.8",
                                       "--noise-probability", "0", "--telephone-probability", "0", "--gain-db", "0", "0",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    copy = load_corpus(tmp_path / "speed")
    assert copy.manifest["augment"]["recipe"]["speed_factors"] == [0.8]
    originals, copies = _waves(corpus), _waves(copy)
    for utt, wave in copies.items():
        assert json.loads(copy.table.set_index("utt_id").loc[utt, "extras"])["augment"]["speed"] == 0.8
        assert len(wave) == pytest.approx(len(originals[utt]) / 0.8, abs=1)
    bad = CliRunner().invoke(root, ["data", "augment", "--corpus-dir", str(corpus.root), "--out",
                                    str(tmp_path / "bad"), "--speed-factors", "fast"])
    assert bad.exit_code == 2 and "0.9,1.1" in bad.output

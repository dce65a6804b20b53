"""Recording conditions (gain with clipping, telephone band) and their corpus copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_ser.data.conditions import apply_condition, make_condition_corpus, parse_condition


def _tone(freq: float, amplitude: float = 0.1, n: int = 16000) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / 16000)).astype(np.float32)


def test_gain_scales_and_counts_clipping():
    quiet = _tone(440, 0.1)
    out, info = apply_condition(quiet, "gain+10dB")
    # +10 dB = x 3.162; peak 0.316 < 1: nothing clipped
    assert np.max(np.abs(out)) == pytest.approx(0.1 * 10 ** 0.5, rel=1e-4) and info["clipped_fraction"] == 0.0
    loud, info = apply_condition(_tone(440, 0.5), "gain+20dB")
    assert np.max(np.abs(loud)) < 1.0 and info["clipped_fraction"] > 0.5  # x10: most of the sine is clipped
    down, _ = apply_condition(quiet, "gain-20dB")
    assert np.max(np.abs(down)) == pytest.approx(0.01, rel=1e-3)


def test_telephone_band_keeps_speech_band_and_removes_the_rest():
    for freq, kept in ((1000, True), (100, False), (6000, False)):
        out, _ = apply_condition(_tone(freq), "telephone")
        ratio = np.sqrt(np.mean(out[2000:-2000] ** 2)) / np.sqrt(np.mean(_tone(freq)[2000:-2000] ** 2))
        assert (ratio > 0.9) if kept else (ratio < 0.05), (freq, ratio)


def test_condition_names():
    assert parse_condition("gain+10dB").gain_db == 10 and parse_condition("gain-20dB").name == "gain-20dB"
    with pytest.raises(ValueError, match="expected 'gain\\+<dB>dB'"):
        parse_condition("loud")
    with pytest.raises(ValueError, match="within \\+/-60 dB"):
        parse_condition("gain+100dB")


def test_condition_corpus_and_cli(tmp_path):
    from edge_ser.cli import root
    from edge_ser.data.synthetic import synthesize_corpus
    from edge_ser.data.table import load_corpus

    base = synthesize_corpus(out=tmp_path / "syn", n_speakers=3, utterances_per_speaker=2, seed=0)
    copy = make_condition_corpus(corpus_dir=base.root, condition="gain+20dB", out=tmp_path / "loud", split="test")
    block = copy.manifest["condition"]
    assert block["name"] == "gain+20dB" and block["base_table_sha256"] == base.manifest["table_sha256"]
    assert len(copy.table) == int((base.table["split"] == "test").sum())
    extras = json.loads(copy.table.iloc[0]["extras"])["condition"]
    assert extras["gain_db"] == 20 and "clipped_fraction" in extras
    from edge_ser.output_folder import OutputExistsError

    with pytest.raises(OutputExistsError, match="overwrite"):
        make_condition_corpus(corpus_dir=base.root, condition="gain+20dB", out=tmp_path / "loud", split="test")
    again = make_condition_corpus(corpus_dir=base.root, condition="gain+20dB", out=tmp_path / "loud", split="test",
                                  overwrite=True)
    assert again.manifest["table_sha256"] == copy.manifest["table_sha256"]
    result = CliRunner().invoke(root, ["data", "conditions", "--corpus-dir", str(base.root), "--condition", "telephone",
                                       "--out", str(tmp_path / "cond")])
    assert result.exit_code == 0, result.output
    assert load_corpus(tmp_path / "cond" / "telephone").manifest["condition"]["kind"] == "telephone"
    bad = CliRunner().invoke(root, ["data", "conditions", "--corpus-dir", str(base.root), "--condition", "loud",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown condition 'loud'" in bad.output

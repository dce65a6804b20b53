"""`edge-ser data synth` then `edge-ser data noisy` through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edge_ser.cli import root
from edge_ser.data.table import load_corpus


def test_synth_then_noisy(tmp_path):
    runner = CliRunner()
    clean_dir, noisy_dir = tmp_path / "D", tmp_path / "N"
    result = runner.invoke(root, ["data", "synth", "--out", str(clean_dir), "--speakers", "4", "--per-speaker", "6"])
    assert result.exit_code == 0, result.output
    assert "24 utterances, 4 speakers (2 female / 2 male)" in result.output
    clean = load_corpus(clean_dir)
    assert len(clean.table) == 24 and len(list((clean_dir / "audio").glob("*.flac"))) == 24
    n_test = len(clean.subset("test"))
    assert n_test > 0

    result = runner.invoke(root, ["data", "noisy", "--corpus-dir", str(clean_dir), "--snr", "15", "--snr", "5",
                                  "--out", str(noisy_dir)])
    assert result.exit_code == 0, result.output
    for snr in (15, 5):
        folder = noisy_dir / f"snr{snr}dB"
        assert (folder / "manifest.json").is_file()
        noisy = load_corpus(folder)
        assert f"{n_test} utterances at {snr} dB SNR (babble)" in result.output
        assert noisy.manifest["noisy"]["snr_db"] == snr
        assert len(noisy.table) == n_test == len(list((folder / "audio").glob("*.flac")))
        measured = [json.loads(e)["noisy"]["snr_db_measured"] for e in noisy.table["extras"]]
        assert all(abs(m - snr) < 0.1 for m in measured)


def test_noisy_with_unknown_noise_exits_non_zero(tmp_path):
    runner = CliRunner()
    assert runner.invoke(root, ["data", "synth", "--out", str(tmp_path / "D"), "--speakers", "3",
                                "--per-speaker", "2"]).exit_code == 0
    result = runner.invoke(root, ["data", "noisy", "--corpus-dir", str(tmp_path / "D"), "--snr", "5", "--out",
                                  str(tmp_path / "N"), "--noise", "traffic"])
    assert result.exit_code != 0
    assert "unknown noise 'traffic'" in str(result.exception)

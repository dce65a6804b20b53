"""Bad option values end in one clear line, never a traceback (issue 17 item 6): click ranges refuse
them before any work (exit 2), and what only the library can judge is one `Error:` line (exit 1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edge_ser.cli import root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "corpus"
    result = CliRunner().invoke(root, ["data", "synth", "--out", str(out), "--speakers", "3", "--per-speaker", "2"])
    assert result.exit_code == 0, result.output
    return out


def _invoke(args):
    result = CliRunner().invoke(root, args)
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("args, message", [
    (["--shard-utterances", "0"], "Invalid value for '--shard-utterances': 0 is not in the range x>=1."),
    (["--batch-seconds", "0"], "Invalid value for '--batch-seconds': 0.0 is not in the range x>0."),
    (["--batch-seconds", "nan"], "Invalid value for '--batch-seconds': 'nan' is not a finite number; expected x>0."),
])
def test_features_extract_ranges(corpus, tmp_path, args, message):
    result = _invoke(["features", "extract", "--corpus-dir", str(corpus), "--model", "mfbf0", "--out",
                      str(tmp_path / "f"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "f").exists()


def test_features_extract_layer_out_of_range_is_one_error_line(corpus, tmp_path):
    result = _invoke(["features", "extract", "--corpus-dir", str(corpus), "--model", "tiny-wavlm", "--random-init",
                      "--out", str(tmp_path / "f"), "--layers", "99"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: layers [99] are out of range for 'tiny-wavlm'; expected integers in 0..3 "
                                     "(0 = transformer input, k = output of block k).")


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1."),
    (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1."),
    (["--lr", "nan"], "Invalid value for '--lr': 'nan' is not a finite number; expected x>0."),
    (["--lr", "-1e-3"], "Invalid value for '--lr': -0.001 is not in the range x>0."),
    (["--patience", "0"], "Invalid value for '--patience': 0 is not in the range x>=1."),
    (["--layer", "-1"], "Invalid value for '--layer': -1 is not in the range x>=0."),
])
def test_train_ranges(corpus, tmp_path, args, message):
    result = _invoke(["train", "--features", str(corpus), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("window, message", [
    ("0", "0.0 is not in the range 0.25<=x<=60.0."),
    ("-1", "-1.0 is not in the range 0.25<=x<=60.0."),
    ("nan", "'nan' is not a finite number; expected 0.25<=x<=60.0."),
    ("0.01", "0.01 is not in the range 0.25<=x<=60.0."),
])
def test_convert_window_range(tmp_path, window, message):
    result = _invoke(["convert", "--run", str(tmp_path), "--target", "onnx", "--out", str(tmp_path / "a"),
                      "--window-s", window])
    assert result.exit_code == 2 and f"Invalid value for '--window-s': {message}" in result.output, result.output


def test_synth_ranges(tmp_path):
    result = _invoke(["data", "synth", "--out", str(tmp_path / "s"), "--speakers", "2"])
    assert result.exit_code == 2 and "Invalid value for '--speakers': 2 is not in the range x>=3." in result.output
    assert not (tmp_path / "s").exists()

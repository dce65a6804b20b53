"""`edge-ser data prepare` and `edge-ser data stats` through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edge_ser.audio import write_audio
from edge_ser.cli import root
from edge_ser.data.stats import corpus_stats
from edge_ser.errors import CorpusError
from edge_ser.labels import SAMPLE_RATE


def _write_manifest(folder, *, with_speaker: bool = True):
    rng = np.random.default_rng(0)
    lines = ["path,speaker,gender,label,arousal" if with_speaker else "path,gender,label,arousal"]
    for i in range(8):
        name = f"clip{i}.wav"
        write_audio(folder / "wav" / name, (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).clip(-1, 1))
        gender = "female" if i % 2 else "male"
        speaker = f"spk{i % 4}," if with_speaker else ""
        lines.append(f"wav/{name},{speaker}{gender},{['happy', 'sad'][i % 2]},{0.1 * i:.1f}")
    (folder / "list.csv").write_text("\n".join(lines) + "\n")
    return folder / "list.csv"


def test_prepare_then_stats(tmp_path):
    manifest = _write_manifest(tmp_path)
    runner = CliRunner()
    out = tmp_path / "corpus"
    result = runner.invoke(root, ["data", "prepare", "--corpus", "manifest", "--raw-root", str(manifest),
                                  "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "8 utterances, 4 speakers (2 female / 2 male)" in result.output
    assert json.loads((out / "manifest.json").read_text())["counts"]["with_dimensions"]["arousal"] == 8

    result = runner.invoke(root, ["data", "stats", "--corpus-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "8 utterances" in result.output and "happy 4, sad 4" in result.output
    png = out / "stats.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    result = runner.invoke(root, ["data", "stats", "--no-plot", "--corpus-dir", str(out)])
    assert result.exit_code == 0 and "plot:" not in result.output

    stats = corpus_stats(corpus_dir=out, plot=False)
    as_dict = json.loads(json.dumps(stats.to_dict()))
    assert as_dict["speakers_by_gender"] == {"female": 2, "male": 2, "unknown": 0}
    assert as_dict["by_label"] == {"happy": 4, "sad": 4} and as_dict["plot_path"] is None
    assert sum(as_dict["by_split"].values()) == 8


def test_prepare_missing_column_fails_clearly(tmp_path):
    manifest = _write_manifest(tmp_path, with_speaker=False)
    result = CliRunner().invoke(root, ["data", "prepare", "--corpus", "manifest", "--raw-root", str(manifest),
                                       "--out", str(tmp_path / "corpus")])
    assert result.exit_code != 0
    message = result.output + str(result.exception)
    assert "lacks required column(s) ['speaker']" in message and "needs ['path', 'speaker']" in message
    assert isinstance(result.exception, CorpusError)
    assert not (tmp_path / "corpus" / "manifest.json").exists()

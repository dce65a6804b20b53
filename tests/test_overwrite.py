"""A finished output folder is replaced only with --overwrite, in every command, and nothing else is
ever deleted (issue 17 item 1); bad SNRs are refused before any folder is made."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_ser.cli import root
from edge_ser.data.table import load_corpus
from edge_ser.output_folder import OutputExistsError


def _synth(out, *extra: str, speakers: int = 4, per_speaker: int = 2):
    return CliRunner().invoke(root, ["data", "synth", "--out", str(out), "--speakers", str(speakers),
                                     "--per-speaker", str(per_speaker), *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "corpus"
    result = _synth(out, speakers=4, per_speaker=3)
    assert result.exit_code == 0, result.output
    return out


def test_synth_refuses_a_finished_corpus_and_replaces_it_whole_with_overwrite(tmp_path):
    out = tmp_path / "syn"
    assert _synth(out, speakers=4, per_speaker=3).exit_code == 0
    before = (out / "utterances.csv").read_bytes()

    refused = _synth(out, speakers=3, per_speaker=2)
    assert refused.exit_code == 1
    assert isinstance(refused.exception, OutputExistsError)
    message = str(refused.exception)
    assert f"{out} already holds a prepared corpus (corpus 'synthetic', 12 utterances)" in message
    assert "expected a new or empty folder" in message and "Pass --overwrite" in message
    assert (out / "utterances.csv").read_bytes() == before and len(list((out / "audio").iterdir())) == 12

    replaced = _synth(out, "--overwrite", speakers=3, per_speaker=2)
    assert replaced.exit_code == 0, replaced.output
    assert len(load_corpus(out).table) == 6
    assert len(list((out / "audio").iterdir())) == 6  # no orphan audio of the old corpus


def test_prepare_refuses_a_finished_corpus(corpus, tmp_path):
    table = load_corpus(corpus).table
    listing = tmp_path / "list.csv"
    rows = ["path,speaker,label"]
    rows += [f"{corpus / 'audio' / p},{s},neutral" for p, s in zip(table["path"], table["speaker"])]
    listing.write_text("\n".join(rows) + "\n")
    args = ["data", "prepare", "--corpus", "manifest", "--raw-root", str(listing), "--out", str(tmp_path / "p")]
    assert CliRunner().invoke(root, args).exit_code == 0
    refused = CliRunner().invoke(root, args)
    assert refused.exit_code == 1 and "already holds a prepared corpus" in str(refused.exception)
    again = CliRunner().invoke(root, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    # The prepared corpus points at audio elsewhere: --overwrite removed its table, never that audio.
    assert len(list((corpus / "audio").iterdir())) == len(table)


def test_a_folder_of_another_kind_is_never_replaced(corpus, tmp_path):
    before = {p.name: p.read_bytes() for p in corpus.iterdir() if p.is_file()}
    for extra in ((), ("--overwrite",)):
        result = CliRunner().invoke(root, ["features", "extract", "--corpus-dir", str(corpus), "--model", "mfbf0",
                                           "--out", str(corpus), "--shard-utterances", "64", *extra])
        assert result.exit_code == 1
        message = str(result.exception)
        assert "holds a manifest.json of format 'edge-ser-corpus'" in message
        assert "expected a new folder for a feature cache ('edge-ser-features')" in message
        assert "--overwrite does not apply: choose another --out" in message
    assert {p.name: p.read_bytes() for p in corpus.iterdir() if p.is_file()} == before
    load_corpus(corpus)


def test_features_extract_replaces_a_finished_cache_only_with_overwrite(corpus, tmp_path):
    feats = tmp_path / "f"
    base = ["features", "extract", "--corpus-dir", str(corpus), "--model", "mfbf0", "--out", str(feats)]
    assert CliRunner().invoke(root, [*base, "--shard-utterances", "64"]).exit_code == 0
    manifest = json.loads((feats / "manifest.json").read_text())
    same = CliRunner().invoke(root, [*base, "--shard-utterances", "64"])  # same settings: kept as is
    assert same.exit_code == 0 and json.loads((feats / "manifest.json").read_text()) == manifest
    other = CliRunner().invoke(root, [*base, "--shard-utterances", "5"])
    assert other.exit_code == 1
    assert "already holds a feature cache (12 utterances of mfbf0" in str(other.exception)
    assert "Pass --overwrite" in str(other.exception)
    assert json.loads((feats / "manifest.json").read_text()) == manifest
    replaced = CliRunner().invoke(root, [*base, "--shard-utterances", "5", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert len(list((feats / "layer_00").iterdir())) == 3  # 12 utterances in shards of 5, nothing left over


@pytest.mark.parametrize("snr", ["nan", "inf", "200", "1e308", "-100"])
def test_noisy_refuses_an_snr_out_of_range_before_making_any_folder(corpus, tmp_path, snr):
    out = tmp_path / "n"
    result = CliRunner().invoke(root, ["data", "noisy", "--corpus-dir", str(corpus), "--snr", "5", "--snr", snr,
                                       "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--snr'" in result.output
    assert "expected a finite SNR between -30 and 60 dB" in result.output and "16-bit storage" in result.output
    assert not out.exists()


def test_noisy_refuses_every_finished_copy_before_making_any(corpus, tmp_path):
    out = tmp_path / "n"
    assert CliRunner().invoke(root, ["data", "noisy", "--corpus-dir", str(corpus), "--snr", "10", "--out", str(out),
                                     "--noise", "white"]).exit_code == 0
    result = CliRunner().invoke(root, ["data", "noisy", "--corpus-dir", str(corpus), "--snr", "5", "--snr", "10",
                                       "--out", str(out), "--noise", "white"])
    assert result.exit_code == 1 and f"{out / 'snr10dB'} already holds a prepared corpus" in str(result.exception)
    assert not (out / "snr5dB").exists()  # refused before the first copy, not half-way
    manifest = json.loads((out / "snr10dB" / "manifest.json").read_text(), parse_constant=_no_infinity)
    assert manifest["noisy"]["snr_db"] == 10


def _no_infinity(name: str):
    raise AssertionError(f"manifest.json holds {name}: not strict JSON")


def test_saliency_replaces_a_result_only_with_overwrite(corpus, tmp_path):
    feats, sal = tmp_path / "f", tmp_path / "s"
    assert CliRunner().invoke(root, ["features", "extract", "--corpus-dir", str(corpus), "--model", "tiny-wavlm",
                                     "--random-init", "--out", str(feats)]).exit_code == 0
    args = ["saliency", "--features", str(feats), "--out", str(sal), "--split", "all", "--max-utterances", "8"]
    assert CliRunner().invoke(root, args).exit_code == 0
    before = (sal / "saliency.json").read_bytes()
    refused = CliRunner().invoke(root, [*args, "--seed", "1"])
    assert refused.exit_code == 1 and isinstance(refused.exception, OutputExistsError)
    assert str(refused.exception) == (f"{sal} already holds a saliency result (saliency.json); expected a new or empty "
                                      "folder. Pass --overwrite to replace it, or choose another --out.")
    assert (sal / "saliency.json").read_bytes() == before
    assert CliRunner().invoke(root, [*args, "--seed", "1", "--overwrite"]).exit_code == 0

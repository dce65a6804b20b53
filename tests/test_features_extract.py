"""Extraction into the feature cache (tiny models, synthetic audio), the CLI, truncation savings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_ser.audio import load_audio, write_audio
from edge_ser.data.synthetic import synthesize_corpus
from edge_ser.data.table import load_corpus, save_corpus
from edge_ser.errors import ManifestError
from edge_ser.features.cache import FeatureCache
from edge_ser.features.extract import extract_features
from edge_ser.output_folder import OutputExistsError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out=out, n_speakers=4, utterances_per_speaker=6, seed=0)
    return out


@pytest.fixture(scope="module")
def equal_length_corpus(tmp_path_factory, corpus_dir):
    """12 clips cut to 0.8 s or 1.1 s, so equal-length batches form (the synthetic ones all differ)."""
    src = load_corpus(corpus_dir)
    out = tmp_path_factory.mktemp("equal") / "corpus"
    rows = []
    for i, row in src.table.head(12).iterrows():
        n = 12_800 if i % 3 else 17_600
        audio = load_audio(src.audio_path(row.to_dict()))[:n]
        write_audio(out / "audio" / f"{row['utt_id']}.wav", audio)
        rows.append({**row.to_dict(), "path": f"{row['utt_id']}.wav", "duration_s": n / 16_000})
    save_corpus(rows, out, corpus="equal", audio_root="audio", label_mapping={}, soft_target_rule="copied")
    return out


def _shard_bytes(root):  # type: ignore[no-untyped-def]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("layer_*/*.npy"))}


def test_fm_cache_matches_direct_hidden_states(tmp_path, corpus_dir):
    from edge_ser.fm import load_foundation_model

    cache = extract_features(corpus_dir=corpus_dir, model="tiny-wavlm", out=tmp_path / "f", layers=[1, 3],
                             random_init=True, shard_utterances=10, show_progress=False)
    assert cache.pooled.shape == (24, 4, 64) and cache.layers_stored == (1, 3)
    assert sorted(p.name for p in (tmp_path / "f" / "layer_03").iterdir()) == [
        "shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    m = cache.manifest
    assert (m["model"], m["n_layers"], m["hidden_size"], m["frame_rate"], m["dtype"]) == (
        "tiny-wavlm", 3, 64, 50.0, "float16")
    assert m["weights_source"]["kind"] and m["corpus"]["table_sha256"] == load_corpus(corpus_dir).manifest[
        "table_sha256"]
    assert m["throughput"]["utterances"] == 24 and m["throughput"]["realtime_factor"] > 0
    # An independent unbatched computation through the fm API gives the same numbers.
    loaded = load_foundation_model("tiny-wavlm", random_init=True, seed=0)
    corpus = load_corpus(corpus_dir)
    for row in (0, 17):
        wave = torch.from_numpy(load_audio(corpus.audio_path(row)))[None]
        with torch.inference_mode():
            states, frame_lengths = loaded.hidden_states(wave, torch.tensor([wave.shape[1]]))
        t = int(frame_lengths[0])
        for k in range(4):
            np.testing.assert_allclose(cache.pooled[row, k], states[k][0, :t].mean(0).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(cache.frames(row, 3), states[3][0, :t].numpy().astype(np.float16))
        assert cache.frames(corpus.table["utt_id"][row], 1).shape == (t, 64)


@pytest.mark.parametrize("model", ["tiny-whisper", "tiny-hubert"])
def test_equal_length_batches_equal_one_by_one(tmp_path, equal_length_corpus, model):
    batched = extract_features(corpus_dir=equal_length_corpus, model=model, out=tmp_path / "b", layers="all",
                               random_init=True, batch_seconds=30.0, show_progress=False)
    single = extract_features(corpus_dir=equal_length_corpus, model=model, out=tmp_path / "s", layers="all",
                              random_init=True, batch_seconds=0.5, show_progress=False)  # < 0.8 s: one by one
    np.testing.assert_allclose(batched.pooled, single.pooled, rtol=1e-5, atol=1e-6)
    for row in range(len(batched)):
        for k in batched.layers_stored:
            a, b = batched.frames(row, k).astype(np.float32), single.frames(row, k).astype(np.float32)
            assert a.shape == b.shape
            # Batched BLAS kernels round differently (~1e-6 absolute in float32); float16
            # storage may then round a value either way: one fp16 step, or 1e-5 near zero.
            np.testing.assert_allclose(a, b, rtol=2 ** -10, atol=1e-5)


def test_mfbf0_goes_through_the_same_path(tmp_path, corpus_dir):
    cache = extract_features(corpus_dir=corpus_dir, model="mfbf0", out=tmp_path / "m", shard_utterances=16,
                             show_progress=False)
    assert cache.layers_stored == (0,) and cache.pooled.shape == (24, 1, 42)
    assert (cache.manifest["frame_rate"], cache.manifest["n_layers"]) == (100.0, 0)
    frames = cache.frames(5, 0)
    duration = cache.table["duration_s"][5]
    assert frames.shape == (int(round(duration * 16_000)) // 160, 42)
    # Per-utterance normalised features: pooled mean ~ 0, and it is the mean of the stored frames.
    np.testing.assert_allclose(cache.pooled[5, 0], frames.astype(np.float32).mean(0), atol=2e-3)
    with pytest.raises(ValueError, match="one feature 'layer' 0"):
        extract_features(corpus_dir=corpus_dir, model="mfbf0", out=tmp_path / "x", layers=[1], show_progress=False)


def test_interrupted_run_resumes_byte_identical(tmp_path, corpus_dir):
    kwargs = dict(corpus_dir=corpus_dir, model="tiny-whisper", layers=[2], random_init=True, shard_utterances=8,
                  show_progress=False)
    reference = extract_features(out=tmp_path / "ref", **kwargs)

    def crash_after_first(shard: int, n_shards: int) -> None:
        assert n_shards == 3
        raise KeyboardInterrupt("simulated kill after shard 0")

    with pytest.raises(KeyboardInterrupt):
        extract_features(out=tmp_path / "run", on_shard=crash_after_first, **kwargs)
    assert (tmp_path / "run" / "progress.json").is_file() and not (tmp_path / "run" / "manifest.json").exists()
    with pytest.raises(ManifestError, match="unfinished extraction"):
        FeatureCache.open(tmp_path / "run")
    seen: list[int] = []
    resumed = extract_features(out=tmp_path / "run", on_shard=lambda s, n: seen.append(s), **kwargs)
    assert seen == [1, 2]  # shard 0 was not recomputed
    assert resumed.manifest["throughput"]["shards_resumed"] == 1
    assert _shard_bytes(tmp_path / "run") == _shard_bytes(tmp_path / "ref")
    assert (tmp_path / "run" / "pooled.npy").read_bytes() == (tmp_path / "ref" / "pooled.npy").read_bytes()
    assert not (tmp_path / "run" / "progress.json").exists()
    FeatureCache.open(tmp_path / "run", verify=True)
    # A finished identical cache is returned as is; other settings replace it only with overwrite.
    again = extract_features(out=tmp_path / "run", on_shard=lambda s, n: seen.append(s), **kwargs)
    assert seen == [1, 2] and again.manifest == resumed.manifest
    with pytest.raises(OutputExistsError, match=r"already holds a feature cache \(24 utterances.*--overwrite"):
        extract_features(out=tmp_path / "run", **{**kwargs, "layers": None})
    assert FeatureCache.open(tmp_path / "run", verify=True).layers_stored == (2,)
    other = extract_features(out=tmp_path / "run", overwrite=True, **{**kwargs, "layers": None})
    assert other.layers_stored == () and not list((tmp_path / "run").glob("layer_*"))


def test_cli_corpus_to_features_to_saliency(tmp_path, corpus_dir):
    from edge_ser.cli import root

    runner = CliRunner()
    feats, sal = tmp_path / "feats", tmp_path / "sal"
    result = runner.invoke(root, ["features", "extract", "--corpus-dir", str(corpus_dir), "--model", "tiny-wavlm",
                                  "--out", str(feats), "--layers", "2", "--random-init", "--no-resume"])
    assert result.exit_code == 0, result.output
    assert "24 utterances" in result.output and "x real time" in result.output
    result = runner.invoke(root, ["saliency", "--features", str(feats), "--out", str(sal), "--rule",
                                  "earliest-within", "--tolerance", "0.05", "--savings"])
    assert result.exit_code == 0, result.output
    data = json.loads((sal / "saliency.json").read_text())
    assert data["layers"] == [1, 2, 3] and data["chosen_layer"] in (1, 2, 3) and data["rule"] == "earliest-within"
    assert data["n_utterances"] == int((load_corpus(corpus_dir).table["split"] == "train").sum())
    assert len(data["targets"]) >= 10 and (sal / "saliency.png").is_file()
    assert f"chosen layer: {data['chosen_layer']}" in result.output and "GFLOPs" in result.output
    bad = runner.invoke(root, ["features", "extract", "--corpus-dir", str(corpus_dir), "--model", "nope",
                               "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "tiny-wavlm" in bad.output  # choices come from the registry


def test_truncation_savings_tiny(tmp_path):
    from edge_ser.fm.savings import truncation_savings

    report = truncation_savings("tiny-wavlm", k=1, durations_s=(0.5, 1.0), repeats=1)
    report2 = truncation_savings("tiny-wavlm", k=2, durations_s=(0.5,), measure_time=False)
    assert report.n_layers == 3 and report.blocks_fraction_saved == pytest.approx(2 / 3)
    assert 0 < report.params_truncated < report2.params_truncated < report.params_full
    short, long = report.per_duration
    assert 0 < short.flops_truncated < report2.per_duration[0].flops_truncated < short.flops_full
    assert long.flops_full > 1.8 * short.flops_full  # cost grows with the input length
    assert short.cpu_ms_full > 0 and report2.per_duration[0].cpu_ms_full is None
    assert report.paper_reported_saving == 0.16
    assert json.loads(report.to_json())["k"] == 1 and "tiny-wavlm" in report.to_text()
    with pytest.raises(ValueError, match="out of range"):
        truncation_savings("tiny-wavlm", k=4, measure_time=False)

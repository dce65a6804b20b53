"""Stream features (`edge-ser features extract --stream-hop`): a head trained on the frames a cached
stream computes, converted to that stream.

One tiny chain per module: a 3-speaker synthetic corpus, tiny-whisper (random init) stream features
(0.2 s hops, 0.5 s context, every layer), a 1-layer TC-GRU trained 2 epochs on layer 2, and an ONNX
fp32 streaming artifact of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_ser.errors import CorpusError

HOP_S, CONTEXT_S, LAYER = 0.2, 0.5, 2
HOP = int(HOP_S * 16000)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_head_config):
    from edge_ser.data.synthetic import synthesize_corpus
    from edge_ser.features.extract import StreamFeatures, extract_features
    from edge_ser.train.dataset import CacheFeatureSource
    from edge_ser.train.trainer import train_run

    root = tmp_path_factory.mktemp("streamfeat")
    corpus = synthesize_corpus(out=root / "corpus", n_speakers=3, utterances_per_speaker=4, seed=0)
    stream = StreamFeatures(hop_s=HOP_S, context_s=CONTEXT_S)
    extract_features(corpus_dir=corpus.root, model="tiny-whisper", out=root / "stream", layers="all",
                     random_init=True, show_progress=False, stream=stream)
    extract_features(corpus_dir=corpus.root, model="tiny-whisper", out=root / "whole", layers=[LAYER],
                     random_init=True, show_progress=False)
    config = tiny_head_config
    train_run(source=CacheFeatureSource(root / "stream", layer=LAYER), out=root / "run", config=config,
              progress=False)
    return root


def test_stream_features_are_the_frames_a_cached_stream_computes(chain):
    """Every stored layer equals the offline computation of a cached stream over the clip padded to whole
    hops (float16 storage), the frame count is whole hops, and the manifest says how they were made."""
    from edge_ser.audio import load_audio
    from edge_ser.converters.stream_fm import cached_reference_frames
    from edge_ser.data.table import load_corpus
    from edge_ser.features.cache import FeatureCache
    from edge_ser.fm import load_foundation_model

    cache = FeatureCache.open(chain / "stream")
    stream = cache.manifest["stream"]
    assert stream == {"fm_mode": "cached", "hop_s": HOP_S, "context_s": CONTEXT_S, "hop_samples": HOP,
                      "window_samples": 8000, "hop_frames": 10, "context_frames": 15}
    assert cache.manifest["plan"]["stream"] == stream and cache.layers_stored == (0, 1, 2, 3)
    corpus = load_corpus(chain / "corpus")
    loaded = load_foundation_model("tiny-whisper", random_init=True, seed=0)
    utt = 0
    wave = load_audio(corpus.audio_path(utt))
    n_hops = -(-len(wave) // HOP)
    padded = np.concatenate([wave, np.zeros(n_hops * HOP - len(wave), np.float32)])
    for layer in (1, LAYER, 3):
        expected = cached_reference_frames(loaded.truncated(layer), padded, hop_samples=HOP, context_frames=15)[0]
        stored = np.asarray(cache.frames(corpus.table["utt_id"][utt], layer), dtype=np.float32)
        assert stored.shape == (n_hops * 10, expected.shape[1])
        np.testing.assert_allclose(stored, expected.numpy(), rtol=2e-3, atol=2e-3)
    # and they are not the whole clip's frames (attention to the past only, a running level): the
    # difference is 10x the float16 tolerance above
    whole = np.asarray(FeatureCache.open(chain / "whole").frames(corpus.table["utt_id"][utt], LAYER), np.float32)
    streamed = np.asarray(cache.frames(corpus.table["utt_id"][utt], LAYER), np.float32)
    n = min(len(whole), len(streamed))
    assert np.abs(whole[:n] - streamed[:n]).max() > 0.02


def test_a_stream_trained_run_converts_to_its_stream_and_verifies(chain):
    """The run converts to the streaming artifact of its features' geometry; `verify` streams the test
    clips through it and compares with the offline computation (the frames the run trained on)."""
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.converters.verify import verify_artifact

    out = chain / "artifact"
    convert_run(run_dir=chain / "run", target="onnx", precision="fp32", out=out, window_s=CONTEXT_S,
                validation_utterances=2, hop_s=HOP_S)
    result = verify_artifact(artifact=out, run_dir=chain / "run", corpus_dir=chain / "corpus", progress=False)
    assert result.passed and result.hop_s == pytest.approx(HOP_S), "\n".join(r.to_text() for r in result.reports)
    # the stream the features describe is the stream the artifact runs
    from edge_ser.features.cache import FeatureCache
    from edge_ser.runtime.artifact import read_manifest

    features, artifact = FeatureCache.open(chain / "stream").manifest["stream"], read_manifest(out).streaming
    assert {k: artifact[k] for k in ("fm_mode", "hop_samples", "window_samples", "hop_frames")} == {
        k: features[k] for k in ("fm_mode", "hop_samples", "window_samples", "hop_frames")}
    assert artifact["window_frames"] - artifact["hop_frames"] == features["context_frames"]


@pytest.mark.parametrize(("hop_s", "window_s", "message"), [
    (None, CONTEXT_S, "trained on stream features .* a windowed artifact would feed its head whole-window features"),
    (0.1, CONTEXT_S, "got --stream-hop 0.1 --window-s 0.5 .* Convert with --stream-hop 0.2 --window-s 0.5"),
    (HOP_S, 1.0, "got --stream-hop 0.2 --window-s 1 .* Convert with --stream-hop 0.2 --window-s 0.5"),
])
def test_a_stream_trained_run_refuses_other_artifacts(chain, tmp_path, hop_s, window_s, message):
    from edge_ser.converters.pipeline import convert_run

    with pytest.raises(ValueError, match=message):
        convert_run(run_dir=chain / "run", target="onnx", precision="fp32", out=tmp_path / "a", window_s=window_s,
                    validation_utterances=2, hop_s=hop_s)
    assert not (tmp_path / "a").exists()


def test_training_refuses_mixed_or_windowed_stream_features(chain):
    from edge_ser.train.dataset import open_training_source

    with pytest.raises(CorpusError, match="holds whole-clip features, --features .* stream features"):
        open_training_source(chain / "stream", layer=LAYER, augment=[chain / "whole"])
    with pytest.raises(CorpusError, match="holds stream features, which train on whole clips"):
        open_training_source(chain / "stream", layer=LAYER, windows=True)


def test_predicting_from_audio_computes_stream_frames_for_a_stream_cache(chain):
    """evaluate --source audio (noisy copies, other corpora) of a stream run computes the frames the
    stream computes, as the cache stored them."""
    from edge_ser.data.table import load_corpus
    from edge_ser.evaluation.predict import _AudioFrames
    from edge_ser.features.cache import FeatureCache

    cache = FeatureCache.open(chain / "stream")
    frames = _AudioFrames(cache.manifest, layer=LAYER, cache_dir=str(chain / "stream"))
    corpus = load_corpus(chain / "corpus")
    utt_id = corpus.table["utt_id"][1]
    computed = frames(utt_id, corpus.audio_path(1))
    np.testing.assert_allclose(computed, np.asarray(cache.frames(utt_id, LAYER), np.float32), rtol=2e-3, atol=2e-3)


def test_stream_feature_options_are_checked(chain, tmp_path):
    from edge_ser.cli import root
    from edge_ser.features.extract import StreamFeatures, extract_features

    with pytest.raises(ValueError, match="stream features of 'tiny-wavlm': they are the frames of a cached stream, "
                                         "which is built for Whisper only"):
        extract_features(corpus_dir=chain / "corpus", model="tiny-wavlm", out=tmp_path / "w", random_init=True,
                         show_progress=False, stream=StreamFeatures(hop_s=HOP_S, context_s=CONTEXT_S))
    with pytest.raises(ValueError, match="hop_s=1.0 is not shorter than context_s=1.0"):
        StreamFeatures(hop_s=1.0, context_s=1.0)
    with pytest.raises(ValueError, match="multiple of the model's frame step"):
        extract_features(corpus_dir=chain / "corpus", model="tiny-whisper", out=tmp_path / "odd", random_init=True,
                         show_progress=False, stream=StreamFeatures(hop_s=0.21, context_s=CONTEXT_S))
    base = ["features", "extract", "--corpus-dir", str(chain / "corpus"), "--model", "tiny-whisper", "--random-init",
            "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(root, [*base, "--stream-context", "3.0"])
    assert result.exit_code == 2 and "--stream-context only applies with --stream-hop" in result.output
    result = CliRunner().invoke(root, [*base, "--stream-hop", "0.2", "--engine", "ray"])
    assert result.exit_code == 2 and "--stream-hop runs on the local engine only" in result.output
    result = CliRunner().invoke(root, [*base, "--stream-hop", "0.2", "--stream-context", "0.5", "--layers", "2"])
    assert result.exit_code == 0, result.output
    assert "stream features: as a cached stream computes them, 0.2 s hops, 0.5 s context" in result.output
    torch.testing.assert_close(  # the CLI and the API store the same frames
        torch.from_numpy(np.asarray(__import__("edge_ser.features.cache", fromlist=["FeatureCache"]).FeatureCache.open(
            tmp_path / "cli").frames(0, 2), np.float32)),
        torch.from_numpy(np.asarray(__import__("edge_ser.features.cache", fromlist=["FeatureCache"]).FeatureCache.open(
            chain / "stream").frames(0, 2), np.float32)))

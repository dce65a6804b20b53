"""Real tier: RAVDESS -> Whisper-base features (real weights) -> CCS saliency.

Work folder: ``$EDGE_SER_WORK`` when set (then reused by later sessions and by other
real tests), else a session temp folder. Inside it:

- ``ravdess/corpus/``: the prepared corpus (6 speaker folds; split = fold 0);
- ``ravdess/features-whisper-base/``: the feature cache. One extraction pass stores the
  pooled means of all 7 hidden states (for saliency) and, temporarily, the frames of all
  layers (~1.9 GB as float16); after saliency only the frames training reads are kept:
  the chosen layer k* and the last layer 6 (the paper's "final layer" baseline), ~0.55 GB;
- ``ravdess/saliency-whisper-base/``: saliency.json + saliency.png.

The session fixture ``ravdess_whisper_features`` lives in tests/conftest.py (other real tests use it).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_ser.fm import get_spec

pytestmark = pytest.mark.real

WHISPER_BASE_LAYERS = get_spec("whisper-base").n_layers


def test_whisper_base_features_of_all_ravdess_clips(ravdess_whisper_features):
    from edge_ser.data.table import load_corpus
    from edge_ser.features.cache import FeatureCache

    corpus = load_corpus(ravdess_whisper_features.corpus_dir)
    cache = FeatureCache.open(ravdess_whisper_features.features_dir, verify=True)
    assert len(cache) == len(corpus.table) == 1440
    assert cache.pooled.shape == (1440, WHISPER_BASE_LAYERS + 1, 512)
    assert np.isfinite(cache.pooled).all()
    assert cache.manifest["weights_source"]["kind"] == "ctranslate2"  # the real weights
    speed = cache.manifest["throughput"]
    print(f"\nWhisper-base on RAVDESS: {speed}")
    if speed["wall_s"]:  # None when this session reused a finished cache
        assert speed["realtime_factor"] > 1.0 and speed["utterances_per_s"] > 0
    # Frame counts follow the 50 Hz rate: ceil(samples / 320) per clip (samples a multiple of 160).
    durations = cache.table["duration_s"].to_numpy()
    expected = np.ceil(np.round(durations * 16_000) / 320)
    assert np.abs(cache.frame_counts() - expected).max() <= 1
    k = cache.layers_stored[0]
    frames = cache.frames(0, k)
    assert frames.dtype == np.float16 and frames.shape == (cache.frame_counts()[0], 512)
    np.testing.assert_allclose(frames.astype(np.float32).mean(0), cache.pooled[0, k], atol=5e-3, rtol=5e-3)


def test_saliency_curve_on_ravdess(ravdess_whisper_features):
    from edge_ser.saliency import load_saliency

    result = load_saliency(ravdess_whisper_features.saliency_dir)
    print("\n" + result.to_text())
    assert result.layers == tuple(range(1, WHISPER_BASE_LAYERS + 1))
    assert 1 <= result.chosen_layer <= WHISPER_BASE_LAYERS
    # RAVDESS has no A/V/D scores and no contempt/other labels: those targets are dropped.
    dropped = dict(result.dropped_targets)
    assert {"arousal", "valence", "dominance"} <= set(dropped)
    assert "p_happy" in result.targets and "p_angry" in result.targets
    mu = np.asarray(result.mu)
    assert np.isfinite(mu).all() and (mu > 0).all()
    # A real model's layers are not interchangeable: the curve has a clear peak.
    assert mu.max() > 1.05 * mu.min()
    assert result.mu[result.layers.index(result.chosen_layer)] == pytest.approx(mu.max())
    assert (ravdess_whisper_features.saliency_dir / "saliency.png").is_file()

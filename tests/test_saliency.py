"""CCS layer saliency: vectorised == loop, planted layer found, edge cases, rules, saving."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edge_ser.data.table import normalise_table
from edge_ser.errors import CorpusError
from edge_ser.features.cache import FeatureCacheWriter
from edge_ser.labels import CATEGORIES, DIMENSIONS
from edge_ser.saliency import (
    SaliencyResult, ccs_scores, ccs_scores_reference, choose_layer, layer_saliency, load_saliency, save_saliency,
)


def _table(n: int, rng: np.random.Generator, *, with_dims: bool = True) -> pd.DataFrame:
    probs = rng.dirichlet(np.ones(len(CATEGORIES)), size=n)
    rows = []
    for i in range(n):
        row = {"utt_id": f"u{i:04d}", "path": f"u{i:04d}.wav", "speaker": f"s{i % 7}",
               "split": "train" if i % 5 else "valid", "duration_s": 1.0}
        row.update({f"p_{c}": probs[i, j] for j, c in enumerate(CATEGORIES)})
        if with_dims:
            row.update({d: rng.uniform() for d in DIMENSIONS})
        rows.append(row)
    return normalise_table(rows)


def _cache(tmp_path, pooled: np.ndarray, table: pd.DataFrame):  # type: ignore[no-untyped-def]
    writer = FeatureCacheWriter(tmp_path / "feat", plan={"model": "planted"}, layers_stored=())
    writer.write_shard(shard=0, utt_ids=table["utt_id"].tolist(), frames={}, pooled=pooled)
    return writer.finalize(table=table, manifest={
        "model": "planted", "n_layers": pooled.shape[1] - 1, "hidden_size": pooled.shape[2], "frame_rate": 50.0})


def _targets(table: pd.DataFrame) -> np.ndarray:
    return table.loc[:, list(DIMENSIONS) + [f"p_{c}" for c in CATEGORIES]].to_numpy(dtype=np.float64)


def test_vectorised_matches_loop_reference():
    rng = np.random.default_rng(1)
    pooled = rng.normal(size=(60, 9)) @ rng.normal(size=(9, 9))  # correlated units
    targets = np.column_stack([pooled[:, 0] + rng.normal(size=60), rng.normal(size=60), rng.uniform(size=60)])
    fast = ccs_scores(pooled, targets)
    slow = ccs_scores_reference(pooled, targets)
    assert fast.shape == (9, 3)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-10)
    # Unit 0 drives target 0: its r alone exceeds every other unit's total score there.
    assert np.argmax(fast[:, 0]) == 0


def test_constant_dimension_gets_zero_correlation():
    rng = np.random.default_rng(2)
    pooled = rng.normal(size=(40, 6))
    pooled[:, 3] = 7.5  # a dead unit
    targets = rng.normal(size=(40, 2))
    fast = ccs_scores(pooled, targets)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast[3], 0.0, atol=1e-12)  # r = 0 and |corr| with every unit = 0
    np.testing.assert_allclose(fast, ccs_scores_reference(pooled, targets), atol=1e-10)


def test_ccs_shape_errors():
    with pytest.raises(ValueError, match="same n"):
        ccs_scores(np.zeros((5, 3)), np.zeros((4, 2)))


def _planted_pooled(table: pd.DataFrame, rng: np.random.Generator, *, n_layers: int = 5, width: int = 24,
                    noise: dict[int, float]) -> np.ndarray:
    """Layers in `noise` carry the targets (mixed into half the units) plus Gaussian noise of that scale."""
    targets = _targets(table)
    n = len(table)
    pooled = rng.normal(size=(n, n_layers + 1, width))
    mix = rng.normal(size=(targets.shape[1], width // 2))  # shared, so only the noise level differs
    for layer, scale in noise.items():
        signal = (targets - targets.mean(0)) / targets.std(0) @ mix
        pooled[:, layer, : width // 2] = signal + scale * rng.normal(size=signal.shape)
    return pooled.astype(np.float32)


def test_planted_layer_is_chosen(tmp_path):
    rng = np.random.default_rng(3)
    table = _table(300, rng)
    cache = _cache(tmp_path, _planted_pooled(table, rng, noise={3: 0.3}), table)
    result = layer_saliency(cache)
    assert result.layers == (1, 2, 3, 4, 5)
    assert result.chosen_layer == 3 and result.best_layer == 3
    assert result.mu[2] > 2 * max(result.mu[:2] + result.mu[3:])
    assert len(result.targets) == 12 and result.dropped_targets == ()
    assert result.n_utterances == int((table["split"] == "train").sum())
    assert len(result.scores) == 5 and all(len(row) == 12 for row in result.scores)
    np.testing.assert_allclose(result.mu, np.mean(result.scores, axis=1))


def test_earliest_within_rule_and_ties(tmp_path):
    assert choose_layer([1, 2, 3, 4], [0.10, 0.196, 0.20, 0.15], rule="argmax") == 3
    assert choose_layer([1, 2, 3, 4], [0.10, 0.196, 0.20, 0.15], rule="earliest-within", tolerance=0.05) == 2
    assert choose_layer([1, 2, 3, 4], [0.10, 0.196, 0.20, 0.15], rule="earliest-within", tolerance=0.01) == 3
    assert choose_layer([1, 2, 3], [0.3, 0.5, 0.5]) == 2  # tie -> lower layer
    with pytest.raises(ValueError, match="unknown rule"):
        choose_layer([1], [0.1], rule="max")
    rng = np.random.default_rng(4)
    table = _table(300, rng)
    # Layer 2 carries the targets a little more noisily than layer 4.
    cache = _cache(tmp_path, _planted_pooled(table, rng, noise={2: 3.0, 4: 1.5}), table)
    best = layer_saliency(cache, rule="argmax")
    early = layer_saliency(cache, rule="earliest-within", tolerance=0.2)
    assert best.chosen_layer == 4
    assert best.mu[1] >= 0.8 * best.mu[3], best.mu  # precondition of the next line
    assert early.chosen_layer == 2 and early.best_layer == 4


def test_nan_in_pooled_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(5)
    table = _table(50, rng)
    pooled = rng.normal(size=(50, 3, 8)).astype(np.float32)
    pooled[[1, 2, 6], 2, 0] = np.nan  # rows 1, 2, 6 are train rows (i % 5 != 0)
    cache = _cache(tmp_path, pooled, table)
    with pytest.raises(ValueError, match=r"layer 2 contain NaN in 3 of 40"):
        layer_saliency(cache)


def test_missing_and_constant_targets_are_dropped_and_listed(tmp_path):
    rng = np.random.default_rng(6)
    table = _table(80, rng, with_dims=False)  # like RAVDESS: no A/V/D
    table["p_contempt"] = 0.0
    table["p_neutral"] = table["p_neutral"] + (1 - table.loc[:, [f"p_{c}" for c in CATEGORIES]].sum(axis=1))
    cache = _cache(tmp_path, rng.normal(size=(80, 3, 8)).astype(np.float32), normalise_table(table))
    result = layer_saliency(cache, split="all")
    dropped = dict(result.dropped_targets)
    assert set(dropped) == {"arousal", "valence", "dominance", "p_contempt"}
    assert dropped["arousal"] == "not in the corpus" and dropped["p_contempt"] == "constant over the sample"
    assert len(result.targets) == 8 and result.n_utterances == 80
    with pytest.raises(CorpusError, match="no usable saliency targets"):
        layer_saliency(cache, targets="avd", split="all")


def test_sampling_and_split_errors(tmp_path):
    rng = np.random.default_rng(7)
    table = _table(120, rng)
    cache = _cache(tmp_path, rng.normal(size=(120, 3, 8)).astype(np.float32), table)
    a = layer_saliency(cache, max_utterances=30, seed=1)
    b = layer_saliency(cache, max_utterances=30, seed=1)
    c = layer_saliency(cache, max_utterances=30, seed=2)
    assert a.n_utterances == 30 and a.mu == b.mu and a.mu != c.mu
    with pytest.raises(CorpusError, match="no utterances in split 'test'"):
        layer_saliency(cache, split="test")


def test_save_and_load_roundtrip(tmp_path):
    rng = np.random.default_rng(8)
    table = _table(60, rng)
    cache = _cache(tmp_path, _planted_pooled(table, rng, n_layers=3, width=8, noise={1: 0.5}), table)
    result = layer_saliency(cache, targets="avd")
    out = save_saliency(result, tmp_path / "sal")
    data = json.loads((out / "saliency.json").read_text())
    assert data["chosen_layer"] == result.chosen_layer and data["targets"] == list(DIMENSIONS)
    assert (out / "saliency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_saliency(out) == result
    assert SaliencyResult.from_dict(json.loads(result.to_json())) == result
    assert f"chosen layer: {result.chosen_layer}" in result.to_text()

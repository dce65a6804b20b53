"""Feature cache folder: layout, reading, verification, crash-safe resumable writing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edge_ser.data.table import normalise_table
from edge_ser.errors import ManifestError
from edge_ser.features.cache import FeatureCache, FeatureCacheWriter, prune_layers

WIDTH = 6
N_LAYERS = 2


def _table(n: int) -> pd.DataFrame:
    return normalise_table([{"utt_id": f"u{i}", "path": f"u{i}.wav", "speaker": "s0", "duration_s": 0.1 * (i + 1)}
                            for i in range(n)])


def _shard_data(rng: np.random.Generator, utt_ids: list[str]):  # type: ignore[no-untyped-def]
    lengths = rng.integers(1, 9, size=len(utt_ids))
    frames = {k: [rng.normal(size=(int(t), WIDTH)).astype(np.float32) for t in lengths] for k in (0, 2)}
    pooled = np.stack([np.stack([frames[0][i].mean(0), rng.normal(size=WIDTH), frames[2][i].mean(0)])
                       for i in range(len(utt_ids))]).astype(np.float32)
    return frames, pooled


MANIFEST = {"model": "test", "n_layers": N_LAYERS, "hidden_size": WIDTH, "frame_rate": 50.0}


def _write_all(out, table, shards, rng, plan=None):  # type: ignore[no-untyped-def]
    writer = FeatureCacheWriter(out, plan=plan or {"model": "test"}, layers_stored=(0, 2))
    data = {}
    for s, ids in enumerate(shards):
        frames, pooled = _shard_data(rng, ids)
        data[s] = (ids, frames, pooled)
        writer.write_shard(shard=s, utt_ids=ids, frames=frames, pooled=pooled)
    return writer.finalize(table=table, manifest=MANIFEST), data


def test_roundtrip_layout_and_reading(tmp_path):
    rng = np.random.default_rng(0)
    table = _table(5)
    # Shards in a different order than the table (extraction sorts by duration).
    cache, data = _write_all(tmp_path / "c", table, [["u3", "u0", "u4"], ["u2", "u1"]], rng)
    root = tmp_path / "c"
    assert sorted(p.name for p in root.iterdir()) == ["index.csv", "layer_00", "layer_02", "manifest.json",
                                                      "pooled.npy", "utterances.csv"]
    assert sorted(p.name for p in (root / "layer_02").iterdir()) == ["shard_00000.npy", "shard_00001.npy"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "edge-ser-features" and manifest["format_version"] == 1
    assert manifest["dtype"] == "float16" and manifest["layers_stored"] == [0, 2]
    assert {s["file"] for s in manifest["shards"]} == {f"layer_0{k}/shard_0000{s}.npy" for k in (0, 2) for s in (0, 1)}
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert cache.utt_ids == ["u0", "u1", "u2", "u3", "u4"]
    assert cache.pooled.shape == (5, N_LAYERS + 1, WIDTH) and cache.pooled.dtype == np.float32
    ids, frames, pooled = data[0]  # shard 0: u3, u0, u4
    np.testing.assert_array_equal(cache.pooled[3], pooled[0])
    np.testing.assert_array_equal(cache.pooled[0], pooled[1])
    got = cache.frames(0, 2)
    assert got.dtype == np.float16 and isinstance(got, np.memmap)  # read lazily from disk
    np.testing.assert_array_equal(got, frames[2][1].astype(np.float16))
    np.testing.assert_array_equal(cache.frames("u1", 0), data[1][1][0][1].astype(np.float16))
    assert cache.frame_counts().tolist() == [len(data[0][1][0][1]), len(data[1][1][0][1]), len(data[1][1][0][0]),
                                             len(data[0][1][0][0]), len(data[0][1][0][2])]
    with pytest.raises(ManifestError, match=r"layer 1 has no frame-level states.*stored layers: \[0, 2\]"):
        cache.frames(0, 1)
    index = pd.read_csv(root / "index.csv")
    assert list(index.columns) == ["utt_id", "shard", "start", "n_frames"]
    FeatureCache.open(root, verify=True)


def test_tampered_shard_fails_verify(tmp_path):
    rng = np.random.default_rng(1)
    _write_all(tmp_path / "c", _table(3), [["u0", "u1", "u2"]], rng)
    shard = tmp_path / "c" / "layer_02" / "shard_00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    cache = FeatureCache.open(tmp_path / "c")  # not verified at open: the shard is checked on first use
    with pytest.raises(ManifestError, match=r"layer_02/shard_00000\.npy has sha256"):
        FeatureCache.open(tmp_path / "c", verify=True)
    # Issue 17 item 7: training and saliency used to read a tampered shard or pooled.npy as if it were fine.
    pattern = (r"layer_02/shard_00000\.npy has sha256 [0-9a-f]{12}\.\.\., the manifest records [0-9a-f]{12}\.\.\.: the "
               r"file was modified or truncated after extraction, so its features cannot be trusted\. Re-extract "
               r"\(`edge-ser features extract \.\.\. --overwrite`\)")
    with pytest.raises(ManifestError, match=pattern):
        cache.frames(0, 2)
    assert cache.frames(0, 0).shape[1] == WIDTH  # the intact layer still reads
    pooled = tmp_path / "c" / "pooled.npy"
    raw = bytearray(pooled.read_bytes())
    raw[-3] ^= 0x01
    pooled.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match=r"pooled\.npy has sha256 .*so its features cannot be trusted"):
        FeatureCache.open(tmp_path / "c").pooled
    table = tmp_path / "c" / "utterances.csv"
    table.write_text(table.read_text().replace("u1", "u9"))
    with pytest.raises(ManifestError, match=r"utterances\.csv has sha256 .*modified after extraction"):
        FeatureCache.open(tmp_path / "c")


def test_wrong_format_version_and_unfinished_folder(tmp_path):
    rng = np.random.default_rng(2)
    _write_all(tmp_path / "c", _table(2), [["u0", "u1"]], rng)
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"version 99; expected 'edge-ser-features' version 1\. Re-extract"):
        FeatureCache.open(tmp_path / "c")
    writer = FeatureCacheWriter(tmp_path / "d", plan={"model": "test"}, layers_stored=(0, 2))
    frames, pooled = _shard_data(rng, ["u0"])
    writer.write_shard(shard=0, utt_ids=["u0"], frames=frames, pooled=pooled)
    with pytest.raises(ManifestError, match="unfinished extraction"):
        FeatureCache.open(tmp_path / "d")


def test_resume_trusts_only_intact_recorded_shards(tmp_path):
    rng = np.random.default_rng(3)
    out = tmp_path / "c"
    writer = FeatureCacheWriter(out, plan={"model": "test"}, layers_stored=(0, 2))
    frames0, pooled0 = _shard_data(rng, ["u0", "u1"])
    frames1, pooled1 = _shard_data(rng, ["u2"])
    writer.write_shard(shard=0, utt_ids=["u0", "u1"], frames=frames0, pooled=pooled0)
    writer.write_shard(shard=1, utt_ids=["u2"], frames=frames1, pooled=pooled1)
    # A crash that left shard 1 half-written on disk (e.g. copied back from a backup).
    half = out / "layer_02" / "shard_00001.npy"
    half.write_bytes(half.read_bytes()[:40])
    # A stray file of a shard that never finished must not be trusted either.
    (out / "layer_00" / "shard_00002.npy").write_bytes(b"partial")
    resumed = FeatureCacheWriter(out, plan={"model": "test"}, layers_stored=(0, 2))
    assert resumed.finished_shards == (0,)
    with pytest.raises(ManifestError, match="other settings"):
        FeatureCacheWriter(out, plan={"model": "other"}, layers_stored=(0, 2))
    fresh = FeatureCacheWriter(out, plan={"model": "other"}, layers_stored=(0, 2), resume=False)
    assert fresh.finished_shards == () and not (out / "layer_00").exists()


def test_finalize_refuses_missing_utterances(tmp_path):
    rng = np.random.default_rng(4)
    writer = FeatureCacheWriter(tmp_path / "c", plan={"model": "test"}, layers_stored=(0, 2))
    frames, pooled = _shard_data(rng, ["u0"])
    writer.write_shard(shard=0, utt_ids=["u0"], frames=frames, pooled=pooled)
    with pytest.raises(ManifestError, match="1 utterances have no finished shard"):
        writer.finalize(table=_table(2), manifest=MANIFEST)


def test_prune_layers_keeps_pooled_and_named_layers(tmp_path):
    rng = np.random.default_rng(5)
    cache, data = _write_all(tmp_path / "c", _table(3), [["u0", "u1", "u2"]], rng, plan={"layers_stored": [0, 2]})
    before = cache.frames(1, 2).copy()
    pooled = np.array(cache.pooled)
    pruned = prune_layers(tmp_path / "c", keep=[2])
    assert pruned.layers_stored == (2,) and not (tmp_path / "c" / "layer_00").exists()
    assert pruned.manifest["plan"]["layers_stored"] == [2] and pruned.manifest["pruned_layers"] == [0]
    np.testing.assert_array_equal(pruned.frames(1, 2), before)
    np.testing.assert_array_equal(pruned.pooled, pooled)
    FeatureCache.open(tmp_path / "c", verify=True)  # the manifest lists only the files left
    with pytest.raises(ManifestError, match=r"cannot keep layers \[0\]"):
        prune_layers(tmp_path / "c", keep=[0])

"""Trainer: learning on synthetic frames, determinism, resume, run folder, k-fold, feature cache, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edge_ser.data.table import normalise_table
from edge_ser.errors import ManifestError
from edge_ser.labels import CATEGORY_INDEX
from edge_ser.train import ArrayFeatureSource, TrainConfig, load_run, train_run
from edge_ser.train.dataset import CacheFeatureSource, feature_statistics, iterate_batches, split_indices
from edge_ser.train.trainer import predict, train_folds_on_source

WIDTH = 10
CLASSES = ("neutral", "happy", "sad", "angry")
AROUSAL = (0.35, 0.7, 0.2, 0.85)
TINY = TrainConfig(batch_size=16, lr=3e-3, conv_channels=24, gru_hidden=24, embed_dim=24, max_epochs=4)


def synthetic_table_and_frames(n: int = 120, *, seed: int = 0, noise: float = 2.0):
    """Class-dependent frames: a class prototype plus an arousal-scaled direction plus noise.

    Splits cycle train x3 / valid / test; folds = speaker index % 4; a few rows lack targets.
    """
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(CLASSES), WIDTH))
    arousal_dir = rng.normal(size=WIDTH)
    rows, frames = [], []
    for i in range(n):
        c = i % len(CLASSES)
        arousal = float(np.clip(AROUSAL[c] + rng.normal(0, 0.05), 0, 1))
        t = int(rng.integers(12, 30))
        x = protos[c] + 2.0 * arousal * arousal_dir + noise * rng.normal(size=(t, WIDTH))
        frames.append((x * 4.0 + 7.0).astype(np.float16))  # off-centre scale: the z-score has work to do
        probs = np.zeros(9)
        probs[CATEGORY_INDEX[CLASSES[c]]] = 0.75
        probs[CATEGORY_INDEX[CLASSES[(c + 1) % 4]]] = 0.25
        speaker = i // 6
        row = {"utt_id": f"u{i:04d}", "path": f"u{i}.wav", "speaker": f"spk{speaker}",
               "gender": "female" if speaker % 2 else "male", "duration_s": t / 50,
               "split": ("train", "train", "train", "valid", "test")[i % 5] if i % 5 < 3 else
                        ("valid", "test")[(i // 5) % 2],
               "fold": speaker % 4, "label": CLASSES[c], "arousal": arousal,
               "valence": float(np.clip(1 - arousal + rng.normal(0, 0.05), 0, 1))}
        if i % 17 != 5:  # some utterances have no categorical target
            row.update({f"p_{name}": p for name, p in zip(
                ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt", "other"), probs)})
        rows.append(row)
    return normalise_table(rows), frames


def source_from(table: pd.DataFrame, frames) -> ArrayFeatureSource:  # type: ignore[no-untyped-def]
    return ArrayFeatureSource(
        frames, soft_targets=table.loc[:, [c for c in table.columns if c.startswith("p_")]].to_numpy(np.float32),
        dimensions=table.loc[:, ["arousal", "valence", "dominance"]].to_numpy(np.float32),
        labels=np.asarray([CATEGORY_INDEX.get(v, -1) for v in table["label"]]), splits=table["split"].tolist(),
        speakers=table["speaker"].tolist(), folds=table["fold"].tolist(), utt_ids=table["utt_id"].tolist(),
        info={"feature_model": "synthetic", "layer": 0, "manifest_sha256": None},
    )


@pytest.fixture(scope="module")
def source() -> ArrayFeatureSource:
    return source_from(*synthetic_table_and_frames())


def test_model_learns_class_and_dimensions(source, tmp_path):
    result = train_run(source=source, out=tmp_path / "run", config=dataclasses.replace(TINY, max_epochs=10),
                       progress=False)
    # Chance UAR over the 4 classes present is 0.25.
    assert result.valid_metrics["uar6"] > 0.6, result.valid_metrics
    assert result.valid_metrics["ccc_arousal"] > 0.4, result.valid_metrics
    assert result.valid_metrics["ccc_dominance"] is None  # no dominance targets at all
    assert result.test_metrics is not None and result.test_metrics["uar6"] > 0.5
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["valid_loss"]) for h in history)


def test_run_folder_contents_and_load_run(source, tmp_path):
    out = tmp_path / "run"
    result = train_run(source=source, out=out, config=dataclasses.replace(TINY, max_epochs=2), progress=False)
    for name in ("config.json", "model.safetensors", "last.safetensors", "optimizer.safetensors",
                 "trainer_state.json", "history.json", "loss_curves.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, info = load_run(out)
    assert info["best_epoch"] == result.best_epoch and info["feature_model"] == "synthetic"
    assert info["splits"] == {"train": 72, "valid": 24, "test": 24}
    # Normalisation statistics are the train split's, stored in the weights.
    mean, std = feature_statistics(source, split_indices(source, "train"))
    assert np.allclose(model.feat_mean.numpy(), mean) and np.allclose(model.feat_std.numpy(), std)
    all_mean, _ = feature_statistics(source, np.arange(len(source)))
    assert not np.allclose(mean, all_mean)
    avd, _ = predict(model, source, split_indices(source, "valid"))
    assert avd.shape == (24, 3)
    with pytest.raises(ManifestError, match="already holds a training run"):
        train_run(source=source, out=out, config=TINY, progress=False)


def test_resume_gives_the_same_weights_as_straight_training(source, tmp_path):
    config = dataclasses.replace(TINY, dropout=0.2, patience=10)  # dropout: the torch RNG state must survive resume
    train_run(source=source, out=tmp_path / "straight", config=config, progress=False)
    train_run(source=source, out=tmp_path / "split", config=dataclasses.replace(config, max_epochs=2), progress=False)
    assert json.loads((tmp_path / "split" / "trainer_state.json").read_text())["epoch"] == 2
    train_run(source=source, out=tmp_path / "split", config=config, resume=True, progress=False)
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "split" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    ha = json.loads((tmp_path / "straight" / "history.json").read_text())
    hb = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [h["valid_loss"] for h in ha] == [h["valid_loss"] for h in hb] and len(ha) == 4
    # A different seed trains a different model.
    train_run(source=source, out=tmp_path / "seed1", config=dataclasses.replace(config, seed=1, max_epochs=1),
              progress=False)
    assert not torch.equal(load_file(str(tmp_path / "seed1" / "last.safetensors"))["conv.weight"],
                           load_file(str(tmp_path / "split" / "last.safetensors"))["conv.weight"])
    with pytest.raises(ManifestError, match="lr"):
        train_run(source=source, out=tmp_path / "split", config=dataclasses.replace(config, lr=1e-4), resume=True,
                  progress=False)


def test_early_stopping_on_a_flat_metric(source, tmp_path):
    # With a vanishing learning rate UAR never improves after epoch 1: stop after 1 + patience epochs.
    config = dataclasses.replace(TINY, lr=1e-12, select_on="uar6", patience=2, max_epochs=10)
    result = train_run(source=source, out=tmp_path / "run", config=config, progress=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_batches_are_padded_and_deterministic(source):
    rows = split_indices(source, "train")
    first = [b.index.tolist() for b in iterate_batches(source, rows, batch_size=16, shuffle=True, seed=3, epoch=1)]
    again = [b.index.tolist() for b in iterate_batches(source, rows, batch_size=16, shuffle=True, seed=3, epoch=1)]
    other = [b.index.tolist() for b in iterate_batches(source, rows, batch_size=16, shuffle=True, seed=3, epoch=2)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == rows.tolist()
    batch = next(iterate_batches(source, rows, batch_size=5, shuffle=False))
    assert batch.x.shape == (5, int(batch.lengths.max()), WIDTH)
    for b, i in enumerate(batch.index.tolist()):
        n = int(batch.lengths[b])
        assert np.array_equal(batch.x[b, :n].numpy(), source.frames(i).astype(np.float32))
        assert bool((batch.x[b, n:] == 0).all())


def test_k_fold_runs_and_summary(source, tmp_path):
    summary = train_folds_on_source(source=source, out=tmp_path / "cv", folds=[0, 2], seeds=(0, 1),
                                    config=dataclasses.replace(TINY, max_epochs=2), progress=False)
    assert [(r["fold"], r["seed"]) for r in summary.runs] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    run = json.loads((tmp_path / "cv" / "fold2_seed1" / "run.json").read_text())
    folds = np.asarray(source.folds)
    assert run["splits"] == {"test": int((folds == 2).sum()), "valid": int((folds == 3).sum()),
                             "train": int(np.isin(folds, [0, 1]).sum())}
    assert run["config"]["seed"] == 1 and run["features"]["fold"] == 2
    assert "test_uar6" in summary.mean and summary.std["test_uar6"] >= 0
    assert (tmp_path / "cv" / "summary.md").read_text().count("| 2 |") >= 2
    assert json.loads((tmp_path / "cv" / "summary.json").read_text())["mean"] == summary.mean


def _write_cache(path, table, frames):  # type: ignore[no-untyped-def]
    from edge_ser.features.cache import FeatureCacheWriter

    writer = FeatureCacheWriter(path, plan={"model": "synthetic"}, layers_stored=(3,))
    pooled = np.stack([np.repeat(f.astype(np.float32).mean(0)[None], 5, axis=0) for f in frames])
    writer.write_shard(shard=0, utt_ids=table["utt_id"].tolist(), frames={3: frames}, pooled=pooled)
    return writer.finalize(table=table, manifest={"model": "synthetic", "n_layers": 4, "hidden_size": WIDTH,
                                                  "frame_rate": 50.0})


def test_cache_source_and_cli(tmp_path):
    table, frames = synthetic_table_and_frames(48, seed=1)
    _write_cache(tmp_path / "feats", table, frames)
    cached = CacheFeatureSource(tmp_path / "feats", layer=3)
    assert cached.input_dim == WIDTH and len(cached) == 48 and cached.info["layer"] == 3
    assert len(cached.info["manifest_sha256"]) == 64
    assert np.array_equal(cached.frames(7), frames[7])
    assert cached.labels[0] == CATEGORY_INDEX["neutral"] and np.isnan(cached.soft_targets[5]).all()
    with pytest.raises(ManifestError, match="stored"):
        CacheFeatureSource(tmp_path / "feats", layer=2)
    (tmp_path / "sal").mkdir()
    (tmp_path / "sal" / "saliency.json").write_text(json.dumps({"chosen_layer": 3}))

    from edge_ser.cli import root

    runner = CliRunner()
    result = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "run"),
                                  "--saliency", str(tmp_path / "sal"), "--epochs", "1", "--loss", "ccc+kl",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["feature_layer"] == 3 and run["config"]["loss"] == "ccc+kl" and run["epochs_run"] == 1
    assert run["feature_manifest_sha256"] == cached.info["manifest_sha256"]
    again = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "run"),
                                 "--layer", "3", "--epochs", "2", "--loss", "ccc+kl", "--resume", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs_run"] == 2
    # continuing is the default (docs/cli.md): the same command with a higher --epochs carries on
    default = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "run"),
                                   "--layer", "3", "--epochs", "3", "--loss", "ccc+kl", "--no-progress"])
    assert default.exit_code == 0, default.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs_run"] == 3
    refused = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "run"),
                                   "--layer", "3", "--epochs", "3", "--loss", "ccc+kl", "--no-resume", "--no-progress"])
    assert refused.exit_code == 1 and "already holds a training run" in refused.output, refused.output
    folds = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "cv"),
                                 "--folds", "1", "--seeds", "0", "--epochs", "1", "--no-progress"])
    assert folds.exit_code == 0, folds.output
    assert (tmp_path / "cv" / "fold1_seed0" / "model.safetensors").is_file()
    bad = runner.invoke(root, ["train", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "x"),
                               "--layer", "7", "--no-progress"])
    assert bad.exit_code != 0 and "layer 7 is not stored" in bad.output, bad.output


def test_parallel_fold_workers_match_sequential_training(tmp_path):
    from edge_ser.train.trainer import TrainConfig, train_folds

    table, frames = synthetic_table_and_frames(48, seed=2)
    _write_cache(tmp_path / "feats", table, frames)
    config = TrainConfig(max_epochs=2, gru_hidden=16, conv_channels=16, embed_dim=16)
    serial = train_folds(cache_dir=tmp_path / "feats", layer=3, out=tmp_path / "serial", folds=[0, 1],
                         config=config, progress=False)
    parallel = train_folds(cache_dir=tmp_path / "feats", layer=3, out=tmp_path / "parallel", folds=[0, 1],
                           config=config, progress=False, workers=2)
    assert [r["fold"] for r in parallel.runs] == [0, 1]
    for fold in (0, 1):
        a = (tmp_path / "serial" / f"fold{fold}_seed0" / "model.safetensors").read_bytes()
        b = (tmp_path / "parallel" / f"fold{fold}_seed0" / "model.safetensors").read_bytes()
        assert a == b, f"fold {fold}: parallel training changed the weights"
    assert parallel.mean["valid_loss"] == pytest.approx(serial.mean["valid_loss"])


def test_training_precision_is_resolved_and_checked():
    from edge_ser.train.trainer import TrainConfig, cpu_has_native_bf16

    assert TrainConfig().precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert TrainConfig(precision="fp32").precision == "fp32"
    assert TrainConfig.from_dict(TrainConfig(precision="bf16").to_dict()).precision == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'; expected 'auto', 'fp32' or 'bf16'"):
        TrainConfig(precision="fp16")


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time

def child(parent):
    from edge_ser.train.trainer import _exit_with_parent
    _exit_with_parent(parent, poll_s=0.2)
    time.sleep(120)

if __name__ == "__main__":
    proc = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(3)  # let the child import and start its watcher
    os._exit(0)  # die without joining, as a SIGKILL-ed parent would
"""


def test_fold_workers_exit_when_their_parent_dies(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        status = Path(f"/proc/{child}/status")
        if status.is_file() and "State:\tZ" in status.read_text():
            return  # exited; only waiting for its new parent to reap it
        time.sleep(0.2)
    os.kill(child, 9)
    raise AssertionError(f"worker {child} was still running 20 s after its parent died")


def test_length_buckets_cover_every_row_once_and_cut_padding():
    from edge_ser.train.dataset import ArrayFeatureSource, iterate_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 120, size=200)
    frames = [np.zeros((n, 3), dtype=np.float32) for n in lengths]
    source = ArrayFeatureSource(frames, soft_targets=np.full((200, 9), 1 / 9), dimensions=np.full((200, 3), np.nan),
                                labels=np.zeros(200, dtype=np.int64), splits=["train"] * 200)
    rows = np.arange(200)

    def run(bucket):
        batches = list(iterate_batches(source, rows, batch_size=16, shuffle=True, seed=3, epoch=1,
                                       bucket_batches=bucket))
        padded = sum(int(b.x.shape[0] * b.x.shape[1]) for b in batches)
        return batches, padded

    plain, padded_plain = run(0)
    bucketed, padded_bucketed = run(4)
    again, _ = run(4)
    seen = np.concatenate([b.index.numpy() for b in bucketed])
    assert sorted(seen.tolist()) == rows.tolist()  # every row exactly once
    assert len(bucketed) == len(plain) == 13
    assert [b.index.tolist() for b in again] == [b.index.tolist() for b in bucketed]  # deterministic
    assert padded_bucketed < 0.9 * padded_plain
    assert lengths.sum() <= padded_bucketed


def test_resume_refuses_another_layer_or_feature_cache(tmp_path):
    # Issue 17 item 3: resuming on other data trained one model on two sources and recorded only the new one.
    from edge_ser.cli import root
    from edge_ser.features.cache import FeatureCacheWriter

    table, frames = synthetic_table_and_frames(48, seed=3)
    for name, shift in (("feats", 0.0), ("other", 1.0)):
        writer = FeatureCacheWriter(tmp_path / name, plan={"model": "synthetic", "shift": shift}, layers_stored=(2, 3))
        shifted = [(f.astype(np.float32) + shift).astype(np.float16) for f in frames]
        pooled = np.stack([np.repeat(f.astype(np.float32).mean(0)[None], 5, axis=0) for f in shifted])
        writer.write_shard(shard=0, utt_ids=table["utt_id"].tolist(), frames={2: shifted, 3: shifted}, pooled=pooled)
        writer.finalize(table=table, manifest={"model": "synthetic", "n_layers": 4, "hidden_size": WIDTH,
                                               "frame_rate": 50.0})
    runner = CliRunner()
    base = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
    first = runner.invoke(root, [*base, "--features", str(tmp_path / "feats"), "--layer", "3"])
    assert first.exit_code == 0, first.output
    state = (tmp_path / "run" / "trainer_state.json").read_bytes()

    layer = runner.invoke(root, [*base, "--features", str(tmp_path / "feats"), "--layer", "2", "--epochs", "2",
                                 "--resume"])
    assert layer.exit_code == 1
    assert (f"Error: cannot resume {tmp_path / 'run'}: it was started on other data (layer: 3 -> 2); resuming would "
            "train one model on two layers or feature caches and record only the new one. Resume with the original "
            "--features and --layer (or --saliency), or use a new --out folder to train on these.") in layer.output

    cache = runner.invoke(root, [*base, "--features", str(tmp_path / "other"), "--layer", "3", "--epochs", "2",
                                 "--resume"])
    assert cache.exit_code == 1 and "it was started on other data (manifest_sha256: '" in cache.output
    assert (tmp_path / "run" / "trainer_state.json").read_bytes() == state  # nothing was trained on the new data

    same = runner.invoke(root, [*base, "--features", str(tmp_path / "feats"), "--layer", "3", "--epochs", "2",
                                "--resume"])
    assert same.exit_code == 0, same.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs_run"] == 2


def test_balanced_rows_draw_every_class_about_equally_and_are_deterministic():
    from edge_ser.train.dataset import balanced_rows

    labels = np.asarray([0] * 300 + [1] * 60 + [2] * 30 + [-1] * 10)
    rows = np.arange(len(labels))
    drawn = balanced_rows(labels, rows, seed=3, epoch=1)
    assert len(drawn) == len(rows)
    counts = np.bincount(labels[drawn][labels[drawn] >= 0], minlength=3)
    # Unbalanced the shares would be 75 / 15 / 7.5 %; balanced each class gets about a third.
    assert counts.min() / counts.max() > 0.75, counts
    assert np.array_equal(drawn, balanced_rows(labels, rows, seed=3, epoch=1))
    assert not np.array_equal(drawn, balanced_rows(labels, rows, seed=3, epoch=2))


def test_feature_masks_fill_with_the_mean_stay_inside_valid_frames_and_repeat_per_seed():
    from edge_ser.train.dataset import mask_features

    torch.manual_seed(0)
    x = torch.randn(4, 50, 16)
    lengths = torch.tensor([50, 30, 10, 1])
    fill = torch.full((16,), 7.0)
    masked = mask_features(x, lengths, fill=fill, fraction=0.3, seed=(0, 1, 2))
    assert torch.equal(masked, mask_features(x, lengths, fill=fill, fraction=0.3, seed=(0, 1, 2)))
    assert not torch.equal(masked, mask_features(x, lengths, fill=fill, fraction=0.3, seed=(0, 1, 3)))
    assert torch.equal(x, x.clone())  # input untouched
    changed = masked != x
    assert bool((masked[changed] == 7.0).all())
    assert 0 < float(changed.float().mean()) < 0.5
    # Two channel bands cover at most 60 % of the channels, so a frame with every channel changed was
    # hit by a time span, and time spans lie inside the valid frames.
    time_masked = changed.all(dim=2)
    assert bool(time_masked.any())
    for b, length in enumerate(lengths.tolist()):
        assert not bool(time_masked[b, length:].any())


def test_training_options_balance_and_feature_mask_train_and_are_checked(source, tmp_path):
    config = dataclasses.replace(TINY, max_epochs=3, balance=True, feature_mask=0.2, dropout=0.1)
    result = train_run(source=source, out=tmp_path / "run", config=config, progress=False)
    assert np.isfinite(result.best_valid_loss)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["balance"] is True and saved["feature_mask"] == 0.2
    with pytest.raises(ValueError, match="feature_mask"):
        TrainConfig(feature_mask=0.9)
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(dropout=1.0)


def test_weight_average_follows_the_decay_with_warm_up():
    from edge_ser.train.trainer import _WeightAverage
    from edge_ser.train.model import TCGRU

    model = TCGRU(WIDTH, conv_channels=8, gru_hidden=8, embed_dim=8)
    averaged = _WeightAverage(model, decay=0.5, steps=0)
    start = [p.detach().clone() for p in model.parameters()]
    expected = [p.clone() for p in start]
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        averaged.update(model)
        d = min(0.5, (1 + step) / (10 + step))  # warm-up: 0.1, 0.18, 0.25, then the decay 0.5 would cap
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    assert averaged.steps == 4
    for e, a in zip(expected, averaged.model.parameters()):
        assert torch.allclose(a, e, atol=1e-6)
    assert not any(p.requires_grad for p in averaged.model.parameters())


def test_ema_runs_select_and_save_the_average_without_changing_training(source, tmp_path):
    config = dataclasses.replace(TINY, max_epochs=1)
    plain = train_run(source=source, out=tmp_path / "plain", config=config, progress=False)
    ema = train_run(source=source, out=tmp_path / "ema", config=dataclasses.replace(config, ema_decay=0.9),
                    progress=False)
    # The average watches training; it must not change it (same trained weights, same RNG use).
    last_plain = load_file(str(tmp_path / "plain" / "last.safetensors"))
    last_ema = load_file(str(tmp_path / "ema" / "last.safetensors"))
    assert all(torch.equal(last_plain[k], last_ema[k]) for k in last_plain)
    # One epoch: the best weights are the average after it, not the trained weights.
    best = load_file(str(tmp_path / "ema" / "model.safetensors"))
    average = load_file(str(tmp_path / "ema" / "last_average.safetensors"))
    assert all(torch.equal(best[k], average[k]) for k in best)
    assert not torch.equal(best["conv.weight"], last_ema["conv.weight"])
    assert torch.equal(best["feat_mean"], last_ema["feat_mean"])  # buffers are the model's
    # What was validated (and recorded) is the average.
    assert ema.best_valid_loss != plain.best_valid_loss
    model, info = load_run(tmp_path / "ema")
    assert info["config"]["ema_decay"] == 0.9
    state = json.loads((tmp_path / "ema" / "trainer_state.json").read_text())
    assert state["optimizer_steps"] == 5  # 72 train rows in batches of 16
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_resume_with_ema_gives_the_same_average_as_straight_training(source, tmp_path):
    config = dataclasses.replace(TINY, ema_decay=0.8, patience=10, max_epochs=3)
    train_run(source=source, out=tmp_path / "straight", config=config, progress=False)
    train_run(source=source, out=tmp_path / "split", config=dataclasses.replace(config, max_epochs=1), progress=False)
    train_run(source=source, out=tmp_path / "split", config=config, resume=True, progress=False)
    for name in ("last.safetensors", "last_average.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "split" / name))
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_cli_has_a_checked_ema_decay_option(tmp_path):
    from edge_ser.cli import root

    result = CliRunner().invoke(root, ["train", "--help"])
    assert result.exit_code == 0 and "--ema-decay" in result.output
    result = CliRunner().invoke(root, ["train", "--features", str(tmp_path), "--out", str(tmp_path / "r"),
                                       "--ema-decay", "1.5"])
    assert result.exit_code != 0 and "1.5" in result.output

"""Training throughput of the TC-GRU on Whisper-base-sized features (512-wide, ~185 frames, batch 32).

Run: ``.venv/bin/python -m pytest -q benchmarks/bench_training.py --benchmark-only -s``.
Prints utterances/s per (threads, training precision) and the estimated time of the RAVDESS
6-fold schedule (1440 utterances; per fold 4 folds train, 1 valid, 1 test) at the default 50
epochs and at the epoch counts early stopping typically ends at; one-thread rows assume two
workers on two cores (``edge-ser train --folds all --workers 2``). The batch here is not
length-bucketed (a random batch of one length spread), so the trainer's bucketing gains
(about 1.1x on RAVDESS) come on top. Compare rows of one run: the machine is shared.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from edge_ser.cpu_features import cpu_features

from edge_ser.train.losses import multitask_loss
from edge_ser.train.model import TCGRU

WIDTH = 512
FRAMES = 185
BATCH = 32
RAVDESS_UTTERANCES = 1440
FOLDS = 6


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(150, 220, size=BATCH)
    x = torch.zeros(BATCH, int(lengths.max()), WIDTH)
    for b, t in enumerate(lengths):
        x[b, :t] = torch.from_numpy(rng.normal(size=(t, WIDTH)).astype(np.float32))
    soft = torch.softmax(torch.from_numpy(rng.normal(size=(BATCH, 9)).astype(np.float32)), dim=-1)
    dims = torch.from_numpy(rng.uniform(size=(BATCH, 3)).astype(np.float32))
    return x, torch.from_numpy(lengths), soft, dims


@pytest.mark.parametrize(("threads", "precision"), [(1, "fp32"), (1, "bf16"), (2, "fp32")],
                         ids=["1thread-fp32", "1thread-bf16", "2threads-fp32"])
def test_training_throughput(benchmark, threads, precision):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = TCGRU(WIDTH).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        x, lengths, soft, dims = _batch()

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, lengths)
            loss = multitask_loss(avd=out.avd.float(), logits=out.logits.float(), soft_targets=soft,
                                  dimensions=dims).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(previous)
    seconds = benchmark.stats.stats.median
    utt_per_s = BATCH / seconds
    train_per_fold = RAVDESS_UTTERANCES * (FOLDS - 2) / FOLDS
    # Validation forward passes cost about a third of a training step per utterance (no backward).
    per_epoch_s = train_per_fold / utt_per_s + (RAVDESS_UTTERANCES / FOLDS) / (3 * utt_per_s)
    workers = 2 if threads == 1 else 1
    estimates = {epochs: FOLDS / workers * epochs * per_epoch_s / 60 for epochs in (50, 20, 10)}
    benchmark.extra_info.update({
        "torch": torch.__version__, "threads": threads, "precision": precision, "workers": workers,
        "machine": platform.machine(), "cpu": cpu_features().to_dict(), "width": WIDTH,
        "frames_mean": float(lengths.float().mean()), "batch": BATCH, "params": model.count_parameters(),
        "utterances_per_s": utt_per_s,
        "ravdess_6fold_minutes": {str(k): v for k, v in estimates.items()},
    })
    print(f"\n[threads={threads} {precision}, {workers} worker(s)] {utt_per_s:.1f} utt/s (median step {seconds * 1e3:.0f} ms for batch {BATCH} "
          f"x ~{int(lengths.float().mean())} frames x {WIDTH}); RAVDESS 6 folds: "
          + ", ".join(f"{e} epochs ~ {m:.1f} min" for e, m in estimates.items()))
    assert utt_per_s > 0

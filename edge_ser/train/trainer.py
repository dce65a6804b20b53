"""Training the TC-GRU: one run (:func:`train_run`) and k-fold x seeds (:func:`train_folds`).

Defaults follow SPEC.md sections 4 and 7 items 6-7: Adam (0.9, 0.999), learning rate 5e-4,
mini-batch 32, at most 50 epochs, patience 5, selection on the validation loss, the 12-output
CCC loss, features z-scored with train-split statistics (item 10).

Determinism on CPU: the model is initialised from ``config.seed`` inside a forked RNG (the
caller's global RNG is left alone), the batch order of epoch e depends only on (seed, e), and
the torch RNG state (dropout) is checkpointed. The CPU kernels used here (conv1d, GRU, linear,
Adam) are deterministic, so ``torch.use_deterministic_algorithms`` is not switched on: it changes
nothing for them and its first call imports torch._dynamo (2-4 s per process on this machine).
A run resumed from ``last.safetensors`` ends with bit-identical weights to an uninterrupted one
(tests/test_trainer.py checks it).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge_ser import __version__
from edge_ser.cpu_features import cpu_features
from edge_ser.errors import ManifestError
from edge_ser import metrics as eval_metrics
from edge_ser.io import read_json, write_json_atomic, write_text_atomic
from edge_ser.labels import DIMENSIONS, PAPER_VOCABULARY, Vocabulary
from edge_ser.progress import progress_bar
from edge_ser.train import runs
from edge_ser.train.dataset import (
    FeatureSource, balanced_rows, feature_statistics, fold_splits, frame_counts, iterate_batches, mask_features,
    split_indices, with_splits,
)
from edge_ser.train.losses import DEFAULT_LOSS, LOSSES, multitask_loss
from edge_ser.train.model import TCGRU

__all__ = ["TrainConfig", "RunResult", "FoldSummary", "train_run", "train_folds", "train_folds_on_source",
           "predict", "validation_metrics", "SELECTION_METRICS", "TRAIN_PRECISIONS"]

logger = logging.getLogger(__name__)

SELECTION_METRICS: dict[str, str] = {"valid_loss": "min", "uar6": "max", "uar_corpus": "max", "ccc_mean": "max"}
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
"""Training compute precisions: ``auto`` resolves to ``bf16`` where the CPU has native bf16, else ``fp32``."""
"""What early stopping / model selection can watch, and in which direction."""

# Fields that may change between a run and its resumption without changing what was trained so far.
_RESUMABLE_CHANGES = ("max_epochs", "patience")
_SOURCE_IDENTITY = ("feature_model", "layer", "manifest_sha256", "corpus", "fold", "k", "label_vocabulary", "windows")
"""The keys of a feature source's ``info`` that say which data a run trains on; a resume must match them
(the cache's folder may move, so its path is not among them)."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16); elsewhere
    bf16 autocast is emulated and slower than float32."""
    return cpu_features().native_bf16


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (SPEC.md defaults) plus the TC-GRU sizes (SPEC.md section 2)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    select_on: str = "valid_loss"
    loss: str = DEFAULT_LOSS
    seed: int = 0
    dropout: float = 0.0
    task_weights: tuple[float, float] = (1.0, 1.0)
    """(dimensional, categorical) weights of the loss terms."""
    conv_channels: int = 256
    gru_hidden: int = 256
    gru_layers: int = 2
    embed_dim: int = 256
    eval_batch_size: int = 64
    bucket_batches: int = 4
    """Length bucketing of training batches: pools of this many batches are sorted by length
    before cutting (see :func:`edge_ser.train.dataset.iterate_batches`); 0 or 1 = off."""
    precision: str = "auto"
    """Training compute: ``"fp32"``, or ``"bf16"`` (CPU autocast: the conv and linear layers run
    in bfloat16, the GRU, the loss and the weights stay float32; about 1.5x faster on CPUs with
    native bf16, measured on RAVDESS features). ``"auto"`` picks bf16 where the CPU has native
    bf16 units (AVX512-BF16 / AMX) and fp32 elsewhere; the resolved value is what gets stored.
    Validation, evaluation and export always run in float32."""
    balance: bool = False
    """Class-balanced sampling: each epoch draws as many train rows as the split has, with
    replacement, a row's chance proportional to 1 / (count of its label); rows without a label
    keep the mean weight. The draw depends only on (seed, epoch). Off = every row once."""
    feature_mask: float = 0.0
    """SpecAugment-style masking of the input features during training: per utterance two time
    spans and two channel bands, each up to this fraction of the frames / channels, set to the
    train-split mean (0 after z-scoring). 0 = off; at most 0.5."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights: after every optimizer step the averaged copy
    moves ``1 - d_t`` of the way to the trained weights, ``d_t = min(ema_decay, (1 + t) / (10 + t))``
    at step t (the warm-up keeps the random initial weights from lingering). Validation, selection,
    the saved weights and so everything downstream (evaluation, conversion) use the averaged copy.
    0 = off; typical 0.99-0.999 (about 1 / (1 - d) steps of memory)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig loss={self.loss!r}; expected one of {sorted(LOSSES)}.")
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"TrainConfig select_on={self.select_on!r}; expected one of {sorted(SELECTION_METRICS)}.")
        if int(self.bucket_batches) < 0:
            raise ValueError(f"TrainConfig bucket_batches={self.bucket_batches!r}; expected 0 (off) or a pool size >= 1.")
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig {name}={getattr(self, name)!r}; expected a positive integer.")
        if not 0.0 <= float(self.feature_mask) <= 0.5:
            raise ValueError(f"TrainConfig feature_mask={self.feature_mask!r}; expected a fraction in 0..0.5 (0 = off).")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"TrainConfig ema_decay={self.ema_decay!r}; expected a decay in [0, 1) such as 0.99 "
                             "(0 = off).")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"TrainConfig dropout={self.dropout!r}; expected a probability in [0, 1).")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig lr={self.lr!r}; expected a positive learning rate such as 5e-4.")
        if self.precision == "auto":
            object.__setattr__(self, "precision", "bf16" if cpu_has_native_bf16() else "fp32")
        if self.precision not in TRAIN_PRECISIONS:  # "auto" was resolved above
            raise ValueError(f"TrainConfig precision={self.precision!r}; expected 'auto', 'fp32' or 'bf16'.")
        # Tuples survive a JSON round trip as lists; normalise so equality and hashing work.
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; expected a subset of {sorted(known)}.")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one training run produced (also written to run.json)."""

    run_dir: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_valid_loss: float
    valid_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    wall_time_s: float
    train_utterances_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FoldSummary:
    """k-fold x seeds results: one entry per run plus mean and std of every numeric metric."""

    out: str
    runs: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- metrics
# Validation monitoring with edge_ser.metrics; the full report (k-best, paUAR, gender) is edge_ser.evaluation.

def _uar(refs: np.ndarray, preds: np.ndarray, classes: np.ndarray) -> float | None:
    """UAR over class indices ``classes`` (indices into whatever vocabulary refs/preds use)."""
    value = eval_metrics.mean_recall(refs, preds, classes=classes)
    return None if math.isnan(value) else value


def _ccc_or_none(pred: np.ndarray, ref: np.ndarray) -> float | None:
    value = eval_metrics.ccc(pred, ref)
    return None if math.isnan(value) else float(value)


def validation_metrics(*, avd: np.ndarray, probs: np.ndarray, labels: np.ndarray, dimensions: np.ndarray,
                       corpus_classes: Sequence[int], vocabulary: Vocabulary = PAPER_VOCABULARY) -> dict[str, Any]:
    """UAR over the reported classes, UAR over the corpus's own classes, CCC per dimension.

    avd (N, 3), probs (N, C), labels (N,) class index or -1, dimensions (N, 3) with NaN = missing,
    corpus_classes: class indices the corpus actually uses. ``uar6`` ranks only the reported class
    scores (the paper's 6 for the paper vocabulary, SPEC.md section 7 item 4; every class for a
    corpus vocabulary, where ``uar6`` equals ``uar_corpus``); ``uar_corpus`` ranks only the corpus's
    classes. Metrics without references are None.
    """
    out: dict[str, Any] = {"n": int(len(labels))}
    reported_index = np.asarray([vocabulary.index(c) for c in vocabulary.reported], dtype=np.int64)
    reported = np.isin(labels, reported_index)
    pred6 = reported_index[np.argmax(probs[:, reported_index], axis=1)]
    out["uar6"] = _uar(labels[reported], pred6[reported], reported_index)
    classes = np.asarray(sorted(int(c) for c in corpus_classes), dtype=np.int64)
    out["corpus_classes"] = [vocabulary.classes[c] for c in classes]
    if len(classes):
        in_corpus = np.isin(labels, classes)
        pred_c = classes[np.argmax(probs[:, classes], axis=1)]
        out["uar_corpus"] = _uar(labels[in_corpus], pred_c[in_corpus], classes)
    else:
        out["uar_corpus"] = None
    values = []
    for d, name in enumerate(DIMENSIONS):
        value = _ccc_or_none(avd[:, d], dimensions[:, d])
        out[f"ccc_{name}"] = value
        if value is not None:
            values.append(value)
    out["ccc_mean"] = float(np.mean(values)) if values else None
    return out


# ----------------------------------------------------------------------------------------- training

@torch.no_grad()
def predict(model: TCGRU, source: FeatureSource, rows: np.ndarray, *,
            batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(avd (N, 3), logits (N, 9)) for the given rows in their order, model in eval mode."""
    was_training = model.training
    model.eval()
    avd, logits = [], []
    for batch in iterate_batches(source, rows, batch_size=batch_size, shuffle=False):
        out = model(batch.x, batch.lengths)
        avd.append(out.avd)
        logits.append(out.logits)
    model.train(was_training)
    return torch.cat(avd), torch.cat(logits)


def _evaluate(model: TCGRU, source: FeatureSource, rows: np.ndarray, *, config: TrainConfig,
              corpus_classes: np.ndarray) -> tuple[float, dict[str, Any]]:
    avd, logits = predict(model, source, rows, batch_size=config.eval_batch_size)
    # The validation loss is the training loss over the whole set at once (CCC over all rows, not per batch).
    loss = multitask_loss(
        avd=avd, logits=logits, soft_targets=torch.from_numpy(source.soft_targets[rows]),
        dimensions=torch.from_numpy(source.dimensions[rows]), labels=torch.from_numpy(source.labels[rows]),
        kind=config.loss, task_weights=config.task_weights,
    ).total
    metrics = validation_metrics(avd=avd.numpy(), probs=torch.softmax(logits, dim=-1).numpy(),
                                 labels=source.labels[rows], dimensions=source.dimensions[rows],
                                 corpus_classes=corpus_classes, vocabulary=source_vocabulary(source))
    return float(loss), metrics


def _selection_score(config: TrainConfig, valid_loss: float, metrics: dict[str, Any]) -> float:
    if config.select_on == "valid_loss":
        return valid_loss
    value = metrics.get(config.select_on)
    # Lower is better internally; a metric that cannot be computed never counts as an improvement.
    return math.inf if value is None else -float(value)


def _model_config(source: FeatureSource, config: TrainConfig) -> dict[str, Any]:
    return {"input_dim": int(source.input_dim), "conv_channels": config.conv_channels,
            "gru_hidden": config.gru_hidden, "gru_layers": config.gru_layers, "embed_dim": config.embed_dim,
            "n_dims": len(DIMENSIONS), "n_classes": len(source_vocabulary(source).classes), "dropout": config.dropout}


def source_vocabulary(source: FeatureSource) -> Vocabulary:
    """The source's label vocabulary (sources written before vocabularies existed use the paper's)."""
    return getattr(source, "vocabulary", PAPER_VOCABULARY)


def _source_identity(source: FeatureSource) -> dict[str, Any]:
    info = source.info
    return {key: info.get(key) for key in _SOURCE_IDENTITY if key in info}


def _check_resumable(out: Path, config: TrainConfig, model_config: dict[str, Any],
                     source_identity: dict[str, Any]) -> None:
    saved = runs.read_run_config(out)
    recorded = saved.get("source")
    if recorded is None:
        logger.warning("%s records no data source (written by an older edge-ser); resuming without checking that "
                       "the features and layer are the ones it started on", out)
    elif recorded != source_identity:
        keys = sorted(set(recorded) | set(source_identity))
        detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {source_identity.get(k)!r}" for k in keys
                           if recorded.get(k) != source_identity.get(k))
        raise ManifestError(
            f"cannot resume {out}: it was started on other data ({detail}); resuming would train one model on two "
            "layers or feature caches and record only the new one. Resume with the original --features and "
            "--layer (or --saliency), or use a new --out folder to train on these."
        )
    old = TrainConfig.from_dict(saved["train"]).to_dict()
    new = config.to_dict()
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed or saved["model"] != model_config:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed) or "model/feature width"
        raise ManifestError(
            f"cannot resume {out}: the configuration differs from the saved run ({detail}). Only "
            f"{list(_RESUMABLE_CHANGES)} may change on --resume; use a new --out folder for a different run."
        )


def train_run(
    *,
    source: FeatureSource,
    out: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train one TC-GRU on the source's train split, select on its valid split, write a run folder.

    source: a :class:`~edge_ser.train.dataset.FeatureSource` with ``splits`` train/valid(/test).
    out: the run folder (see :mod:`edge_ser.train.runs`). resume: continue from ``last.safetensors``
    and ``trainer_state.json`` (only ``max_epochs`` and ``patience`` may change).
    Returns a :class:`RunResult`; test-split metrics are included when the source has a test split.
    """
    out = Path(out)
    train_rows, valid_rows, test_rows = _run_splits(source)
    model_config = _model_config(source, config)
    corpus_classes = np.unique(source.labels[source.labels >= 0])
    _check_run_folder(out, resume=resume)
    out.mkdir(parents=True, exist_ok=True)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TCGRU(model_config["input_dim"], conv_channels=config.conv_channels, gru_hidden=config.gru_hidden,
                      gru_layers=config.gru_layers, embed_dim=config.embed_dim, dropout=config.dropout,
                      n_classes=model_config["n_classes"])
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
        if resume:
            start = _restore_training(out, model, optimizer, source=source, config=config, model_config=model_config)
        else:
            start = _start_training(out, model, source=source, train_rows=train_rows, config=config,
                                    model_config=model_config, progress=progress)
        averaged = _weight_average(out, model, config=config, start=start)
        end = _run_epochs(out, model, optimizer, source=source, train_rows=train_rows, valid_rows=valid_rows,
                          config=config, corpus_classes=corpus_classes, start=start, progress=progress,
                          averaged=averaged)
        if not end.history:
            raise ManifestError(f"{out} has no finished epoch; max_epochs={config.max_epochs} allows none after resume.")
        runs.load_weights(model, out / runs.BEST_WEIGHTS)
        best_entry = next(h for h in end.history if h["epoch"] == end.best["epoch"])
        test_metrics = None
        if len(test_rows):
            test_loss, test_metrics = _evaluate(model, source, test_rows, config=config, corpus_classes=corpus_classes)
            test_metrics = {"loss": test_loss, **test_metrics}

    seen_total = sum(h["train_utterances"] for h in end.history)
    seconds_total = sum(h["train_seconds"] for h in end.history)
    result = RunResult(
        run_dir=str(out), best_epoch=int(end.best["epoch"]), epochs_run=len(end.history),
        stopped_early=end.stopped_early, best_valid_loss=float(best_entry["valid_loss"]),
        valid_metrics=best_entry["valid"], test_metrics=test_metrics, wall_time_s=float(end.wall_time_s),
        train_utterances_per_s=float(seen_total / seconds_total) if seconds_total else 0.0,
    )
    _write_run_record(out, model, source=source, config=config, model_config=model_config, history=end.history,
                      splits=(train_rows, valid_rows, test_rows), result=result)
    return result


def _run_splits(source: FeatureSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source's train, valid and test rows; raises if train or valid is empty."""
    train_rows = split_indices(source, "train")
    valid_rows = split_indices(source, "valid")
    test_rows = split_indices(source, "test")
    if len(train_rows) == 0 or len(valid_rows) == 0:
        raise ValueError(
            f"training needs train and valid utterances; the source has {len(train_rows)} train and "
            f"{len(valid_rows)} valid. Assign splits in the corpus table (edge-ser data prepare) or train with folds."
        )
    return train_rows, valid_rows, test_rows


def _check_run_folder(out: Path, *, resume: bool) -> None:
    """Returns nothing; raises if resuming without a saved state or starting over an existing run."""
    state_path = out / runs.STATE_FILE
    if resume and not state_path.is_file():
        raise ManifestError(f"cannot resume: {state_path} does not exist. Train without --resume first.")
    if not resume and (state_path.is_file() or (out / runs.RUN_FILE).is_file()):
        raise ManifestError(
            f"{out} already holds a training run; pass resume=True (edge-ser train --resume, the default) to continue it, or choose another --out."
        )


@dataclasses.dataclass(frozen=True)
class _TrainingState:
    """Where a run stands between epochs: what ``trainer_state.json`` records."""

    next_epoch: int
    history: list[dict[str, Any]]
    best: dict[str, Any]
    bad_epochs: int
    wall_time_s: float
    stopped_early: bool
    optimizer_steps: int = 0
    """Steps of the weight average so far (``ema_decay`` > 0); read on resume only."""


def _start_training(out: Path, model: TCGRU, *, source: FeatureSource, train_rows: np.ndarray, config: TrainConfig,
                    model_config: dict[str, Any], progress: bool) -> _TrainingState:
    """The state before epoch 1, after setting the feature statistics and writing the run config."""
    mean, std = feature_statistics(source, train_rows, progress=progress)
    model.set_feature_stats(mean, std)
    runs.write_run_config(out, train=config.to_dict(), model=model_config, source=_source_identity(source))
    return _TrainingState(next_epoch=1, history=[], best={"score": math.inf, "epoch": 0}, bad_epochs=0,
                          wall_time_s=0.0, stopped_early=False)


def _restore_training(out: Path, model: TCGRU, optimizer: torch.optim.Optimizer, *, source: FeatureSource,
                      config: TrainConfig, model_config: dict[str, Any]) -> _TrainingState:
    """The saved state of a run, after loading its last weights, optimizer and torch RNG state."""
    _check_resumable(out, config, model_config, _source_identity(source))
    state = read_json(out / runs.STATE_FILE)
    runs.load_weights(model, out / runs.LAST_WEIGHTS, epoch=int(state["epoch"]))
    rng = runs.load_optimizer(optimizer, out / runs.OPTIMIZER_FILE, param_groups=state["param_groups"],
                              epoch=int(state["epoch"]))
    torch.set_rng_state(rng)
    return _TrainingState(
        next_epoch=int(state["epoch"]) + 1, history=state["history"],
        best={"score": float(state["best_score"]), "epoch": int(state["best_epoch"])},
        bad_epochs=int(state["bad_epochs"]), wall_time_s=float(state["wall_time_s"]),
        stopped_early=bool(state["stopped_early"]), optimizer_steps=int(state.get("optimizer_steps", 0)),
    )


class _WeightAverage:
    """The exponential moving average of a model's parameters (:attr:`TrainConfig.ema_decay`), kept
    in a copy of the model; buffers (the feature statistics) are the model's, fixed before training."""

    def __init__(self, model: TCGRU, *, decay: float, steps: int) -> None:
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.steps = int(steps)

    @torch.no_grad()
    def update(self, model: TCGRU) -> None:
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        self.steps += 1


def _weight_average(out: Path, model: TCGRU, *, config: TrainConfig, start: _TrainingState) -> _WeightAverage | None:
    """The weight average to train with (None when ``ema_decay`` is 0); on resume, restored from the run folder."""
    if config.ema_decay <= 0:
        return None
    averaged = _WeightAverage(model, decay=config.ema_decay, steps=start.optimizer_steps)
    if start.history:  # resuming: the average saved with the last epoch
        runs.load_weights(averaged.model, out / runs.LAST_AVERAGE_WEIGHTS, epoch=start.next_epoch - 1)
    return averaged


def _run_epochs(out: Path, model: TCGRU, optimizer: torch.optim.Optimizer, *, source: FeatureSource,
                train_rows: np.ndarray, valid_rows: np.ndarray, config: TrainConfig, corpus_classes: np.ndarray,
                start: _TrainingState, progress: bool, averaged: _WeightAverage | None = None) -> _TrainingState:
    """The state after training from ``start`` until max_epochs or early stop, saved after every epoch.

    With ``averaged`` (a weight average), validation, selection and the best weights use the average."""
    history, best, bad_epochs = start.history, start.best, start.bad_epochs
    wall_before, stopped_early = start.wall_time_s, start.stopped_early
    started = time.perf_counter()
    lengths = frame_counts(source) if config.bucket_batches > 1 else None
    epochs = progress_bar(range(start.next_epoch, config.max_epochs + 1), desc=f"train {out.name}", unit="epoch",
                          enabled=progress, initial=start.next_epoch - 1, total=config.max_epochs)
    for epoch in epochs:
        if stopped_early and bad_epochs >= config.patience:
            break
        stopped_early = False
        train_loss, seen, seconds = _train_epoch(model, optimizer, source, train_rows, config=config, epoch=epoch,
                                                 progress=progress, lengths=lengths, averaged=averaged)
        selected = model if averaged is None else averaged.model
        valid_loss, metrics = _evaluate(selected, source, valid_rows, config=config, corpus_classes=corpus_classes)
        score = _selection_score(config, valid_loss, metrics)
        improved = score < best["score"]
        if improved:
            best = {"score": score, "epoch": epoch}
            bad_epochs = 0
            runs.save_weights(selected, out / runs.BEST_WEIGHTS)
        else:
            bad_epochs += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss, "valid": metrics,
                        "train_seconds": seconds, "train_utterances": seen, "improved": improved})
        stopped_early = bad_epochs >= config.patience
        _save_state(out, model, optimizer, epoch=epoch, best=best, bad_epochs=bad_epochs, history=history,
                    wall_time_s=wall_before + time.perf_counter() - started, stopped_early=stopped_early,
                    averaged=averaged)
        epochs.set_postfix(train=f"{train_loss:.4f}", valid=f"{valid_loss:.4f}",
                           uar6=_fmt(metrics["uar6"]), ccc=_fmt(metrics["ccc_mean"]), best=best["epoch"])
        if stopped_early:
            break
    epochs.close()
    next_epoch = history[-1]["epoch"] + 1 if history else start.next_epoch
    return _TrainingState(next_epoch=next_epoch, history=history, best=best, bad_epochs=bad_epochs,
                          wall_time_s=wall_before + time.perf_counter() - started, stopped_early=stopped_early)


def _write_run_record(out: Path, model: TCGRU, *, source: FeatureSource, config: TrainConfig,
                      model_config: dict[str, Any], history: list[dict[str, Any]],
                      splits: tuple[np.ndarray, np.ndarray, np.ndarray], result: RunResult) -> None:
    """Returns nothing; writes history.json, the training curves and run.json (which marks the run finished)."""
    train_rows, valid_rows, test_rows = splits
    info = source.info
    write_json_atomic(out / runs.HISTORY_FILE, history)
    runs.plot_history(history, out / runs.CURVES_FILE, title=f"{info.get('feature_model')} layer {info.get('layer')}")
    write_json_atomic(out / runs.RUN_FILE, {
        "format": runs.RUN_FORMAT, "format_version": runs.RUN_FORMAT_VERSION, "edge_ser_version": __version__,
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "finished": True,
        "config": config.to_dict(), "model": model_config, "n_parameters": model.count_parameters(),
        "label_vocabulary": source_vocabulary(source).to_dict(), "features": info, "feature_manifest_sha256": info.get("manifest_sha256"),
        "feature_model": info.get("feature_model"), "feature_layer": info.get("layer"),
        "splits": {"train": int(len(train_rows)), "valid": int(len(valid_rows)), "test": int(len(test_rows))},
        **result.to_dict(),
    })


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _train_epoch(model: TCGRU, optimizer: torch.optim.Optimizer, source: FeatureSource, rows: np.ndarray, *,
                 config: TrainConfig, epoch: int, progress: bool, lengths: np.ndarray | None = None,
                 averaged: _WeightAverage | None = None) -> tuple[float, int, float]:
    """One pass over the train rows; returns (mean batch loss weighted by batch size, utterances, seconds)."""
    model.train()
    total, seen = 0.0, 0
    started = time.perf_counter()
    epoch_rows = getattr(source, "epoch_rows", None)
    if epoch_rows is not None:  # a window corpus: one window per utterance and epoch
        rows = epoch_rows(rows, seed=config.seed, epoch=epoch)
    if config.balance:
        rows = balanced_rows(source.labels, rows, seed=config.seed, epoch=epoch)
    batches = progress_bar(iterate_batches(source, rows, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                           epoch=epoch, bucket_batches=config.bucket_batches, lengths=lengths),
                           total=math.ceil(len(rows) / config.batch_size), desc=f"epoch {epoch}", unit="batch",
                           leave=False, enabled=progress)
    for number, batch in enumerate(batches):
        x = batch.x
        if config.feature_mask > 0:
            x = mask_features(x, batch.lengths, fill=model.feat_mean, fraction=config.feature_mask,
                              seed=(config.seed, epoch, number))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            out = model(x, batch.lengths)
        loss = multitask_loss(avd=out.avd.float(), logits=out.logits.float(), soft_targets=batch.soft, dimensions=batch.dims,
                              labels=batch.labels, kind=config.loss, task_weights=config.task_weights).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged is not None:
            averaged.update(model)
        n = int(batch.x.shape[0])
        total += float(loss.detach()) * n
        seen += n
        batches.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(seen, 1), seen, time.perf_counter() - started


def _save_state(out: Path, model: TCGRU, optimizer: torch.optim.Optimizer, *, epoch: int, best: dict[str, Any],
                bad_epochs: int, history: list[dict[str, Any]], wall_time_s: float, stopped_early: bool,
                averaged: _WeightAverage | None = None) -> None:
    # The state JSON is written last and names its epoch; both tensor files carry the epoch in their
    # metadata so a crash between the writes is detected on resume instead of mixing epochs.
    runs.save_weights(model, out / runs.LAST_WEIGHTS, epoch=epoch)
    groups = runs.save_optimizer(optimizer, out / runs.OPTIMIZER_FILE, rng_state=torch.get_rng_state(), epoch=epoch)
    if averaged is not None:
        runs.save_weights(averaged.model, out / runs.LAST_AVERAGE_WEIGHTS, epoch=epoch)
    write_json_atomic(out / runs.STATE_FILE, {
        "epoch": epoch, "best_epoch": best["epoch"], "best_score": best["score"], "bad_epochs": bad_epochs,
        "stopped_early": stopped_early, "wall_time_s": wall_time_s, "param_groups": groups, "history": history,
        **({} if averaged is None else {"optimizer_steps": averaged.steps}),
    })
    write_json_atomic(out / runs.HISTORY_FILE, history)


# ----------------------------------------------------------------------------------------- k-fold

def train_folds(
    *,
    cache_dir: str | os.PathLike,
    layer: int,
    out: str | os.PathLike,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
    workers: int = 1,
    labels: str = "paper",
    augment: Sequence[str | os.PathLike] = (),
    windows: bool = False,
) -> FoldSummary:
    """k-fold x seeds training on a feature cache whose table has a ``fold`` column.

    For fold f: test = fold f, valid = fold (f+1) % k, train = the rest. One run folder per
    (fold, seed) under `out` (``fold{f}_seed{s}``), plus ``summary.json`` and ``summary.md``.

    ``workers > 1`` trains that many (fold, seed) runs at once in separate processes with one
    torch thread each: small recurrent models use one core far better than two, so on a
    2-core machine two one-thread runs finish about twice as fast as one two-thread run.
    Each run is seeded on its own, so the results equal those of ``workers=1``.

    ``labels``: ``paper`` (9 categories) or ``corpus`` (the corpus's own labels); ``augment``:
    feature caches of augmented copies of the corpus (train split of each fold only); ``windows``:
    the cache is of a window corpus (``edge-ser data windows``; see WindowedFeatureSource).
    """
    from edge_ser.train.dataset import open_training_source

    augment = [str(a) for a in augment]
    source = open_training_source(cache_dir, layer=layer, labels=labels, augment=augment, windows=windows)
    if workers <= 1:
        return train_folds_on_source(source=source, out=out, folds=folds, seeds=seeds, config=config,
                                     resume=resume, progress=progress)
    out = Path(out)
    jobs = _fold_jobs(source, folds=folds, seeds=seeds)
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_train_fold_worker, cache_dir=str(cache_dir), layer=layer, out=str(out), fold=fold,
                               seed=seed, k=k, config=config, resume=resume, labels=labels, augment=augment,
                               windows=windows)
                   for fold, seed, k in jobs]
        records = []
        for future in progress_bar(futures, desc=f"folds ({workers} workers)", unit="fold", enabled=progress):
            records.append(future.result())
    return _finish_folds(out, records, source.info, config)


def _fold_jobs(source: FeatureSource, *, folds: Sequence[int] | None,
               seeds: Sequence[int]) -> list[tuple[int, int, int]]:
    all_folds = np.asarray(source.folds)
    fold_splits(all_folds, fold=0)  # validates the fold column before any training starts
    k = int(all_folds.max()) + 1
    chosen = list(range(k)) if folds is None else [int(f) for f in folds]
    bad = [f for f in chosen if not 0 <= f < k]
    if bad:
        raise ValueError(f"folds {bad} do not exist; the table has folds 0..{k - 1}.")
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. (0,).")
    return [(fold, int(seed), k) for fold in chosen for seed in seeds]


def _train_one_fold(source: FeatureSource, *, out: Path, fold: int, seed: int, k: int, config: TrainConfig,
                    resume: bool, progress: bool) -> dict[str, Any]:
    run_dir = out / f"fold{fold}_seed{seed}"
    run_config = dataclasses.replace(config, seed=int(seed))
    result = train_run(source=with_splits(source, fold_splits(np.asarray(source.folds), fold=fold), fold=fold, k=k),
                       out=run_dir, config=run_config, resume=resume and (run_dir / runs.STATE_FILE).is_file(),
                       progress=progress)
    return {"fold": fold, "seed": int(seed), **result.to_dict()}


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Worker initializer: end this worker when the process that started it is gone (killed
    with SIGKILL, say), instead of training on as an orphan. Checked by a daemon thread."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_fold_worker(*, cache_dir: str, layer: int, out: str, fold: int, seed: int, k: int, config: TrainConfig,
                       resume: bool, labels: str = "paper", augment: Sequence[str] = (),
                       windows: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    from edge_ser.train.dataset import open_training_source

    source = open_training_source(cache_dir, layer=layer, labels=labels, augment=augment, windows=windows)
    return _train_one_fold(source, out=Path(out), fold=fold, seed=seed, k=k, config=config, resume=resume,
                           progress=False)


def _finish_folds(out: Path, records: list[dict[str, Any]], info: dict[str, Any], config: TrainConfig) -> FoldSummary:
    records = sorted(records, key=lambda r: (r["fold"], r["seed"]))
    summary = _summarise(out, records)
    write_json_atomic(out / "summary.json", summary.to_dict())
    write_text_atomic(out / "summary.md", _summary_markdown(summary, info, config))
    return summary


def train_folds_on_source(
    *,
    source: FeatureSource,
    out: str | os.PathLike,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
) -> FoldSummary:
    """:func:`train_folds` on any feature source (the folds come from ``source.folds``), one run at a time."""
    out = Path(out)
    records = [_train_one_fold(source, out=out, fold=fold, seed=seed, k=k, config=config, resume=resume,
                               progress=progress)
               for fold, seed, k in _fold_jobs(source, folds=folds, seeds=seeds)]
    return _finish_folds(out, records, source.info, config)


def _flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    flat = {"best_epoch": float(record["best_epoch"]), "valid_loss": float(record["best_valid_loss"])}
    for prefix, metrics in (("valid", record["valid_metrics"]), ("test", record.get("test_metrics"))):
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                flat[f"{prefix}_{key}"] = float(value)
    return flat


def _summarise(out: Path, records: list[dict[str, Any]]) -> FoldSummary:
    flats = [_flat_metrics(r) for r in records]
    keys = sorted({k for f in flats for k in f})
    mean, std = {}, {}
    for key in keys:
        values = np.asarray([f[key] for f in flats if key in f], dtype=np.float64)
        mean[key] = float(values.mean())
        std[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return FoldSummary(out=str(out), runs=records, mean=mean, std=std)


def _summary_markdown(summary: FoldSummary, info: dict[str, Any], config: TrainConfig) -> str:
    lines = [f"# TC-GRU k-fold summary: {info.get('feature_model')} layer {info.get('layer')}", "",
             f"{len(summary.runs)} runs (fold x seed), loss `{config.loss}`, batch {config.batch_size}, "
             f"lr {config.lr}, max {config.max_epochs} epochs, patience {config.patience}. "
             "Mean ± sample std over runs.", "", "| metric | mean ± std |", "|---|---|"]
    for key in summary.mean:
        lines.append(f"| {key} | {summary.mean[key]:.4f} ± {summary.std[key]:.4f} |")
    lines += ["", "| fold | seed | best epoch | valid UAR6 | test UAR6 | test UAR corpus | test CCC mean |",
              "|---|---|---|---|---|---|---|"]
    for r in summary.runs:
        test = r.get("test_metrics") or {}
        lines.append(f"| {r['fold']} | {r['seed']} | {r['best_epoch']} | {_fmt(r['valid_metrics'].get('uar6'))} | "
                     f"{_fmt(test.get('uar6'))} | {_fmt(test.get('uar_corpus'))} | {_fmt(test.get('ccc_mean'))} |")
    return "\n".join(lines) + "\n"

"""Seed ensembles of TC-GRU heads as one head: ``edge-ser ensemble --run A --run B --out E``.

Heads trained on the same features and split with different seeds disagree enough that averaging
their probabilities pays (docs/accuracy.md: two WA2 seeds, 65.7 -> 69.2 UAR on RAVDESS device
windows). An ensemble run folder holds them as **one** wider TC-GRU whose weights are
block-diagonal, member by member: the conv concatenates the members' output channels, each GRU
gate, the embedding and the heads map member ``m``'s units only from member ``m``'s units. A wide
GRU step costs one loop step, not N, so the artifact runs the foundation model once and the
heads in one pass (docs/accuracy.md gives the latency). The outputs are the members' averages:

- ``probs``: the mean of the members' softmax outputs (``logits`` = its log, so any softmax of
  the logits gives it back);
- ``avd``: the mean of the members' arousal/valence/dominance;
- ``embedding``: the members' embeddings side by side, ``(B, N * E)``.

Equal to running the members one by one and averaging (float32 rounding; a fast-tier test checks
it). The folder is a run folder (config.json, model.safetensors, run.json), so evaluation,
conversion, verification and the runtime take it as they take a single run; run.json's
``ensemble`` block lists the members and the sha256 of their weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_ser.errors import ManifestError
from edge_ser.train.model import TCGRU, TCGRUOutput

__all__ = ["ENSEMBLE_KEY", "EnsembleTCGRU", "combine_members", "fold_run_dirs", "make_ensemble_run", "make_fold_ensembles"]

ENSEMBLE_KEY = "ensemble_members"
"""Key of a run's model config (config.json ``model``) that makes it an ensemble of that many heads."""

_MEMBER_KEYS = ("input_dim", "conv_channels", "gru_hidden", "gru_layers", "embed_dim", "n_dims", "n_classes")


class EnsembleTCGRU(nn.Module):
    """``n_members`` TC-GRU heads of one architecture as one wide TC-GRU (module docstring).

    ``forward(x, lengths)`` takes what :class:`~edge_ser.train.model.TCGRU` takes and returns a
    :class:`~edge_ser.train.model.TCGRUOutput` of the averaged members. ``wide`` is the wide
    TC-GRU itself (the converters export it with every TC-GRU export form)."""

    def __init__(self, *, ensemble_members: int, input_dim: int, conv_channels: int = 256, gru_hidden: int = 256,
                 gru_layers: int = 2, embed_dim: int = 256, n_dims: int = 3, n_classes: int = 9,
                 dropout: float = 0.0) -> None:
        super().__init__()
        n = int(ensemble_members)
        if n < 2:
            raise ValueError(f"ensemble_members={ensemble_members}; expected at least 2 heads.")
        self.n_members = n
        self.member = {"input_dim": int(input_dim), "conv_channels": int(conv_channels), "gru_hidden": int(gru_hidden),
                       "gru_layers": int(gru_layers), "embed_dim": int(embed_dim), "n_dims": int(n_dims),
                       "n_classes": int(n_classes), "dropout": float(dropout)}
        self.input_dim, self.n_dims, self.n_classes = int(input_dim), int(n_dims), int(n_classes)
        self.embed_dim = n * int(embed_dim)
        self.wide = TCGRU(int(input_dim), conv_channels=n * int(conv_channels), gru_hidden=n * int(gru_hidden),
                          gru_layers=int(gru_layers), embed_dim=n * int(embed_dim), n_dims=n * int(n_dims),
                          n_classes=n * int(n_classes), dropout=float(dropout))

    def hyperparameters(self) -> dict[str, int | float]:
        """Constructor arguments, JSON-serialisable (a run's config.json ``model``)."""
        return {ENSEMBLE_KEY: self.n_members, **self.member}

    def count_parameters(self) -> int:
        """Parameters of the members (the wide head's off-diagonal zeros are not counted)."""
        m = self.member
        per_member = TCGRU(m["input_dim"], conv_channels=m["conv_channels"], gru_hidden=m["gru_hidden"],
                           gru_layers=m["gru_layers"], embed_dim=m["embed_dim"], n_dims=m["n_dims"],
                           n_classes=m["n_classes"]).count_parameters()
        return self.n_members * per_member

    @classmethod
    def from_members(cls, members: Sequence[TCGRU]) -> "EnsembleTCGRU":
        """The ensemble of trained heads of one architecture and one input normalisation."""
        if len(members) < 2:
            raise ValueError(f"got {len(members)} head(s); an ensemble needs at least 2.")
        first = members[0].hyperparameters()
        for i, head in enumerate(members[1:], start=1):
            other = head.hyperparameters()
            differ = {k: (first[k], other[k]) for k in _MEMBER_KEYS if first[k] != other[k]}
            if differ:
                raise ValueError(f"head {i} differs from head 0 in {differ}; an ensemble's heads share one architecture "
                                 "(train them with the same options and different --seeds).")
            for name in ("feat_mean", "feat_std"):
                if not torch.allclose(getattr(head, name), getattr(members[0], name), rtol=1e-5, atol=1e-6):
                    raise ValueError(
                        f"head {i}'s input normalisation ({name}) differs from head 0's: the heads were trained on "
                        "different training rows (another fold, feature cache or augmented copies). Ensemble runs of "
                        "the same fold and data that differ only in --seeds.")
        ensemble = cls(ensemble_members=len(members), **{k: first[k] for k in (*_MEMBER_KEYS, "dropout")})
        ensemble._fill(members)
        return ensemble.eval()

    @torch.no_grad()
    def _fill(self, members: Sequence[TCGRU]) -> None:
        wide, n = self.wide, self.n_members
        for p in wide.parameters():
            p.zero_()
        wide.feat_mean.copy_(members[0].feat_mean)
        wide.feat_std.copy_(members[0].feat_std)
        c, h = members[0].conv_channels, members[0].gru_hidden
        for m, head in enumerate(members):
            wide.conv.weight[m * c:(m + 1) * c] = head.conv.weight
            wide.conv.bias[m * c:(m + 1) * c] = head.conv.bias
            for layer in range(head.gru_layers):
                width_in = c if layer == 0 else h
                for kind, cols in (("ih", width_in), ("hh", h)):
                    weight = getattr(head.gru, f"weight_{kind}_l{layer}")
                    bias = getattr(head.gru, f"bias_{kind}_l{layer}")
                    wide_weight = getattr(wide.gru, f"weight_{kind}_l{layer}")
                    wide_bias = getattr(wide.gru, f"bias_{kind}_l{layer}")
                    for gate in range(3):  # nn.GRU stacks the reset, update and new gates' rows
                        rows = slice(gate * n * h + m * h, gate * n * h + (m + 1) * h)
                        wide_weight[rows, m * cols:(m + 1) * cols] = weight[gate * h:(gate + 1) * h]
                        wide_bias[rows] = bias[gate * h:(gate + 1) * h]
            for name in ("embedding", "avd_head", "class_head"):
                src, dst = getattr(head, name), getattr(wide, name)
                out_dim, in_dim = src.weight.shape
                dst.weight[m * out_dim:(m + 1) * out_dim, m * in_dim:(m + 1) * in_dim] = src.weight
                dst.bias[m * out_dim:(m + 1) * out_dim] = src.bias

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> TCGRUOutput:
        """x: (B, T, F), lengths: (B,) or None -> the members' averages (module docstring)."""
        return combine_members(self.wide(x, lengths), n_members=self.n_members, n_dims=self.n_dims,
                               n_classes=self.n_classes)


def combine_members(out: TCGRUOutput, *, n_members: int, n_dims: int, n_classes: int) -> TCGRUOutput:
    """The wide head's outputs -> the averaged ensemble outputs. Written with slices and adds
    (a mean over a member axis exports as a portable op in ExecuTorch)."""
    batch = out.logits.shape[0]
    probs_each = torch.softmax(out.logits.reshape(batch, n_members, n_classes), dim=-1)
    avd_each = out.avd.reshape(batch, n_members, n_dims)
    probs, avd = probs_each[:, 0], avd_each[:, 0]
    for m in range(1, n_members):
        probs = probs + probs_each[:, m]
        avd = avd + avd_each[:, m]
    scale = 1.0 / n_members
    # log of the mean probability: softmax(logits) gives the mean back; the floor keeps log finite
    # where float32 rounds a probability to 0.
    logits = torch.log(torch.clamp(probs * scale, min=1e-30))
    return TCGRUOutput(avd=avd * scale, logits=logits, embedding=out.embedding)


def make_ensemble_run(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                      features_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the ensemble of finished ``runs`` (same features, fold and architecture; other seeds) as a
    run folder at ``out``; returns its run.json. Validation and test metrics are recomputed on the
    runs' feature cache (``features_dir`` when it moved) and left out, with the reason, when the
    cache is not found. run.json is written last: a folder without it (an interrupted call) is
    written again; one that holds this ensemble already is returned as it is."""
    from edge_ser import __version__
    from edge_ser.io import read_json, write_json_atomic
    from edge_ser.train import runs as run_files

    out = Path(out)
    if len(runs) < 2:
        raise ValueError(f"got {len(runs)} run(s); an ensemble needs at least 2 (--run A --run B).")
    infos = [run_files.read_run_info(r) for r in runs]
    if (out / run_files.RUN_FILE).is_file():
        finished = read_json(out / run_files.RUN_FILE)
        recorded = [m.get("model_sha256") for m in (finished.get("ensemble") or {}).get("members", [])]
        if recorded == [i.weights_sha256 for i in infos]:
            return finished  # the same ensemble, already written (a rerun after an interruption)
        raise FileExistsError(f"{out} already holds a finished run that is not the ensemble of these runs; pass a new "
                              "folder for the ensemble run.")
    leftovers = {p.name for p in out.iterdir()} - {run_files.CONFIG_FILE, run_files.BEST_WEIGHTS} if out.exists() else set()
    if leftovers:
        raise FileExistsError(f"{out} exists and holds {sorted(leftovers)[:3]}; pass a new (or empty) folder for the "
                              "ensemble run.")
    if len({os.path.realpath(i.run_dir) for i in infos}) < len(infos):
        raise ValueError(f"runs {[str(r) for r in runs]} name one run more than once; an ensemble of a head with itself "
                         "is that head.")
    _check_same_data(infos)
    heads = [i.load_head() for i in infos]
    ensemble = EnsembleTCGRU.from_members(heads)
    first = infos[0]
    out.mkdir(parents=True, exist_ok=True)
    run_files.write_run_config(out, train=first.config["train"], model=ensemble.hyperparameters(),
                               source=first.config.get("source"))
    run_files.save_weights(ensemble, out / run_files.BEST_WEIGHTS)
    valid_metrics, test_metrics, metrics_note = _ensemble_metrics(ensemble, first, features_dir=features_dir)
    info = dict(first.info)
    for key in ("best_epoch", "epochs_run", "stopped_early", "best_valid_loss", "wall_time_s",
                "train_utterances_per_s"):
        info.pop(key, None)
    info.update({
        "edge_ser_version": __version__, "torch_version": torch.__version__, "run_dir": str(out),
        "model": ensemble.hyperparameters(), "n_parameters": ensemble.count_parameters(),
        "valid_metrics": valid_metrics, "test_metrics": test_metrics,
        "ensemble": {
            "members": [{"run": os.fspath(i.run_dir), "model_sha256": i.weights_sha256,
                         "seed": (i.config.get("train") or {}).get("seed"),
                         "test_metrics": i.info.get("test_metrics")} for i in infos],
            "combine": "mean of the members' probabilities and arousal/valence/dominance; embeddings concatenated",
            "metrics": metrics_note,
        },
        "finished": True,
    })
    write_json_atomic(out / run_files.RUN_FILE, info)  # last: marks the folder a finished run
    return info


def _check_same_data(infos: Sequence[Any]) -> None:
    first = infos[0]
    for info in infos[1:]:
        for what, a, b in (("feature model", first.feature_model, info.feature_model), ("layer", first.layer, info.layer),
                           ("feature cache (manifest sha256)", first.feature_manifest_sha256, info.feature_manifest_sha256),
                           ("fold", first.fold, info.fold), ("folds", first.k, info.k),
                           ("label vocabulary", first.vocabulary.classes, info.vocabulary.classes)):
            if a != b:
                raise ValueError(
                    f"{info.run_dir} has {what} {b!r}, {first.run_dir} has {a!r}; an ensemble's runs are trained on the "
                    "same features, layer, fold and labels and differ only in --seeds (a run of another fold has "
                    "seen this fold's test speakers).")


def _ensemble_metrics(ensemble: EnsembleTCGRU, first: Any, *,
                      features_dir: str | os.PathLike | None) -> tuple[Any, Any, str]:
    """(valid metrics, test metrics, a note) of the ensemble on the runs' feature cache and split."""
    from edge_ser.train.dataset import fold_splits, open_training_source, with_splits
    from edge_ser.train.trainer import TrainConfig, _evaluate, _run_splits

    features = first.info.get("features") or {}
    try:
        cache = first.feature_cache(features_dir)
    except ManifestError as exc:
        return {"corpus_classes": (first.info.get("valid_metrics") or {}).get("corpus_classes")}, None, str(exc)
    if cache is None:
        return ({"corpus_classes": (first.info.get("valid_metrics") or {}).get("corpus_classes")}, None,
                f"not computed: the feature cache {features.get('feature_dir')!r} was not found (pass --features)")
    source = open_training_source(cache, layer=first.layer, labels=first.vocabulary.kind,
                                  windows=bool(features.get("windows")))
    if first.fold is not None:
        source = with_splits(source, fold_splits(np.asarray(source.folds), fold=first.fold), fold=first.fold,
                             k=first.k)
    config = TrainConfig.from_dict(first.config["train"])
    _, valid_rows, test_rows = _run_splits(source)
    corpus_classes = np.unique(source.labels[source.labels >= 0])
    results = []
    for rows in (valid_rows, test_rows):
        if not len(rows):
            results.append(None)
            continue
        loss, metrics = _evaluate(ensemble, source, rows, config=config, corpus_classes=corpus_classes)
        results.append({"loss": loss, **metrics})
    return results[0], results[1], f"computed on {cache}"


def fold_run_dirs(folder: str | os.PathLike) -> list[Path]:
    """The finished ``fold<f>_seed<s>`` run folders directly under ``folder`` (``edge-ser train --folds``)."""
    import re

    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if re.fullmatch(r"fold\d+_seed\d+", p.name) and (p / "run.json").is_file())


def make_fold_ensembles(folders: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                        features_dir: str | os.PathLike | None = None) -> dict[int, dict[str, Any]]:
    """Ensembles of k-fold runs, fold by fold: every finished ``fold<f>_seed<s>`` run in ``folders``
    (one ``edge-ser train --folds`` output per seed, or one trained with several ``--seeds``) joins the
    ensemble of its fold, written to ``out/fold<f>_seed<s>`` (``s``: the first member's seed, so
    ``edge-ser evaluate --folds-dir out`` finds them). Returns {fold: run.json}."""
    from edge_ser.train import runs as run_files

    by_fold: dict[int, list[Path]] = {}
    for folder in folders:
        found = fold_run_dirs(folder)
        if not found:
            raise ManifestError(f"{folder} holds no finished fold<f>_seed<s>/run.json; expected the --out folder of "
                                "`edge-ser train --folds`.")
        for run_dir in found:
            info = run_files.read_run_info(run_dir)
            by_fold.setdefault(int(info.fold), []).append(run_dir)
    thin = {fold: len(members) for fold, members in by_fold.items() if len(members) < 2}
    if thin:
        raise ValueError(f"folds {sorted(thin)} have only one run in {[str(f) for f in folders]}; each fold needs runs "
                         "of at least 2 seeds (train the folds again with other --seeds).")
    out = Path(out)
    written = {}
    for fold, members in sorted(by_fold.items()):
        seed = (run_files.read_run_info(members[0]).config.get("train") or {}).get("seed", 0)
        written[fold] = make_ensemble_run(members, out / f"fold{fold}_seed{seed}", features_dir=features_dir)
    return written

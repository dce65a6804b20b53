"""The run folder: what a training run writes and how it is read back (docs/architecture.md).

::

    config.json          {"format", "format_version", "train": TrainConfig fields, "model": TCGRU hyperparameters}
    model.safetensors    best weights (feat_mean / feat_std normalisation buffers included)
    last.safetensors     weights after the last finished epoch
    optimizer.safetensors  Adam state of the last epoch + the torch RNG state
    trainer_state.json   epoch, early-stopping state, optimizer param groups, history (for --resume)
    history.json         per-epoch train/valid loss and validation metrics
    loss_curves.png      the history as curves
    run.json             config, feature provenance, best epoch, validation (and test) metrics, timing

Every file is written atomically (``edge_ser.io``); the optimizer state and weights are safetensors,
so loading a run never unpickles anything.

Later stages (evaluation, conversion, verification) read a finished run through one reader,
:func:`read_run_info` -> :class:`RunInfo`: configuration, label vocabulary, feature model and
layer, the feature cache it was trained on (one rule to find it, checked by the sha256 of its
manifest), the foundation-model weights behind those features, and the sha256 of the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edge_ser.errors import ManifestError
from edge_ser.io import atomic_path, read_json, sha256_file, write_json_atomic
from edge_ser.labels import Vocabulary
from edge_ser.train.model import TCGRU

__all__ = [
    "RUN_FORMAT", "RUN_FORMAT_VERSION", "CONFIG_FILE", "BEST_WEIGHTS", "LAST_WEIGHTS", "LAST_AVERAGE_WEIGHTS",
    "OPTIMIZER_FILE", "STATE_FILE", "HISTORY_FILE", "RUN_FILE", "CURVES_FILE", "save_weights", "load_weights",
    "save_optimizer", "load_optimizer", "load_run", "plot_history", "RunInfo", "read_run_info",
]

RUN_FORMAT = "edge-ser-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
LAST_AVERAGE_WEIGHTS = "last_average.safetensors"
"""The weight average (``TrainConfig.ema_decay``) after the last epoch, for resuming; model.safetensors
holds the best epoch's average."""
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
HISTORY_FILE = "history.json"
RUN_FILE = "run.json"
CURVES_FILE = "loss_curves.png"


def _metadata(epoch: int | None) -> dict[str, str]:
    return {"format": RUN_FORMAT, **({} if epoch is None else {"epoch": str(int(epoch))})}


def _check_epoch(path: Path, epoch: int | None) -> None:
    if epoch is None:
        return
    with safe_open(str(path), framework="pt") as handle:
        saved = (handle.metadata() or {}).get("epoch")
    if saved != str(int(epoch)):
        raise ManifestError(
            f"{path} holds epoch {saved}, but trainer_state.json says epoch {epoch}: training was interrupted "
            "while saving. Delete the run folder and train again (or resume from a copy made between epochs)."
        )


def save_weights(model: torch.nn.Module, path: str | os.PathLike, *, epoch: int | None = None) -> None:
    """Write a module's state dict (parameters and buffers) as safetensors, atomically."""
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=_metadata(epoch))


def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, epoch: int | None = None) -> None:
    """Load safetensors weights into `model` (strict); with `epoch`, check they were saved at that epoch."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} is missing; expected the weights of a training run. Re-run `edge-ser train`.")
    _check_epoch(path, epoch)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ManifestError(
            f"{path} does not match the model built from config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The run folder mixes files from different runs; re-train it."
        )


def save_optimizer(optimizer: torch.optim.Optimizer, path: str | os.PathLike, *,
                   rng_state: torch.Tensor, epoch: int | None = None) -> list[dict[str, Any]]:
    """Write the optimizer's per-parameter tensors + the torch RNG state as safetensors.

    Returns the param groups (JSON-serialisable) that go into trainer_state.json.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": rng_state.clone()}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{pid}.{key}"] = tensor.detach().contiguous().clone()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=_metadata(epoch))
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]


def load_optimizer(optimizer: torch.optim.Optimizer, path: str | os.PathLike, *,
                   param_groups: list[dict[str, Any]], epoch: int | None = None) -> torch.Tensor:
    """Restore an optimizer written by :func:`save_optimizer`; returns the saved torch RNG state."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} is missing; a resumable run needs it. Train again without --resume.")
    _check_epoch(path, epoch)
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return tensors["rng.torch"]


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ManifestError(f"{Path(run_dir)} has no {CONFIG_FILE}; expected a training run folder (edge-ser train --out).")
    config = read_json(path)
    if config.get("format") != RUN_FORMAT or config.get("format_version") != RUN_FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format {config.get('format')!r} v{config.get('format_version')!r}; expected {RUN_FORMAT!r} "
            f"v{RUN_FORMAT_VERSION}. Re-train the run with this edge-ser."
        )
    return config


def write_run_config(run_dir: str | os.PathLike, *, train: dict[str, Any], model: dict[str, Any],
                     source: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` when a run starts: training config, model sizes and the identity of the data
    it trains on (``source``: feature model, layer, feature-cache manifest sha256, fold), which a resume
    must present again."""
    config = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "train": train, "model": model}
    if source is not None:
        config["source"] = source
    write_json_atomic(Path(run_dir) / CONFIG_FILE, config)


def build_model(model_config: dict[str, Any]) -> TCGRU:
    """The head a run's config.json ``model`` describes: a TC-GRU, or an ensemble of them
    (:class:`~edge_ser.train.ensemble.EnsembleTCGRU`, ``edge-ser ensemble``) with the same interface."""
    params = dict(model_config)
    from edge_ser.train.ensemble import ENSEMBLE_KEY, EnsembleTCGRU

    if ENSEMBLE_KEY in params:
        return EnsembleTCGRU(**params)  # type: ignore[return-value]
    input_dim = int(params.pop("input_dim"))
    return TCGRU(input_dim, **params)


def load_run(run_dir: str | os.PathLike, *, weights: str = BEST_WEIGHTS) -> tuple[TCGRU, dict[str, Any]]:
    """Load a run's best model (eval mode) and its run.json (or, for an unfinished run, its config.json).

    weights: ``model.safetensors`` (best, default) or ``last.safetensors``.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = build_model(config["model"])
    load_weights(model, run_dir / weights)
    model.eval()
    run_path = run_dir / RUN_FILE
    info = read_json(run_path) if run_path.is_file() else {"config": config, "finished": False}
    return model, info


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a finished training run says about itself, read once by :func:`read_run_info`.

    ``layer`` is the hidden_states index the head was trained on (MFBF0's only layer is 0);
    ``feature_dir`` the feature cache folder as recorded at training (maybe relative);
    ``feature_manifest_sha256`` the sha256 of that cache's manifest.json then; ``corpus`` the
    training corpus name; ``corpus_classes`` the classes its validation split had; ``fold``/``k``
    the test fold of a k-fold run. ``info`` and ``config`` are run.json and config.json as read.
    """

    run_dir: Path
    config: dict[str, Any]
    info: dict[str, Any]
    vocabulary: Vocabulary
    feature_model: str
    layer: int
    feature_dir: str | None
    feature_manifest_sha256: str | None
    corpus: str | None
    corpus_classes: tuple[str, ...] | None
    fold: int | None
    k: int | None

    @property
    def weights_path(self) -> Path:
        return self.run_dir / BEST_WEIGHTS

    @functools.cached_property
    def weights_sha256(self) -> str:
        """sha256 of the run's best weights (``model.safetensors``), which an artifact records as ``run_sha256``."""
        if not self.weights_path.is_file():
            raise ManifestError(f"{self.run_dir} has no {BEST_WEIGHTS}; expected a finished training run folder. "
                                "Finish it with `edge-ser train ... --resume`.")
        return sha256_file(self.weights_path)

    def load_head(self) -> TCGRU:
        """The trained head with its best weights, in eval mode."""
        return load_run(self.run_dir)[0]

    @functools.cached_property
    def home_corpora(self) -> frozenset[str]:
        """The corpus the run trained on and, when that was a copy (a window corpus, say), the corpus
        it was made from: utterances of either share speakers and folds with the training rows.

        The base comes from run.json (``features.corpus_base``, recorded at training) or, for runs
        that predate it, from the training corpus's manifest when its folder still exists.
        """
        if self.corpus is None:
            return frozenset()
        features = self.info.get("features") or {}
        base = features.get("corpus_base")
        if base is None and "corpus_base" not in features:
            try:
                from edge_ser.train.dataset import corpus_base_of

                base = corpus_base_of(self.feature_manifest()[1])
            except ManifestError:
                base = None
        return frozenset({self.corpus} | ({str(base)} if base else set()))

    def shares_speakers_with(self, corpus: Any) -> bool:
        """True when ``corpus`` (a loaded :class:`~edge_ser.data.table.Corpus`) is one of
        :attr:`home_corpora` or a copy made from one (``base_corpus`` in its manifest): its rows
        are the training rows' speakers and folds, so it is not another corpus."""
        from edge_ser.data.table import derivation

        derived = derivation(corpus.manifest)
        names = {corpus.name} | ({str(derived["base_corpus"])} if derived else set())
        return bool(names & self.home_corpora)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": os.fspath(self.run_dir), "feature_model": self.feature_model, "layer": self.layer,
                "feature_dir": self.feature_dir, "manifest_sha256": self.feature_manifest_sha256,
                "corpus": self.corpus, "corpus_classes": self.corpus_classes, "fold": self.fold, "k": self.k,
                "vocabulary": self.vocabulary.to_dict()}

    # ------------------------------------------------------------------ the feature cache

    def feature_cache(self, features_dir: str | os.PathLike | None = None) -> Path | None:
        """The feature cache this run was trained on, or None when no candidate folder exists.

        The one rule: ``features_dir`` when given (the cache moved), else the recorded path as it
        is, relative to the run folder, then relative to the run folder's parent; the first
        candidate with a manifest.json whose sha256 is the one recorded at training is the cache.
        Raises :class:`ManifestError` when candidates exist but none has that manifest (the
        features were re-extracted, or it is another cache).
        """
        if features_dir is not None:
            candidates = [Path(features_dir)]
        elif self.feature_dir:
            recorded = Path(self.feature_dir)
            candidates = [recorded] + ([] if recorded.is_absolute() else [self.run_dir / recorded,
                                                                          self.run_dir.parent / recorded])
        else:
            candidates = []
        found = [c for c in candidates if (c / "manifest.json").is_file()]
        if not found:
            return None
        if self.feature_manifest_sha256 is None:  # a run that recorded no digest: the first one found
            return found[0]
        digests = {c: sha256_file(c / "manifest.json") for c in found}
        for candidate, digest in digests.items():
            if digest == self.feature_manifest_sha256:
                return candidate
        seen = ", ".join(f"{c} ({d[:12]}...)" for c, d in digests.items())
        raise ManifestError(
            f"run {self.run_dir} was trained on a feature cache whose manifest.json had sha256 "
            f"{self.feature_manifest_sha256[:12]}...; found {seen}: the features were re-extracted, or this is "
            "another cache. Point features_dir (--features) at the cache the run was trained on, or re-train the run."
        )

    def feature_manifest(self, features_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
        """``(cache folder, manifest)`` of the run's feature cache (:meth:`feature_cache`); ManifestError
        when it is missing or holds another model's features."""
        cache_dir = self.feature_cache(features_dir)
        if cache_dir is None:
            where = os.fspath(features_dir) if features_dir is not None else repr(self.feature_dir)
            raise ManifestError(
                f"run {self.run_dir} was trained on the feature cache {where}, which has no manifest.json; expected "
                "the cache folder to still exist (weights source and corpus come from it). Restore it, or pass "
                "features_dir (--features) pointing at it (only its manifest.json is read)."
            )
        manifest = read_json(cache_dir / "manifest.json")
        if manifest.get("model") != self.feature_model:
            raise ManifestError(
                f"{cache_dir} holds {manifest.get('model')!r} features; the run was trained on "
                f"{self.feature_model!r}. Point features_dir (--features) at the run's feature cache."
            )
        return cache_dir, manifest

    def provenance(self, features_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Feature model, layer, feature cache, weights source, fold and corpus folder behind the run
        (run.json -> its feature cache's manifest.json -> the corpus), as conversion records it."""
        cache_dir, manifest = self.feature_manifest(features_dir)
        corpus = manifest.get("corpus") or {}
        return {
            "feature_model": self.feature_model, "layer": self.layer, "feature_dir": str(cache_dir),
            "feature_manifest_sha256": self.feature_manifest_sha256,
            "weights_source": manifest.get("weights_source"), "fold": self.fold,
            "corpus_dir": corpus.get("dir"), "corpus": corpus.get("name"),
            "input_level": (manifest.get("spec") or {}).get("input_level"),
            "stream": manifest.get("stream"),
        }

    # ------------------------------------------------------------------ foundation-model weights

    @staticmethod
    def foundation_weights(manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of :func:`edge_ser.fm.load_foundation_model` (``weights``, ``random_init``,
        ``seed``) that rebuild the foundation model a feature cache was extracted with."""
        recorded = manifest.get("weights_source") or {}
        if recorded.get("kind") == "random-init":
            seed = (manifest.get("plan") or {}).get("seed")
            return {"weights": None, "random_init": True, "seed": 0 if seed is None else int(seed)}
        if recorded.get("path"):
            return {"weights": recorded["path"], "random_init": False, "seed": 0}
        raise ManifestError(
            f"the feature cache manifest records weights {recorded!r} for {manifest.get('model')}; expected a weights "
            "path or random init to rebuild the foundation model. Re-extract the features with this edge-ser."
        )

    @staticmethod
    def check_foundation_weights(manifest: Mapping[str, Any], sha256: str | None, *, loaded_from: Any,
                                 recorded_by: str = "the run's features were extracted") -> None:
        """Raise unless foundation-model weights loaded now (``sha256``) are those ``manifest`` records
        (a feature cache's, or an artifact's source block): a head trained on features of other
        weights would silently disagree. The one weights-digest check of evaluation, conversion and
        verification."""
        recorded = manifest.get("weights_source") or {}
        expected = recorded.get("sha256") if isinstance(recorded, Mapping) else None
        if expected and sha256 and expected != sha256:
            raise ManifestError(
                f"{manifest.get('model')} weights loaded from {loaded_from} have sha256 {str(sha256)[:12]}..., but "
                f"{recorded_by} with {str(expected)[:12]}... ({recorded.get('detail')}). Pass "
                "weights=<the folder used for feature extraction> (--weights) or restore those weights, or "
                "re-extract features and retrain."
            )

    def splits_as_trained(self, corpus: Any) -> Any:
        """``corpus.table`` with the ``split`` column this run trained with.

        A k-fold run held out its own fold: on a corpus that :meth:`shares_speakers_with` it (its
        training corpus, the corpus it was cut from, or a noisy / condition / window copy of
        either), the test rows are fold ``f`` and the validation rows fold ``f + 1`` (:func:`edge_ser.data.splits.fold_assignment`), whatever the table's own
        ``split`` column says (``data prepare`` writes fold 0's assignment there). Scoring a fold-3
        run on that column would score speakers it trained on. Any other run or corpus: unchanged.
        """
        table = corpus.table
        if self.fold is None:
            return table
        from edge_ser.data.splits import fold_assignment

        if not self.shares_speakers_with(corpus):
            return table  # another corpus: never trained on, its own splits stand

        folds = table["fold"].astype(int) if "fold" in table.columns else None
        if folds is None or (folds < 0).all():
            raise ManifestError(
                f"{self.run_dir} is the fold-{self.fold} run of a {self.k}-fold set on corpus {self.corpus!r}, but "
                f"{corpus.root} has no speaker folds (no fold column, or every fold -1), so its held-out speakers "
                "cannot be told apart; expected the k-fold corpus the run was trained on (or a copy made from it "
                "with --split all)."
            )
        if self.k is not None and int(folds.max()) + 1 != int(self.k):
            raise ManifestError(
                f"{corpus.root} has {int(folds.max()) + 1} speaker folds; {self.run_dir} was trained on {self.k}. "
                "Expected the k-fold corpus the run was trained on (or a copy made from it with --split all)."
            )
        return fold_assignment(table, fold=int(self.fold))

    def check_artifact(self, source: Mapping[str, Any], *, artifact: Any, role: str = "artifact") -> None:
        """Raise unless an artifact's manifest ``source`` block says it was converted from this run
        (``run_sha256`` equals :attr:`weights_sha256`)."""
        recorded = source.get("run_sha256")
        if not recorded:
            raise ManifestError(
                f"{role} {artifact} records no source run sha256 (manifest source = {dict(source)}); expected "
                "source.run_sha256 written by `edge-ser convert`. Re-convert the run with this edge-ser."
            )
        if recorded != self.weights_sha256:
            raise ManifestError(
                f"{role} {artifact} was converted from another run: its manifest records run "
                f"{source.get('run')!r} with model.safetensors sha256 {str(recorded)[:16]}..., but {self.run_dir} has "
                f"{self.weights_sha256[:16]}.... Pass the run it was converted from (--run), or re-convert this run."
            )


def read_run_info(run_dir: str | os.PathLike) -> RunInfo:
    """Read a finished training run folder (config.json + run.json); ManifestError when it is not one."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    run_path = run_dir / RUN_FILE
    info = read_json(run_path) if run_path.is_file() else {}
    if not info.get("finished", False) or "features" not in info:
        raise ManifestError(
            f"{run_dir} has no finished run.json (training was interrupted or is still running); expected a "
            "finished run folder. Finish it with `edge-ser train ... --resume`."
        )
    features = info["features"] or {}
    model = info.get("feature_model") or features.get("feature_model")
    layer = info.get("feature_layer", features.get("layer"))
    if model is None or layer is None:
        raise ManifestError(
            f"{run_dir}/run.json records feature model {model!r} and layer {layer!r}; expected both (a run trained "
            "on a feature cache). Runs trained on in-memory arrays cannot be evaluated or converted from audio."
        )
    classes = (info.get("valid_metrics") or {}).get("corpus_classes")
    return RunInfo(
        run_dir=run_dir, config=config, info=info,
        vocabulary=Vocabulary.from_dict(info.get("label_vocabulary")),
        feature_model=str(model), layer=int(layer), feature_dir=features.get("feature_dir"),
        feature_manifest_sha256=info.get("feature_manifest_sha256") or features.get("manifest_sha256"),
        corpus=features.get("corpus"), corpus_classes=tuple(classes) if classes is not None else None,
        fold=None if features.get("fold") is None else int(features["fold"]),
        k=None if features.get("k") is None else int(features["k"]),
    )


def plot_history(history: list[dict[str, Any]], path: str | os.PathLike, *, title: str = "") -> None:
    """loss_curves.png: train/valid loss (left) and validation UAR / mean CCC (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [h["valid_loss"] for h in history], marker="o", label="valid loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key, label in (("uar6", "valid UAR (6 reported)"), ("uar_corpus", "valid UAR (corpus classes)"),
                       ("ccc_mean", "valid mean CCC (A/V/D)")):
        values = [h["valid"].get(key) for h in history]
        if any(v is not None for v in values):
            ax_metric.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("metric")
    ax_metric.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

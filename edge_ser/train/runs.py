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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edge_ser.errors import ManifestError
from edge_ser.io import atomic_path, read_json, write_json_atomic
from edge_ser.train.model import TCGRU

__all__ = [
    "RUN_FORMAT", "RUN_FORMAT_VERSION", "CONFIG_FILE", "BEST_WEIGHTS", "LAST_WEIGHTS", "OPTIMIZER_FILE",
    "STATE_FILE", "HISTORY_FILE", "RUN_FILE", "CURVES_FILE", "save_weights", "load_weights", "save_optimizer",
    "load_optimizer", "load_run", "plot_history",
]

RUN_FORMAT = "edge-ser-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
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
    params = dict(model_config)
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

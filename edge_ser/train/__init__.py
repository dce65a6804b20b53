"""edge_ser.train: the TC-GRU multitask head, its losses, feature sources, run folders and the trainer.

Names are loaded on first use (PEP 562), so a later stage that reads a run folder
(``edge_ser.train.runs``) does not import the trainer with it.

>>> from edge_ser.train import TCGRU
>>> TCGRU(1024).count_parameters()
1645068
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TCGRU": "model", "TCGRUOutput": "model",
    "LOSSES": "losses", "ccc": "losses", "ccc_loss": "losses", "multitask_loss": "losses",
    "FeatureSource": "dataset", "ArrayFeatureSource": "dataset", "CacheFeatureSource": "dataset",
    "PaddedBatch": "dataset", "iterate_batches": "dataset",
    "RunInfo": "runs", "load_run": "runs", "read_run_info": "runs",
    "TrainConfig": "trainer", "RunResult": "trainer", "FoldSummary": "trainer", "train_run": "trainer",
    "train_folds": "trainer", "train_folds_on_source": "trainer",
}
"""Public name -> the submodule of edge_ser.train that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_ser.train' has no attribute {name!r}; it exports {__all__}.")
    value = getattr(importlib.import_module(f"edge_ser.train.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""edge_ser.train: the TC-GRU multitask head, its losses, feature sources and the trainer.

>>> from edge_ser.train import TCGRU
>>> TCGRU(1024).count_parameters()
1645068
"""

from edge_ser.train.dataset import ArrayFeatureSource, CacheFeatureSource, FeatureSource, PaddedBatch, iterate_batches
from edge_ser.train.losses import LOSSES, ccc, ccc_loss, multitask_loss
from edge_ser.train.model import TCGRU, TCGRUExport, TCGRUOutput, UnrolledGRU
from edge_ser.train.runs import load_run
from edge_ser.train.trainer import FoldSummary, RunResult, TrainConfig, train_folds, train_folds_on_source, train_run

__all__ = [
    "TCGRU", "TCGRUExport", "TCGRUOutput", "UnrolledGRU",
    "LOSSES", "ccc", "ccc_loss", "multitask_loss",
    "FeatureSource", "ArrayFeatureSource", "CacheFeatureSource", "PaddedBatch", "iterate_batches",
    "TrainConfig", "RunResult", "FoldSummary", "train_run", "train_folds", "train_folds_on_source", "load_run",
]

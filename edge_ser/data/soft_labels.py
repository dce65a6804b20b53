"""Grader votes -> soft targets (SPEC.md sections 1 and 7 items 2-3)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES, REPORTED_CATEGORIES, category_index

SOFT_TARGET_RULE_VOTES = (
    "p_c = n_c / sum_c' n_c' over the primary votes of all graders (SPEC.md section 1); "
    "votes outside the 8 named classes, free text included, count for 'other'."
)
SOFT_TARGET_RULE_SINGLE = (
    "corpus has one label per utterance and no grader votes: the target is one-hot on the "
    "mapped category (a single vote)."
)


def vote_counts(labels: Sequence[str]) -> np.ndarray:
    """Count primary votes per category. `labels` are already-mapped category names.

    >>> vote_counts(["happy", "happy", "neutral"]).tolist()
    [1, 2, 0, 0, 0, 0, 0, 0, 0]
    """
    counts = np.zeros(len(CATEGORIES), dtype=np.int64)
    for name in labels:
        counts[category_index(name)] += 1
    return counts


def grader_vote_distribution(votes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalise a 9-vector of vote counts to a distribution that sums to 1.

    Raises CorpusError for a wrong length, negative counts or no votes at all.

    >>> grader_vote_distribution([2, 1, 0, 0, 0, 0, 0, 0, 1]).tolist()
    [0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]
    """
    counts = np.asarray(votes, dtype=np.float64)
    if counts.shape != (len(CATEGORIES),):
        raise CorpusError(
            f"grader votes have shape {counts.shape}; expected ({len(CATEGORIES)},) counts in "
            f"the order {list(CATEGORIES)}. Map the corpus labels onto edge_ser.labels.CATEGORIES."
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise CorpusError(f"grader votes {counts.tolist()} contain negative or non-finite counts.")
    total = counts.sum()
    if total <= 0:
        raise CorpusError(
            "utterance has no grader votes (all counts are 0); expected at least one vote. "
            "Drop the utterance or give it a label."
        )
    return counts / total


def consensus_label(votes: Sequence[float] | np.ndarray, *, reported_only: bool = False) -> str | None:
    """Plurality label of the votes; None on a tie (SPEC.md section 7 item 3).

    With ``reported_only`` a plurality outside the 6 reported classes also gives None.

    >>> consensus_label([1, 3, 0, 0, 0, 0, 0, 0, 0])
    'happy'
    >>> consensus_label([2, 2, 0, 0, 0, 0, 0, 0, 0]) is None
    True
    """
    counts = np.asarray(votes, dtype=np.float64)
    if counts.sum() <= 0:
        return None
    top = counts.max()
    winners = np.flatnonzero(counts == top)
    if len(winners) != 1:
        return None
    name = CATEGORIES[int(winners[0])]
    if reported_only and name not in REPORTED_CATEGORIES:
        return None
    return name

"""Metrics shared by training, evaluation and the runtime's parity check (numpy only; SPEC.md sections 5 and 7).

This module sits in the lowest layer (docs/architecture.md): it imports numpy and edge_ser's
constants only, never torch, so :mod:`edge_ser.runtime` can use it. Training monitors validation
with it, :mod:`edge_ser.evaluation` builds reports on it, and :mod:`edge_ser.runtime.parity` scores
an artifact against its reference with the same CCC and UAR.

**CCC of constant series.** :func:`concordance` (and :func:`ccc`, built on it) returns NaN when
the denominator ``var x + var y + (mean x - mean y)^2`` is 0, which happens only when both series
are constant and equal: agreement is then undefined (0/0), neither perfect nor absent. When only
one series is constant the covariance is 0 and CCC is 0. Fewer than two scored pairs give NaN
as well. Callers skip NaN (training records None, parity does not gate that dimension). The
training loss (:func:`edge_ser.train.losses.ccc`) is a separate, differentiable torch form with
an epsilon in the denominator; it is an objective, not a reported score.

Label conventions shared by every function here:

- A *label* is a category name from :data:`edge_ser.labels.CATEGORIES` (``"sad"``) or its
  index in that 9-way output order (``2``). ``""``, ``None``, NaN and ``-1`` mean "no
  reference label" (ties / no agreement, SPEC.md section 7 item 3); such utterances are
  never scored.
- ``classes`` is the list of category names that are *scored*. Utterances whose reference
  is outside ``classes`` are dropped. UAR-style averages run over the classes that are
  **present** in the references, so a class absent from a test set (contempt in RAVDESS,
  fear in MOSEI) neither counts as 0 nor as 1.
- ``probs`` is a ``(n, 9)`` array of predicted probabilities in CATEGORIES order.
- The *label space* is :data:`CATEGORIES` unless a run has its own corpus vocabulary: then
  evaluation enters :func:`label_space` with the run's classes, and names, indices, ``probs``
  columns and the default scored classes (every class instead of the paper's 6) follow it.
- k-best ranking (SPEC.md section 7 item 4) ranks only the columns named in
  ``rank_over`` (default: the 6 reported classes); pass ``CATEGORIES`` for the 9-way
  variant. Ties in scores go to the class listed first in ``rank_over``, so results are
  deterministic.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from edge_ser.errors import EdgeSerError
from edge_ser.labels import CATEGORIES, REPORTED_CATEGORIES
from edge_ser.progress import progress_bar

__all__ = [
    "NO_LABEL", "PA_UAR_THRESHOLDS", "EvaluationError", "label_space", "space_classes", "default_scored_classes",
    "encode_labels", "class_indices", "check_probs", "recall_from_hits", "concordance", "ccc", "mean_recall",
    "per_class_recall", "uar", "weighted_accuracy", "macro_f1", "confusion_matrix", "top1_predictions",
    "k_best_hits", "uar_at_k", "soft_agreement", "kl_divergence", "cross_entropy", "is_known_speaker",
    "per_speaker_uar", "pa_uar", "ReliabilityCurve", "reliability_curve", "expected_calibration_error",
    "BootstrapCI", "bootstrap_ci",
]

NO_LABEL: int = -1
"""Index used for "no reference label"."""

PA_UAR_THRESHOLDS: tuple[int, ...] = (75, 50)
"""The paUAR-X thresholds the paper reports (percent)."""

_UNKNOWN_SPEAKERS = frozenset({"", "unknown", "nan", "none"})


class EvaluationError(EdgeSerError, ValueError):
    """Inputs to a metric or report are empty, mis-shaped or inconsistent."""


# --------------------------------------------------------------------------- helpers

_LABEL_SPACE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("edge_ser_label_space",
                                                                                default=CATEGORIES)


@contextlib.contextmanager
def label_space(classes: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Score in another label vocabulary (a run trained with ``--labels corpus``) inside the block.

    >>> with label_space(["calm", "sad"]):
    ...     encode_labels(["sad", "calm"]).tolist()
    [1, 0]
    """
    names = tuple(str(c) for c in classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise EvaluationError(f"a label space needs at least 2 distinct class names; got {list(names)}.")
    token = _LABEL_SPACE.set(names)
    try:
        yield names
    finally:
        _LABEL_SPACE.reset(token)


def space_classes() -> tuple[str, ...]:
    """The class names of the current label space, in output order."""
    return _LABEL_SPACE.get()


def default_scored_classes() -> tuple[str, ...]:
    """The classes scored by default: the paper's 6 in the paper's space, every class of a corpus vocabulary."""
    classes = _LABEL_SPACE.get()
    return REPORTED_CATEGORIES if classes == CATEGORIES else classes


def _class_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(_LABEL_SPACE.get())}




def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip() == "":
        return True
    return False


def encode_labels(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Category names or indices -> ``(n,)`` int64 indices into space_classes(), -1 for no label.

    >>> encode_labels(["sad", "", None, 0]).tolist()
    [2, -1, -1, 0]
    """
    values = np.asarray(labels, dtype=object).ravel() if not isinstance(labels, np.ndarray) else labels.ravel()
    if values.dtype.kind in "iu":
        out = values.astype(np.int64)
        bad = out[(out < NO_LABEL) | (out >= len(space_classes()))]
        if bad.size:
            raise EvaluationError(
                f"label indices must be in [-1, {len(space_classes()) - 1}] (label-space order, -1 = none); "
                f"received {sorted(set(bad.tolist()))[:5]}. Pass class names or indices into {list(space_classes())}."
            )
        return out
    out = np.empty(len(values), dtype=np.int64)
    unknown: set[str] = set()
    for i, value in enumerate(values):
        if _is_missing(value):
            out[i] = NO_LABEL
        elif isinstance(value, str):
            index = _class_index().get(value.strip())
            if index is None:
                unknown.add(value)
                index = NO_LABEL
            out[i] = index
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not NO_LABEL <= int(value) < len(space_classes()):
                unknown.add(repr(value))
            out[i] = int(value)
        else:
            unknown.add(repr(value))
    if unknown:
        raise EvaluationError(
            f"unknown label value(s) {sorted(unknown)[:8]}; expected names from {list(space_classes())}, "
            "indices 0..8, or ''/None/-1 for no label. Map corpus labels onto the vocabulary first (edge_ser.data)."
        )
    return out


def class_indices(classes: Sequence[str] | None) -> np.ndarray:
    """Validate a list of scored class names and return their label-space indices ``(C,)``.

    ``None`` is :func:`default_scored_classes`.
    """
    if classes is None:
        classes = default_scored_classes()
    if isinstance(classes, str):
        raise EvaluationError(f"classes must be a sequence of category names, received the string {classes!r}.")
    names = list(classes)
    if not names:
        raise EvaluationError(
            "classes is empty; expected at least one category name, e.g. edge_ser.labels.REPORTED_CATEGORIES."
        )
    unknown = [c for c in names if c not in _class_index()]
    if unknown:
        raise EvaluationError(f"classes {unknown} are not categories; expected names from {list(space_classes())}.")
    if len(set(names)) != len(names):
        raise EvaluationError(f"classes contains duplicates: {names}; list each category once.")
    return np.array([_class_index()[c] for c in names], dtype=np.int64)


def check_probs(probs: Any, *, name: str = "probs", atol: float = 1e-3) -> np.ndarray:
    """Validate a ``(n, 9)`` probability array (finite, >= 0, rows summing to 1 within ``atol``)."""
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(space_classes()):
        raise EvaluationError(
            f"{name} has shape {array.shape}; expected (n, {len(space_classes())}) probabilities in space_classes() order."
        )
    if array.shape[0] == 0:
        raise EvaluationError(f"{name} is empty (0 utterances); a metric needs at least one utterance.")
    if not np.isfinite(array).all():
        raise EvaluationError(f"{name} contains NaN or inf; predictions must be finite. Check the model outputs.")
    sums = array.sum(axis=1)
    if array.min() < -1e-9 or not np.allclose(sums, 1.0, atol=atol):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise EvaluationError(
            f"{name} rows must be probability distributions; row {worst} sums to {sums[worst]:.6f} "
            f"(min value {array.min():.3g}). Apply softmax to logits before evaluating."
        )
    return array


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise EvaluationError(f"inputs differ in length: {lengths}; expected one entry per utterance in each.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise EvaluationError(f"inputs are empty ({lengths}); a metric needs at least one utterance.")
    return n


def _scored_mask(ref_idx: np.ndarray, cls: np.ndarray, *, what: str) -> np.ndarray:
    scored = np.isin(ref_idx, cls)
    if not scored.any():
        present = sorted({space_classes()[i] for i in ref_idx.tolist() if i >= 0})
        raise EvaluationError(
            f"no reference label falls in the scored classes {[space_classes()[i] for i in cls]} for {what} "
            f"(reference labels present: {present or 'none'}). Pass classes that occur in the references."
        )
    return scored


def recall_from_hits(ref_idx: np.ndarray, hits: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Per-class recall ``(C,)`` from reference indices and per-utterance hits; NaN for absent classes."""
    position = np.full(len(space_classes()), -1, dtype=np.int64)
    position[cls] = np.arange(len(cls))
    pos = position[np.where(ref_idx >= 0, ref_idx, 0)]
    pos = np.where(ref_idx >= 0, pos, -1)
    keep = pos >= 0
    support = np.bincount(pos[keep], minlength=len(cls)).astype(np.float64)
    hit_count = np.bincount(pos[keep], weights=hits[keep].astype(np.float64), minlength=len(cls))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hit_count / np.where(support > 0, support, 1.0), np.nan)


# --------------------------------------------------------------------------- dimensional


def concordance(mean_x: Any, mean_y: Any, var_x: Any, var_y: Any, cov: Any) -> Any:
    """CCC from population moments: ``2 cov / (var_x + var_y + (mean_x - mean_y)^2)`` (SPEC.md Eq. 5).

    The one CCC formula of edge-ser; arguments broadcast (a bootstrap passes one moment per
    resample). NaN where the denominator is 0, i.e. both series constant and equal (module
    docstring). Returns a float for scalar moments, else an array.

    >>> concordance(0.5, 0.5, 0.0, 0.0, 0.0)
    nan
    >>> concordance(0.5, 0.0, 0.0, 0.25, 0.0)
    0.0
    """
    denom = np.asarray(var_x + var_y + (np.asarray(mean_x) - mean_y) ** 2, dtype=np.float64)
    value = np.where(denom > 0, 2.0 * np.asarray(cov, dtype=np.float64) / np.where(denom > 0, denom, 1.0), np.nan)
    return float(value) if value.ndim == 0 else value


def ccc(pred: Sequence[float] | np.ndarray, ref: Sequence[float] | np.ndarray) -> float:
    """Concordance correlation coefficient (SPEC.md Eq. 5) with population statistics.

    ``pred`` and ``ref`` are ``(n,)`` scores on the same scale. Pairs whose reference is
    NaN are dropped (a corpus without that dimension). Returns NaN when fewer than two
    pairs remain or when both series are constant and equal (CCC undefined, see
    :func:`concordance`).

    >>> round(ccc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), 6)
    1.0
    >>> ccc([0.5, 0.5], [0.5, 0.5])
    nan
    """
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(ref, dtype=np.float64).ravel()
    _same_length(pred=x, ref=y)
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if not np.isfinite(x).all():
        raise EvaluationError("pred contains NaN or inf where the reference is present; predictions must be finite.")
    if x.size < 2:
        return float("nan")
    mx, my = x.mean(), y.mean()
    return concordance(mx, my, ((x - mx) ** 2).mean(), ((y - my) ** 2).mean(), ((x - mx) * (y - my)).mean())


def mean_recall(ref_idx: Any, pred_idx: Any, *, classes: Sequence[int] | None = None) -> float:
    """UAR on integer class indices in any vocabulary: the mean recall over the classes of
    ``classes`` (default: every class) that occur in ``ref_idx``; NaN when none occurs.

    ``ref_idx``/``pred_idx``: ``(n,)`` indices of the utterances to score (drop unlabelled ones
    first). The label-space functions (:func:`uar`, :func:`uar_at_k`) apply the same rule to names.

    >>> mean_recall([0, 0, 1, 1], [0, 1, 1, 1])
    0.75
    """
    ref = np.asarray(ref_idx).ravel()
    pred = np.asarray(pred_idx).ravel()
    if ref.shape != pred.shape:
        raise EvaluationError(f"ref_idx has {ref.size} entries and pred_idx {pred.size}; expected one of each per "
                              "utterance.")
    present = np.unique(ref) if classes is None else [c for c in classes if np.any(ref == c)]
    if len(present) == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[ref == c] == c) for c in present]))


# --------------------------------------------------------------------------- categorical (hard)


def per_class_recall(ref: Sequence[Any], pred: Sequence[Any], *, classes: Sequence[str]) -> dict[str, float]:
    """Recall of each scored class (NaN for classes absent from the references)."""
    ref_idx, pred_idx = encode_labels(ref), encode_labels(pred)
    _same_length(ref=ref_idx, pred=pred_idx)
    cls = class_indices(classes)
    _scored_mask(ref_idx, cls, what="per-class recall")
    recall = recall_from_hits(ref_idx, ref_idx == pred_idx, cls)
    return {space_classes()[c]: float(r) for c, r in zip(cls, recall)}


def uar(ref: Sequence[Any], pred: Sequence[Any], *, classes: Sequence[str]) -> float:
    """Unweighted average recall over the scored classes present in ``ref`` (SPEC.md section 5).

    A prediction outside ``classes`` counts as a miss. Raises when no reference is scored.
    """
    recall = np.array(list(per_class_recall(ref, pred, classes=classes).values()))
    return float(np.nanmean(recall))


def weighted_accuracy(ref: Sequence[Any], pred: Sequence[Any], *, classes: Sequence[str]) -> float:
    """Plain accuracy over utterances whose reference is in ``classes`` (recall weighted by support)."""
    ref_idx, pred_idx = encode_labels(ref), encode_labels(pred)
    _same_length(ref=ref_idx, pred=pred_idx)
    scored = _scored_mask(ref_idx, class_indices(classes), what="weighted accuracy")
    return float(np.mean(ref_idx[scored] == pred_idx[scored]))


def macro_f1(ref: Sequence[Any], pred: Sequence[Any], *, classes: Sequence[str]) -> float:
    """Mean F1 over the scored classes present in ``ref``.

    Computed on utterances whose reference is scored; F1_c = 2TP / (2TP + FP + FN), where a
    false positive for c is a scored utterance predicted c with another reference.
    """
    ref_idx, pred_idx = encode_labels(ref), encode_labels(pred)
    _same_length(ref=ref_idx, pred=pred_idx)
    cls = class_indices(classes)
    scored = _scored_mask(ref_idx, cls, what="macro-F1")
    r, p = ref_idx[scored], pred_idx[scored]
    scores = []
    for c in cls:
        if not (r == c).any():
            continue
        tp = float(np.sum((r == c) & (p == c)))
        fp = float(np.sum((r != c) & (p == c)))
        fn = float(np.sum((r == c) & (p != c)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def confusion_matrix(ref: Sequence[Any], pred: Sequence[Any], *, classes: Sequence[str]) -> np.ndarray:
    """Counts ``(C, C)``: row = reference class, column = predicted class, in ``classes`` order.

    Utterances whose reference is not scored are dropped. A prediction outside ``classes``
    has no column, so a row sums to that class's support only when every prediction is a
    scored class (always the case with ranking over ``classes``, as the report does).
    """
    ref_idx, pred_idx = encode_labels(ref), encode_labels(pred)
    _same_length(ref=ref_idx, pred=pred_idx)
    cls = class_indices(classes)
    position = np.full(len(space_classes()) + 1, -1, dtype=np.int64)
    position[cls] = np.arange(len(cls))
    rows, cols = position[ref_idx], position[pred_idx]  # -1 indexes the spare last slot -> -1
    keep = (rows >= 0) & (cols >= 0)
    matrix = np.zeros((len(cls), len(cls)), dtype=np.int64)
    np.add.at(matrix, (rows[keep], cols[keep]), 1)
    return matrix


# --------------------------------------------------------------------------- k-best


def top1_predictions(probs: Any, *, rank_over: Sequence[str] | None = None) -> np.ndarray:
    """``(n,)`` label-space index of the highest-scoring class among ``rank_over``."""
    array = check_probs(probs)
    cols = class_indices(rank_over)
    return cols[np.argmax(array[:, cols], axis=1)]


def k_best_hits(
    probs: Any, ref_idx: Sequence[Any], *, k: int, rank_over: Sequence[str] | None = None
) -> np.ndarray:
    """``(n,)`` bool: is the reference among the k highest-scoring classes of ``rank_over``?

    ``probs`` is ``(n, 9)``; ``ref_idx`` are labels (names or label-space indices). An utterance
    without a reference, or whose reference is not in ``rank_over``, is never a hit.
    """
    array = check_probs(probs)
    ref = encode_labels(ref_idx)
    _same_length(probs=array, ref=ref)
    cols = class_indices(rank_over)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(cols):
        raise EvaluationError(f"k={k!r} is out of range; expected an integer in 1..{len(cols)} (len(rank_over)).")
    # stable sort on the negated scores: ties go to the class listed first in rank_over
    order = np.argsort(-array[:, cols], axis=1, kind="stable")[:, :k]
    return (cols[order] == ref[:, None]).any(axis=1)


def uar_at_k(
    probs: Any,
    ref: Sequence[Any],
    *,
    k: int,
    classes: Sequence[str] | None = None,
    rank_over: Sequence[str] | None = None,
) -> float:
    """UAR with hit@k (SPEC.md section 5): mean over present scored classes of k-best recall."""
    ref_idx = encode_labels(ref)
    hits = k_best_hits(probs, ref_idx, k=k, rank_over=rank_over)
    cls = class_indices(classes)
    _scored_mask(ref_idx, cls, what=f"UAR@{k}")
    return float(np.nanmean(recall_from_hits(ref_idx, hits, cls)))


# --------------------------------------------------------------------------- soft labels


def _soft_pairs(p_ref: Any, q_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_ref, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(space_classes()):
        raise EvaluationError(f"p_ref has shape {p.shape}; expected (n, {len(space_classes())}) grader distributions.")
    q = check_probs(q_pred, name="q_pred")
    _same_length(p_ref=p, q_pred=q)
    keep = ~np.isnan(p).any(axis=1)
    p = p[keep]
    if p.size:
        check_probs(p, name="p_ref (rows without NaN)")
    return p, q[keep]


def soft_agreement(p_ref: Any, q_pred: Any) -> float:
    """Mean histogram intersection sum_c min(p_c, q_c) in [0, 1]; 1 = identical distributions.

    ``p_ref``, ``q_pred``: ``(n, 9)``. Rows of ``p_ref`` with NaN (no votes) are dropped;
    NaN if none remain.
    """
    p, q = _soft_pairs(p_ref, q_pred)
    if not len(p):
        return float("nan")
    return float(np.minimum(p, q).sum(axis=1).mean())


def kl_divergence(p_ref: Any, q_pred: Any, *, eps: float = 1e-12) -> float:
    """Mean KL(p_ref || q_pred) in nats; 0 log 0 = 0, q clipped at ``eps``. NaN rows dropped."""
    p, q = _soft_pairs(p_ref, q_pred)
    if not len(p):
        return float("nan")
    ratio = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)) - np.log(np.maximum(q, eps)), 0.0)
    return float((p * ratio).sum(axis=1).mean())


def cross_entropy(p_ref: Any, q_pred: Any, *, eps: float = 1e-12) -> float:
    """Mean -sum_c p_c log q_c in nats (q clipped at ``eps``). NaN rows dropped."""
    p, q = _soft_pairs(p_ref, q_pred)
    if not len(p):
        return float("nan")
    return float(-(p * np.log(np.maximum(q, eps))).sum(axis=1).mean())


# --------------------------------------------------------------------------- per speaker


def is_known_speaker(value: Any) -> bool:
    """False for missing speaker ids (None, NaN, '', 'unknown')."""
    return not _is_missing(value) and str(value).strip().lower() not in _UNKNOWN_SPEAKERS


def per_speaker_uar(
    ref: Sequence[Any],
    probs: Any,
    speakers: Sequence[Hashable],
    *,
    k: int = 1,
    classes: Sequence[str],
    rank_over: Sequence[str] | None = None,
) -> dict[str, float]:
    """UAR@k of every speaker, ``{speaker id (str): UAR in [0, 1]}`` sorted by id.

    SPEC.md section 7 item 16: a speaker's UAR averages only the scored classes that
    speaker has in its references; utterances with unknown speaker are dropped; speakers
    with no scored reference get no entry (they have no UAR). No minimum utterance count.
    """
    ref_idx = encode_labels(ref)
    spk = np.asarray([str(s).strip() if is_known_speaker(s) else "" for s in speakers], dtype=object)
    _same_length(ref=ref_idx, speakers=spk)
    hits = k_best_hits(probs, ref_idx, k=k, rank_over=rank_over)
    cls = class_indices(classes)
    scored = np.isin(ref_idx, cls) & (spk != "")
    result: dict[str, float] = {}
    for speaker in sorted(set(spk[scored].tolist())):
        rows = scored & (spk == speaker)
        result[speaker] = float(np.nanmean(recall_from_hits(ref_idx[rows], hits[rows], cls)))
    return result


def pa_uar(per_speaker_uar: Mapping[str, float], *, x: float = 75) -> float:
    """paUAR-X: percent of speakers whose own UAR is strictly above X% (SPEC.md section 5).

    Speakers with few utterances are not filtered (SPEC.md section 7 item 16: no minimum);
    report ``len(per_speaker_uar)`` next to the value so the speaker count is visible.
    Raises on an empty mapping.
    """
    if not 0 <= x <= 100:
        raise EvaluationError(f"x={x} is not a percentage; expected 0..100 (the paper uses 75 and 50).")
    values = np.asarray(list(per_speaker_uar.values()), dtype=np.float64)
    if values.size == 0:
        raise EvaluationError(
            "per_speaker_uar is empty; paUAR needs at least one speaker with a scored reference label."
        )
    if np.isnan(values).any():
        raise EvaluationError("per_speaker_uar contains NaN; every speaker entry must be a UAR in [0, 1].")
    return float(100.0 * np.mean(values > x / 100.0))


# --------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """Top-1 reliability data on ``n_bins`` equal-width confidence bins ``(lo, hi]``.

    ``confidence``/``accuracy`` are per-bin means (None for empty bins), ``count`` the
    utterances per bin; ``ece`` = sum_b count_b / n * |accuracy_b - confidence_b|.
    """

    n_bins: int
    bin_edges: tuple[float, ...]
    confidence: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]
    count: tuple[int, ...]
    ece: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reliability_curve(
    probs: Any, ref: Sequence[Any], *, n_bins: int = 15, classes: Sequence[str] | None = None
) -> ReliabilityCurve:
    """Reliability data for the 9-way output: confidence = max prob, correct = argmax == reference.

    Only utterances whose reference is in ``classes`` are used (the scored ones).
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise EvaluationError(f"n_bins={n_bins!r}; expected a positive integer (15 is usual).")
    array = check_probs(probs)
    ref_idx = encode_labels(ref)
    _same_length(probs=array, ref=ref_idx)
    scored = _scored_mask(ref_idx, class_indices(classes), what="calibration")
    conf = array[scored].max(axis=1)
    correct = (array[scored].argmax(axis=1) == ref_idx[scored]).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    nonempty = count > 0
    mean_conf = np.where(nonempty, conf_sum / np.maximum(count, 1), np.nan)
    mean_acc = np.where(nonempty, acc_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[nonempty] / conf.size * np.abs(mean_acc[nonempty] - mean_conf[nonempty])))
    return ReliabilityCurve(
        n_bins=int(n_bins),
        bin_edges=tuple(float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)),
        confidence=tuple(float(v) if ok else None for v, ok in zip(mean_conf, nonempty)),
        accuracy=tuple(float(v) if ok else None for v, ok in zip(mean_acc, nonempty)),
        count=tuple(int(c) for c in count),
        ece=ece,
        n=int(conf.size),
    )


def expected_calibration_error(
    probs: Any, ref: Sequence[Any], *, n_bins: int = 15, classes: Sequence[str] | None = None
) -> float:
    """Top-1 expected calibration error in [0, 1]; see :func:`reliability_curve`."""
    return reliability_curve(probs, ref, n_bins=n_bins, classes=classes).ece


# --------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
    """A metric on the full set plus a percentile interval from resampling speakers.

    ``n_valid`` counts resamples where the metric was defined (a resample can lose every
    utterance of the scored classes); the interval uses those only.
    """

    estimate: float
    low: float
    high: float
    alpha: float
    n_resamples: int
    n_valid: int
    n_groups: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray], float],
    groups: Sequence[Hashable],
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    progress: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap CI, resampling *groups* (speakers) with replacement (SPEC.md 7.19).

    ``groups`` gives each utterance's speaker, ``(n_utt,)``; utterances with an unknown
    speaker are resampled as their own singleton groups. ``metric_fn`` receives an int
    array of utterance positions (with repeats) and returns a float; an
    :class:`EvaluationError` or NaN from it marks that resample invalid.

    For a significance test between two systems on the same utterances, bootstrap the
    difference ``lambda idx: metric_a(idx) - metric_b(idx)``: an interval that excludes
    0 means p < alpha (two-sided).
    """
    keys = [str(g).strip() if is_known_speaker(g) else None for g in groups]
    if not keys:
        raise EvaluationError("groups is empty; bootstrap_ci needs one group id per utterance.")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise EvaluationError(f"n={n!r}; expected a positive number of resamples (1000 is usual).")
    if not 0 < alpha < 1:
        raise EvaluationError(f"alpha={alpha}; expected a value in (0, 1), e.g. 0.05 for a 95% interval.")
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key if key is not None else f"\x00utt{i}", []).append(i)
    group_rows = [np.asarray(v, dtype=np.int64) for v in members.values()]
    estimate = float(metric_fn(np.arange(len(keys), dtype=np.int64)))
    rng = np.random.default_rng(seed)
    values = np.full(n, np.nan)
    for b in progress_bar(range(n), desc="bootstrap", enabled=progress, leave=False):
        draw = rng.integers(0, len(group_rows), size=len(group_rows))
        idx = np.concatenate([group_rows[g] for g in draw])
        try:
            values[b] = float(metric_fn(idx))
        except EvaluationError:
            values[b] = np.nan
    valid = values[~np.isnan(values)]
    if valid.size:
        low, high = (float(v) for v in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
    else:
        low = high = float("nan")
    return BootstrapCI(
        estimate=estimate, low=low, high=high, alpha=float(alpha), n_resamples=int(n),
        n_valid=int(valid.size), n_groups=len(group_rows), seed=int(seed),
    )

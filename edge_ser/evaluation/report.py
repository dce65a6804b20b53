"""Score a predictions table, write report folders, compare runs side by side.

The glue that runs a model over a test set only has to produce a **predictions table**
(pandas DataFrame, one row per utterance):

=====================  ==================================================================
utt_id, speaker        ids (speaker may be empty/"unknown": dropped from per-speaker stats)
gender                 ``female`` / ``male`` / ``unknown`` (optional column)
label                  reference consensus category name, or "" (tie / no agreement)
p_<category>           the 9 grader-vote soft targets (optional; NaN rows = no votes)
arousal ... dominance  reference dimensions (optional; NaN = missing)
pred_<category>        the 9 predicted probabilities, CATEGORIES order (required)
pred_arousal ...       predicted dimensions (optional)
=====================  ==================================================================

:func:`evaluate_predictions` turns it into a :class:`TestSetReport`;
:func:`write_report` writes ``report.json``, ``report.md`` and PNG plots for several test
sets; :func:`compare_reports` puts several report folders side by side.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from edge_ser import __version__
from edge_ser import metrics
from edge_ser.evaluation import plots
from edge_ser.metrics import EvaluationError, PA_UAR_THRESHOLDS
from edge_ser.io import read_json, write_json_atomic, write_text_atomic
from edge_ser.labels import CATEGORIES, DIMENSIONS, REPORTED_CATEGORIES

REPORT_FORMAT = "edge-ser-report"
REPORT_FORMAT_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"

PRED_PROB_COLUMNS: tuple[str, ...] = tuple(f"pred_{c}" for c in CATEGORIES)
REF_PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CATEGORIES)
PRED_DIM_COLUMNS: tuple[str, ...] = tuple(f"pred_{d}" for d in DIMENSIONS)
REQUIRED_COLUMNS: tuple[str, ...] = ("utt_id", "speaker", "label") + PRED_PROB_COLUMNS
GENDER_GROUPS: tuple[str, ...] = ("female", "male")
_DIM_SHORT = {"arousal": "Act", "valence": "Val", "dominance": "Dom"}


@dataclasses.dataclass(frozen=True)
class TestSetReport:
    """Every metric of one test set. Serialises to JSON with :meth:`to_dict`.

    Value conventions: UAR, WA, macro-F1, recall, soft agreement and ECE are fractions in
    [0, 1]; paUAR values are percentages of speakers; KL and cross-entropy are in nats.
    A metric that cannot be computed is ``None`` and ``notes`` says why. Keys ``"1"``,
    ``"2"``, ... are k of the k-best ranking; ``"75"``/``"50"`` are paUAR thresholds.

    ``ccc`` / ``uar``: ``{key: {"value", "low", "high", "n_valid_resamples"} | None}``
    (low/high None without bootstrap). ``uar_rank_all``: UAR@k when ranking all 9 classes.
    ``uar_reported``: UAR@k over the paper's 6 reported classes (present ones), ranked over
    those 6, filled only when ``classes`` differs from them.
    """

    __test__ = False  # not a pytest class despite the name

    name: str
    classes: tuple[str, ...]
    classes_present: tuple[str, ...]
    ks: tuple[int, ...]
    counts: dict[str, Any]
    ccc: dict[str, dict[str, Any] | None]
    uar: dict[str, dict[str, Any]]
    uar_rank_all: dict[str, float]
    uar_reported: dict[str, float]
    per_class_recall: dict[str, float | None]
    weighted_accuracy: float | None
    macro_f1: float | None
    confusion: dict[str, Any] | None
    soft: dict[str, Any] | None
    calibration: dict[str, Any] | None
    per_speaker_uar: dict[str, dict[str, float]]
    pa_uar: dict[str, dict[str, float]]
    pa_uar_by_gender: dict[str, dict[str, Any]]
    scatter: dict[str, dict[str, list[float]]]
    bootstrap: dict[str, Any]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN/inf become None."""
        return _clean_json(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TestSetReport":
        """Inverse of :meth:`to_dict` (e.g. one entry of ``report.json["test_sets"]``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise EvaluationError(
                f"test-set report lacks field(s) {missing}; expected a dict written by TestSetReport.to_dict "
                f"(report format {REPORT_FORMAT} v{REPORT_FORMAT_VERSION}). Re-run the evaluation."
            )
        values = {k: data[k] for k in names}
        for key in ("classes", "classes_present", "notes"):
            values[key] = tuple(values[key])
        values["ks"] = tuple(int(k) for k in values["ks"])
        return cls(**values)


def _clean_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _nan_to_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- evaluation


def _check_table(preds: pd.DataFrame, *, name: str) -> None:
    if not isinstance(preds, pd.DataFrame):
        raise EvaluationError(
            f"predictions for {name!r} are a {type(preds).__name__}; expected a pandas DataFrame "
            "(see the edge_ser.evaluation.report module docstring for its columns)."
        )
    if len(preds) == 0:
        raise EvaluationError(f"predictions table for {name!r} is empty; expected one row per test utterance.")
    required = ("utt_id", "speaker", "label") + tuple(f"pred_{c}" for c in prediction_classes(preds))
    missing = [c for c in required if c not in preds.columns]
    if missing:
        raise EvaluationError(
            f"predictions table for {name!r} lacks column(s) {missing}; has {list(preds.columns)}. "
            f"Required: {list(required)}."
        )


def prediction_classes(preds: pd.DataFrame) -> tuple[str, ...]:
    """The label space of a predictions table: the paper's 9 categories, or, when its
    ``label_vocabulary`` column says ``corpus`` (a run trained with ``--labels corpus``), the
    classes of its ``pred_<class>`` columns in column order."""
    if "label_vocabulary" not in preds.columns or not (preds["label_vocabulary"].astype(str) == "corpus").all():
        return CATEGORIES
    dims = {f"pred_{d}" for d in DIMENSIONS}
    names = tuple(c[len("pred_"):] for c in preds.columns if c.startswith("pred_") and c not in dims)
    if len(names) < 2:
        raise EvaluationError(f"predictions table marked label_vocabulary=corpus has pred_ columns for {list(names)}; "
                              "expected one per class of the run's vocabulary (at least 2).")
    return names


def _with_ci(
    value: float, fn, groups: np.ndarray, *, bootstrap: int, seed: int, alpha: float
) -> dict[str, Any]:
    if bootstrap <= 0:
        return {"value": _nan_to_none(value), "low": None, "high": None, "n_valid_resamples": 0}
    ci = metrics.bootstrap_ci(fn, groups, n=bootstrap, seed=seed, alpha=alpha)
    return {"value": _nan_to_none(ci.estimate), "low": _nan_to_none(ci.low), "high": _nan_to_none(ci.high),
            "n_valid_resamples": ci.n_valid}


def _speaker_genders(speakers: np.ndarray, genders: np.ndarray) -> dict[str, str]:
    """Each known speaker's gender: its most frequent known value ("unknown" if none)."""
    out: dict[str, str] = {}
    frame = pd.DataFrame({"speaker": speakers, "gender": genders})
    frame = frame[frame["speaker"] != ""]
    for speaker, rows in frame.groupby("speaker", sort=True):
        known = rows["gender"][rows["gender"] != "unknown"]
        out[str(speaker)] = str(known.mode().iloc[0]) if len(known) else "unknown"
    return out


def evaluate_predictions(
    preds: pd.DataFrame,
    *,
    name: str,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> TestSetReport:
    """Score one test set's predictions table (see module docstring) -> :class:`TestSetReport`.

    The label space is the table's (:func:`prediction_classes`): the paper's 9 categories, or a
    run's corpus vocabulary. ``classes`` are the scored classes; ``None`` = the paper's 6 in the
    paper's space, every class of a corpus vocabulary. Other options: :func:`_evaluate_in_space`.
    """
    _check_table(preds, name=name)
    with metrics.label_space(prediction_classes(preds)):
        scored = metrics.default_scored_classes() if classes is None else classes
        return _evaluate_in_space(preds, name=name, classes=scored, **options)


def _evaluate_in_space(
    preds: pd.DataFrame,
    *,
    name: str,
    classes: Sequence[str],
    ks: Sequence[int] = (1, 2, 3),
    bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 15,
    scatter_max: int = 2000,
) -> TestSetReport:
    """Score one test set's predictions table (see module docstring) -> :class:`TestSetReport`.

    ``classes`` are the scored categories (default: the paper's 6); k-best ranks only their
    scores (SPEC.md 7.4) and averages run over those present in the references, so a
    cross-corpus set is scored on its own classes. ``bootstrap`` resamples speakers that
    many times for the CCC and UAR intervals (0 = no intervals). ``scatter_max`` caps the
    (ref, pred) pairs kept per dimension for plotting (random, seeded).
    """
    _check_table(preds, name=name)
    cls = metrics.class_indices(classes)
    classes = tuple(classes)
    ks = _checked_ks(ks, n_classes=len(classes))
    space = metrics.space_classes()
    probs = metrics.check_probs(preds.loc[:, [f"pred_{c}" for c in space]].to_numpy(dtype=np.float64),
                                name=f"{name}: pred_<category> columns")
    ref_idx = metrics.encode_labels(preds["label"].tolist())
    speakers, genders = _speakers_and_genders(preds)
    speaker_gender = _speaker_genders(speakers, genders)
    scored = np.isin(ref_idx, cls)
    support = {c: int(np.sum(ref_idx == i)) for c, i in zip(classes, cls)}
    present = tuple(c for c in classes if support[c] > 0)
    ccc_values, scatter, n_dim, dim_notes = _score_dimensions(
        preds, speakers, bootstrap=bootstrap, seed=seed, alpha=alpha, scatter_max=scatter_max)
    soft, soft_notes = _score_soft_labels(preds, probs, space=space)
    cat = _score_categories(
        probs, ref_idx, speakers, speaker_gender, scored=scored, classes=classes, support=support, ks=ks,
        bootstrap=bootstrap, seed=seed, alpha=alpha, n_bins=n_bins)
    counts = _table_counts(preds, speakers, speaker_gender, ref_idx, scored=scored, support=support,
                           n_dim=n_dim, soft=soft)
    return TestSetReport(
        name=str(name), classes=classes, classes_present=present, ks=ks, counts=counts,
        ccc=ccc_values, uar=cat.uar, uar_rank_all=cat.uar_rank_all, uar_reported=cat.uar_reported,
        per_class_recall=cat.recall, weighted_accuracy=cat.wa, macro_f1=cat.f1, confusion=cat.confusion,
        soft=soft, calibration=cat.calibration, per_speaker_uar=cat.per_speaker, pa_uar=cat.pa,
        pa_uar_by_gender=cat.by_gender, scatter=scatter,
        bootstrap={"n": int(bootstrap), "seed": int(seed), "alpha": float(alpha), "unit": "speaker"},
        notes=tuple(dim_notes + soft_notes + cat.notes),
    )


def _checked_ks(ks: Sequence[int], *, n_classes: int) -> tuple[int, ...]:
    """The k values of the k-best ranking as ints; raises if any is outside 1..n_classes."""
    ks = tuple(int(k) for k in ks)
    bad_k = [k for k in ks if not 1 <= k <= n_classes]
    if not ks or bad_k:
        raise EvaluationError(f"ks={ks} invalid; expected values in 1..{n_classes} (number of classes).")
    return ks


def _speakers_and_genders(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-row speaker ids ("" = unknown) and lower-case genders ("unknown" when missing)."""
    speakers = np.asarray([str(s).strip() if metrics.is_known_speaker(s) else "" for s in preds["speaker"]],
                          dtype=object)
    genders = (preds["gender"].fillna("unknown").astype(str).str.strip().str.lower().replace("", "unknown")
               .to_numpy(dtype=object) if "gender" in preds.columns else np.full(len(preds), "unknown", dtype=object))
    return speakers, genders


def _score_dimensions(
    preds: pd.DataFrame, speakers: np.ndarray, *, bootstrap: int, seed: int, alpha: float, scatter_max: int
) -> tuple[dict[str, dict[str, Any] | None], dict[str, dict[str, list[float]]], dict[str, int], list[str]]:
    """CCC per dimension (with interval), sampled scatter pairs, reference counts and notes."""
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    ccc_values: dict[str, dict[str, Any] | None] = {}
    scatter: dict[str, dict[str, list[float]]] = {}
    n_dim: dict[str, int] = {}
    for dim, pred_col in zip(DIMENSIONS, PRED_DIM_COLUMNS):
        if dim not in preds.columns or pred_col not in preds.columns:
            ccc_values[dim] = None
            n_dim[dim] = 0
            notes.append(f"CCC {dim}: not reported, the table has no {dim!r}/{pred_col!r} column.")
            continue
        ref_v = preds[dim].to_numpy(dtype=np.float64)
        pred_v = preds[pred_col].to_numpy(dtype=np.float64)
        keep = ~np.isnan(ref_v)
        n_dim[dim] = int(keep.sum())
        if n_dim[dim] < 2:
            ccc_values[dim] = None
            notes.append(f"CCC {dim}: not reported, only {n_dim[dim]} reference value(s) (all NaN in this corpus?).")
            continue
        rv, pv = ref_v[keep], pred_v[keep]
        value = metrics.ccc(pv, rv)
        ccc_values[dim] = _with_ci(value, lambda idx, pv=pv, rv=rv: metrics.ccc(pv[idx], rv[idx]),
                                   speakers[keep], bootstrap=bootstrap, seed=seed, alpha=alpha)
        if ccc_values[dim]["value"] is None:
            notes.append(f"CCC {dim}: undefined (constant predictions equal to constant references).")
        take = np.sort(rng.choice(rv.size, size=min(scatter_max, rv.size), replace=False))
        scatter[dim] = {"ref": rv[take].tolist(), "pred": pv[take].tolist()}
    return ccc_values, scatter, n_dim, notes


def _score_soft_labels(
    preds: pd.DataFrame, probs: np.ndarray, *, space: Sequence[str]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Soft-label agreement, KL and cross-entropy against the grader votes (None if none), and notes."""
    ref_prob_columns = [f"p_{c}" for c in space]
    if not all(c in preds.columns for c in ref_prob_columns):
        return None, ["Soft-label metrics: not reported, the table has no p_<category> columns."]
    p_ref = preds.loc[:, ref_prob_columns].to_numpy(dtype=np.float64)
    n_soft = int((~np.isnan(p_ref).any(axis=1)).sum())
    if not n_soft:
        return None, ["Soft-label metrics: not reported, every p_<category> row is NaN (no grader votes)."]
    return {"n": n_soft,
            "agreement": metrics.soft_agreement(p_ref, probs),
            "kl_divergence": metrics.kl_divergence(p_ref, probs),
            "cross_entropy": metrics.cross_entropy(p_ref, probs)}, []


@dataclasses.dataclass(frozen=True)
class _CategoryScores:
    """The categorical part of a :class:`TestSetReport` (empty when no reference is scored)."""

    uar: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    uar_rank_all: dict[str, float] = dataclasses.field(default_factory=dict)
    uar_reported: dict[str, float] = dataclasses.field(default_factory=dict)
    recall: dict[str, float | None] = dataclasses.field(default_factory=dict)
    per_speaker: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    pa: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    by_gender: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    wa: float | None = None
    f1: float | None = None
    confusion: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def _score_categories(
    probs: np.ndarray,
    ref_idx: np.ndarray,
    speakers: np.ndarray,
    speaker_gender: Mapping[str, str],
    *,
    scored: np.ndarray,
    classes: tuple[str, ...],
    support: Mapping[str, int],
    ks: tuple[int, ...],
    bootstrap: int,
    seed: int,
    alpha: float,
    n_bins: int,
) -> _CategoryScores:
    """Every categorical metric (k-best UAR, paUAR, top-1 scores, calibration) with its notes."""
    if not scored.any():
        return _CategoryScores(
            notes=[f"Categorical metrics: not reported, no reference label is one of {list(classes)}."])
    present = [c for c in classes if support[c] > 0]
    absent = [c for c in classes if support[c] == 0]
    notes = [
        f"UAR averages recall over the scored classes present in this set's references: {present}"
        + (f"; absent and not counted: {absent}." if absent else ".")
    ]
    uar, uar_rank_all, per_speaker, pa, by_gender = _score_k_best(
        probs, ref_idx, speakers, speaker_gender, scored=scored, classes=classes, ks=ks,
        bootstrap=bootstrap, seed=seed, alpha=alpha)
    uar_reported: dict[str, float] = {}
    if metrics.space_classes() == CATEGORIES and tuple(classes) != tuple(REPORTED_CATEGORIES):
        reported_idx = metrics.class_indices(REPORTED_CATEGORIES)
        if np.isin(ref_idx, reported_idx).any():
            uar_reported = {str(k): metrics.uar_at_k(probs, ref_idx, k=k, classes=REPORTED_CATEGORIES,
                                                     rank_over=REPORTED_CATEGORIES) for k in ks}
    top1 = metrics.top1_predictions(probs, rank_over=classes)
    recall = {c: _nan_to_none(v) for c, v in metrics.per_class_recall(ref_idx, top1, classes=classes).items()}
    wa = metrics.weighted_accuracy(ref_idx, top1, classes=classes)
    f1 = metrics.macro_f1(ref_idx, top1, classes=classes)
    confusion = {"classes": list(classes),
                 "matrix": metrics.confusion_matrix(ref_idx, top1, classes=classes).tolist(),
                 "support": [support[c] for c in classes]}
    calibration = metrics.reliability_curve(probs, ref_idx, n_bins=n_bins, classes=classes).to_dict()
    n_spk = len(per_speaker[str(ks[0])])
    notes.append(
        f"paUAR: {n_spk} speakers with a scored reference; strict '>' threshold, no minimum number of "
        "utterances per speaker, a speaker's UAR averages only the classes that speaker has."
    )
    if not pa:
        notes.append("paUAR: not reported, no utterance with a scored reference has a known speaker.")
    return _CategoryScores(
        uar=uar, uar_rank_all=uar_rank_all, uar_reported=uar_reported, per_speaker=per_speaker, pa=pa,
        by_gender=by_gender, recall=recall, wa=wa, f1=f1, confusion=confusion, calibration=calibration,
        notes=notes,
    )


def _score_k_best(
    probs: np.ndarray,
    ref_idx: np.ndarray,
    speakers: np.ndarray,
    speaker_gender: Mapping[str, str],
    *,
    scored: np.ndarray,
    classes: tuple[str, ...],
    ks: tuple[int, ...],
    bootstrap: int,
    seed: int,
    alpha: float,
) -> tuple[dict, dict, dict, dict, dict]:
    """Per k: UAR (with interval), UAR ranked over the whole space, per-speaker UAR, paUAR, by gender."""
    cls = metrics.class_indices(classes)
    space = metrics.space_classes()
    uar: dict[str, dict[str, Any]] = {}
    uar_rank_all: dict[str, float] = {}
    per_speaker: dict[str, dict[str, float]] = {}
    pa: dict[str, dict[str, float]] = {}
    by_gender: dict[str, dict[str, Any]] = {}
    ref_s, groups_s = ref_idx[scored], speakers[scored]
    for k in ks:
        hits_s = metrics.k_best_hits(probs, ref_idx, k=k, rank_over=classes)[scored]
        value = float(np.nanmean(metrics.recall_from_hits(ref_s, hits_s, cls)))
        uar[str(k)] = _with_ci(
            value,
            lambda idx, h=hits_s: float(np.nanmean(metrics.recall_from_hits(ref_s[idx], h[idx], cls))),
            groups_s, bootstrap=bootstrap, seed=seed, alpha=alpha,
        )
        uar_rank_all[str(k)] = metrics.uar_at_k(probs, ref_idx, k=k, classes=classes, rank_over=space)
        spk = metrics.per_speaker_uar(ref_idx, probs, speakers, k=k, classes=classes, rank_over=classes)
        per_speaker[str(k)] = spk
        if spk:
            pa[str(k)] = {str(x): metrics.pa_uar(spk, x=x) for x in PA_UAR_THRESHOLDS}
        for gender in sorted(set(speaker_gender.values()) - {"unknown"}, key=_gender_order):
            subset = {s: v for s, v in spk.items() if speaker_gender.get(s) == gender}
            entry = by_gender.setdefault(gender, {"n_speakers": len(subset), "pa_uar": {}, "uar": {}})
            if subset:
                entry["pa_uar"][str(k)] = {str(x): metrics.pa_uar(subset, x=x) for x in PA_UAR_THRESHOLDS}
            # UAR over this gender's utterances (pooled, not per speaker)
            rows = np.array([speaker_gender.get(s) == gender for s in groups_s], dtype=bool)
            if rows.any():
                entry["uar"][str(k)] = _nan_to_none(
                    float(np.nanmean(metrics.recall_from_hits(ref_s[rows], hits_s[rows], cls))))
    return uar, uar_rank_all, per_speaker, pa, by_gender


def _table_counts(
    preds: pd.DataFrame,
    speakers: np.ndarray,
    speaker_gender: Mapping[str, str],
    ref_idx: np.ndarray,
    *,
    scored: np.ndarray,
    support: dict[str, int],
    n_dim: dict[str, int],
    soft: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``counts`` entry of a report: utterances, speakers, scored rows, support per class."""
    return {
        "utterances": int(len(preds)),
        "utterances_known_speaker": int(np.sum(speakers != "")),
        "speakers": len(speaker_gender),
        "speakers_by_gender": {g: sum(1 for v in speaker_gender.values() if v == g)
                               for g in sorted(set(speaker_gender.values()), key=_gender_order)},
        "scored": int(scored.sum()),
        "no_reference_label": int(np.sum(ref_idx < 0)),
        "reference_outside_classes": int(np.sum((ref_idx >= 0) & ~scored)),
        "class_support": support,
        "dimensions": n_dim,
        "soft": soft["n"] if soft else 0,
    }


def _gender_order(gender: str) -> tuple[int, str]:
    order = {"female": 0, "male": 1, "unknown": 9}
    return (order.get(gender, 5), gender)


# --------------------------------------------------------------------------- summary values


def summary_metrics(test_set: Mapping[str, Any]) -> dict[str, float | None]:
    """Headline numbers of one test set (a :meth:`TestSetReport.to_dict`), in table order.

    Keys: ``CCC Act/Val/Dom``, ``UAR@k``, ``paUAR-75@k``, ``paUAR-50@k``, ``macro-F1``, ``ECE``.
    """
    out: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        entry = (test_set.get("ccc") or {}).get(dim)
        out[f"CCC {_DIM_SHORT[dim]}"] = entry["value"] if entry else None
    for k in test_set.get("ks", []):
        entry = (test_set.get("uar") or {}).get(str(k))
        out[f"UAR@{k}"] = entry["value"] if entry else None
    for x in PA_UAR_THRESHOLDS:
        for k in test_set.get("ks", []):
            out[f"paUAR-{x}@{k}"] = ((test_set.get("pa_uar") or {}).get(str(k)) or {}).get(str(x))
    out["macro-F1"] = test_set.get("macro_f1")
    out["ECE"] = (test_set.get("calibration") or {}).get("ece")
    return out


# --------------------------------------------------------------------------- markdown helpers


def _paper(value: float | None) -> str:
    """Paper style: .73 (two decimals, no leading zero)."""
    if value is None:
        return "–"
    text = f"{value:.2f}"
    return text.replace("0.", ".", 1) if text.startswith("0.") else text.replace("-0.", "-.", 1)


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _pct_plain(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ci(entry: Mapping[str, Any] | None, fmt) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    text = fmt(entry["value"])
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{fmt(entry['low'])}, {fmt(entry['high'])}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


# --------------------------------------------------------------------------- write_report


def write_report(
    reports: Mapping[str, TestSetReport],
    out_dir: str | os.PathLike,
    *,
    title: str,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.json``, ``report.md`` and PNG plots for several test sets into ``out_dir``.

    ``reports`` maps test-set name -> report, in the order the tables should list them.
    Returns ``out_dir``. Plots per set: ``confusion_<set>.png``, ``speaker_uar_<set>.png``,
    ``ccc_scatter_<set>.png``, ``reliability_<set>.png``; across sets: ``conditions.png``.
    """
    if not reports:
        raise EvaluationError("reports is empty; expected {test-set name: TestSetReport} with at least one set.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {name: report.to_dict() for name, report in reports.items()}
    plot_files: dict[str, list[str]] = {}
    for name, report in reports.items():
        slug, files = _slug(name), []
        if report.confusion is not None:
            files.append(plots.plot_confusion_matrix(
                report.confusion["matrix"], classes=report.confusion["classes"],
                path=out / f"confusion_{slug}.png", title=f"{name}: confusion (1-best)").name)
        if any(report.per_speaker_uar.get(str(k)) for k in report.ks):
            files.append(plots.plot_speaker_uar_histogram(
                {k: v for k, v in report.per_speaker_uar.items() if v},
                path=out / f"speaker_uar_{slug}.png", title=name).name)
        if report.scatter:
            files.append(plots.plot_ccc_scatter(
                report.scatter, ccc={d: (e or {}).get("value") for d, e in report.ccc.items()},
                path=out / f"ccc_scatter_{slug}.png", title=f"{name}: predicted vs reference").name)
        if report.calibration is not None:
            cal = report.calibration
            files.append(plots.plot_reliability(
                bin_edges=cal["bin_edges"], confidence=cal["confidence"], accuracy=cal["accuracy"],
                count=cal["count"], ece=cal["ece"], path=out / f"reliability_{slug}.png", title=name).name)
        plot_files[name] = files
    bars = {}
    for name, entry in data.items():
        summary = summary_metrics(entry)
        bars[name] = {key: summary.get(key) for key in ("UAR@1", "CCC Act", "CCC Val", "CCC Dom")}
    conditions = plots.plot_condition_bars(bars, path=out / "conditions.png", title=f"{title}: per test set").name

    document = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "edge_ser_version": __version__,
        "title": title,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_info": _clean_json(dict(run_info or {})),
        "test_sets": data,
        "plots": {"per_set": plot_files, "conditions": conditions},
    }
    write_json_atomic(out / REPORT_JSON, document)
    write_text_atomic(out / REPORT_MD, _markdown(reports, data, title=title, run_info=run_info,
                                                 plot_files=plot_files, conditions=conditions))
    return out


def _markdown(
    reports: Mapping[str, TestSetReport],
    data: Mapping[str, dict[str, Any]],
    *,
    title: str,
    run_info: Mapping[str, Any] | None,
    plot_files: Mapping[str, list[str]],
    conditions: str,
) -> str:
    names = list(reports)
    lines = [f"# {title}", "", f"edge-ser {__version__}, report format {REPORT_FORMAT} v{REPORT_FORMAT_VERSION}.", ""]
    if run_info:
        lines += ["## Run", ""] + _table(["key", "value"], [[k, f"`{v}`"] for k, v in run_info.items()])

    lines += ["## Dimensional CCC (Table 1 layout: Act/Val/Dom)", ""]
    lines += _table(["System"] + names,
                    [[title] + ["/".join(_paper((r.ccc.get(d) or {}).get("value")) for d in DIMENSIONS)
                                for r in reports.values()]])
    any_ci = any(r.bootstrap["n"] > 0 for r in reports.values())
    ci_text = (f"; brackets: {100 * (1 - next(iter(reports.values())).bootstrap['alpha']):.0f}% bootstrap "
               "interval over speakers") if any_ci else ""
    lines += [f"Per set, with counts{ci_text}:", ""]
    lines += _table(["Test set"] + [f"{_DIM_SHORT[d]} (n)" for d in DIMENSIONS],
                    [[n] + [f"{_ci(r.ccc.get(d), _num)} ({r.counts['dimensions'].get(d, 0)})" for d in DIMENSIONS]
                     for n, r in reports.items()])

    ks = sorted({k for r in reports.values() for k in r.ks})
    lines += ["## Categorical UAR (%, k-best)", "",
              "k-best ranks only the scores of the scored classes (SPEC.md 7.4); the 9-way column ranks all 9 "
              "outputs. UAR averages over the scored classes present in each set's references.", ""]
    header = ["Test set", "scored n", "classes present"] + [f"UAR@{k}" for k in ks] + \
             [f"UAR@{k} (9-way rank)" for k in ks] + ["WA", "macro-F1"]
    rows = []
    for n, r in reports.items():
        rows.append([n, r.counts["scored"], ", ".join(r.classes_present) or "–"]
                    + [_ci(r.uar.get(str(k)), _pct) for k in ks]
                    + [_pct(r.uar_rank_all.get(str(k))) for k in ks]
                    + [_pct(r.weighted_accuracy), _pct(r.macro_f1)])
    lines += _table(header, rows)
    if any(r.uar_reported for r in reports.values()):
        lines += ["UAR over the paper's 6 reported classes (present ones), for sets scored on other classes:", ""]
        lines += _table(["Test set"] + [f"UAR@{k}" for k in ks],
                        [[n] + [_pct(r.uar_reported.get(str(k))) for k in ks]
                         for n, r in reports.items() if r.uar_reported])
    all_classes = [c for c in CATEGORIES if any(c in r.classes for r in reports.values())]
    all_classes += sorted({c for r in reports.values() for c in r.classes} - set(all_classes))
    lines += ["Per-class recall (%, 1-best; – = class absent):", ""]
    lines += _table(["Test set"] + all_classes,
                    [[n] + [_pct(r.per_class_recall.get(c)) for c in all_classes] for n, r in reports.items()])

    pa_header = ["Test set", "speakers"] + [f"paUAR-{x} {k}-best" for x in PA_UAR_THRESHOLDS for k in ks]
    lines += ["## Per-speaker paUAR (% of speakers with UAR above X%)", ""]
    lines += _table(pa_header, [[n, len(r.per_speaker_uar.get(str(r.ks[0]), {}))]
                                + [_pct_plain((r.pa_uar.get(str(k)) or {}).get(str(x)))
                                   for x in PA_UAR_THRESHOLDS for k in ks]
                                for n, r in reports.items()])
    lines += ["### By gender (percentages within each gender)", ""]
    gender_rows = []
    for n, r in reports.items():
        for gender, entry in r.pa_uar_by_gender.items():
            gender_rows.append([n, gender, entry["n_speakers"]]
                               + [_pct((entry.get("uar") or {}).get(str(k))) for k in ks]
                               + [_pct_plain((entry["pa_uar"].get(str(k)) or {}).get(str(x)))
                                  for x in PA_UAR_THRESHOLDS for k in ks])
    lines += _table(["Test set", "gender", "speakers"] + [f"UAR@{k}" for k in ks] + pa_header[2:], gender_rows) \
        if gender_rows else \
        ["No speaker has a known gender.", ""]

    lines += ["## Soft labels and calibration", ""]
    lines += _table(["Test set", "n (votes)", "agreement Σmin(p,q)", "KL(p‖q) nats", "cross-entropy nats", "ECE"],
                    [[n, r.counts["soft"], _num((r.soft or {}).get("agreement")),
                      _num((r.soft or {}).get("kl_divergence")), _num((r.soft or {}).get("cross_entropy")),
                      _num((r.calibration or {}).get("ece"))] for n, r in reports.items()])

    lines += ["## Counts and notes", ""]
    for n, r in reports.items():
        c = r.counts
        lines.append(f"- **{n}**: {c['utterances']} utterances, {c['speakers']} speakers "
                     f"({', '.join(f'{g} {v}' for g, v in c['speakers_by_gender'].items()) or 'none'}), "
                     f"{c['scored']} scored, {c['no_reference_label']} without reference label, "
                     f"{c['reference_outside_classes']} with a reference outside the scored classes.")
        lines += [f"  - {note}" for note in r.notes]
    lines += ["", "## Plots", "", f"![per test set]({conditions})", ""]
    for n in names:
        lines += [f"### {n}", ""] + [f"![{f}]({f})" for f in plot_files.get(n, [])] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- compare


def load_report(report_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``report.json`` of a report folder written by :func:`write_report`."""
    path = Path(report_dir) / REPORT_JSON
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist; expected a folder written by write_report "
                              "(run the evaluation for this run first).")
    data = read_json(path)
    if data.get("format") != REPORT_FORMAT or data.get("format_version") != REPORT_FORMAT_VERSION:
        raise EvaluationError(
            f"{path} has format {data.get('format')!r} v{data.get('format_version')!r}; expected "
            f"{REPORT_FORMAT!r} v{REPORT_FORMAT_VERSION}. Re-run the evaluation with this edge-ser version."
        )
    return data


def compare_reports(report_dirs: Mapping[str, str | os.PathLike], out: str | os.PathLike) -> Path:
    """Side-by-side comparison of several report folders -> ``out/comparison.md`` + ``.json``.

    ``report_dirs`` maps a column name (run or artifact) to its report folder. Rows are
    (test set, metric) over the union of test sets; "–" marks a set or metric a run lacks.
    Returns ``out``.
    """
    if not report_dirs:
        raise EvaluationError("report_dirs is empty; expected {run name: report folder} with at least one entry.")
    loaded = {run: load_report(d) for run, d in report_dirs.items()}
    sets: list[str] = []
    for data in loaded.values():
        sets.extend(s for s in data["test_sets"] if s not in sets)
    rows: list[dict[str, Any]] = []
    for test_set in sets:
        per_run = {run: summary_metrics(data["test_sets"][test_set]) if test_set in data["test_sets"] else {}
                   for run, data in loaded.items()}
        metric_names: list[str] = []
        for summary in per_run.values():
            metric_names.extend(m for m in summary if m not in metric_names)
        for metric in metric_names:
            rows.append({"test_set": test_set, "metric": metric,
                         "values": {run: per_run[run].get(metric) for run in loaded}})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / COMPARISON_JSON, {
        "format": "edge-ser-comparison", "format_version": 1, "edge_ser_version": __version__,
        "runs": {run: {"dir": os.fspath(d), "title": loaded[run].get("title")} for run, d in report_dirs.items()},
        "rows": rows,
    })
    runs = list(loaded)

    def fmt(metric: str, value: float | None) -> str:
        if value is None:
            return "–"
        if metric.startswith("paUAR"):
            return _pct_plain(value)
        if metric.startswith("UAR") or metric == "macro-F1":
            return _pct(value)
        return _num(value)

    lines = ["# Comparison", "", "UAR, macro-F1 and paUAR in %; CCC and ECE as fractions.", ""]
    lines += _table(["Test set", "metric"] + runs,
                    [[r["test_set"], r["metric"]] + [fmt(r["metric"], r["values"][run]) for run in runs]
                     for r in rows])
    lines += ["Runs:", ""] + [f"- **{run}**: {loaded[run].get('title')} (`{os.fspath(d)}`)"
                              for run, d in report_dirs.items()] + [""]
    write_text_atomic(out_dir / COMPARISON_MD, "\n".join(lines))
    return out_dir

"""Evaluation: metrics (:mod:`edge_ser.metrics`, shared with training and the runtime), reports (:mod:`.report`) and plots (:mod:`.plots`).

Typical use: build a predictions table per test set, then

>>> # reports = {name: evaluate_predictions(table, name=name) for name, table in tables.items()}
>>> # write_report(reports, "eval/", title="WavLM k*=20")
"""

from edge_ser.metrics import (
    PA_UAR_THRESHOLDS,
    BootstrapCI,
    EvaluationError,
    ReliabilityCurve,
    bootstrap_ci,
    ccc,
    confusion_matrix,
    cross_entropy,
    expected_calibration_error,
    k_best_hits,
    kl_divergence,
    macro_f1,
    pa_uar,
    per_class_recall,
    per_speaker_uar,
    reliability_curve,
    soft_agreement,
    top1_predictions,
    uar,
    uar_at_k,
    weighted_accuracy,
)
from edge_ser.evaluation.report import (
    TestSetReport,
    compare_reports,
    evaluate_predictions,
    load_report,
    summary_metrics,
    write_report,
)

__all__ = [
    "PA_UAR_THRESHOLDS", "BootstrapCI", "EvaluationError", "ReliabilityCurve", "TestSetReport",
    "bootstrap_ci", "ccc", "compare_reports", "confusion_matrix", "cross_entropy",
    "evaluate_predictions", "expected_calibration_error", "k_best_hits", "kl_divergence",
    "load_report", "macro_f1", "pa_uar", "per_class_recall", "per_speaker_uar",
    "reliability_curve", "soft_agreement", "summary_metrics", "top1_predictions", "uar",
    "uar_at_k", "weighted_accuracy", "write_report",
]

"""Parity report arithmetic and the tolerance table (arrays only; artifacts in test_runtime.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_ser.runtime.parity import ParityError, check, compare, output_error, tolerance_for
from edge_ser.runtime.targets import TARGETS


def _outputs(rng, n=40):
    logits = rng.standard_normal((n, 9)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"probs": probs, "avd": rng.uniform(0, 1, (n, 3)), "embedding": rng.standard_normal((n, 256))}


def test_output_error_hand_example():
    ref = np.array([[1.0, -2.0], [0.5, 0.0]])
    cand = np.array([[1.0, -1.9], [0.5, 0.1]])
    err = output_error("x", ref, cand)
    assert err.max_abs == pytest.approx(0.1)
    assert err.max_rel_of_scale == pytest.approx(0.1 / 2.0)
    # MSE = (0.01 + 0.01) / 4 = 0.005; PSNR = 10 log10(2^2 / 0.005) = 29.03 dB
    assert err.psnr_db == pytest.approx(10 * math.log10(4 / 0.005))
    assert output_error("x", ref, ref).psnr_db == math.inf


def test_identical_outputs_pass_fp32():
    rng = np.random.default_rng(0)
    ref = _outputs(rng)
    report = check(compare(ref, {k: v.copy() for k, v in ref.items()}, target="executorch", precision="fp32"))
    assert report.passed and report.task.top1_agreement == 1.0 and report.task.kl_mean == pytest.approx(0, abs=1e-9)


def test_fp32_breach_raises_with_report():
    rng = np.random.default_rng(1)
    ref = _outputs(rng)
    cand = {k: v + 1e-2 for k, v in ref.items()}
    with pytest.raises(ParityError, match="of scale") as info:
        check(compare(ref, cand, target="onnx", precision="fp32"))
    assert not info.value.report.passed and info.value.report.failures


def test_int8_task_level_rules():
    rng = np.random.default_rng(2)
    ref = _outputs(rng, n=100)
    labels = ref["probs"].argmax(1)  # reference is perfect on these labels
    cand = {k: v.copy() for k, v in ref.items()}
    # flip 5 of 100 decisions: top-1 agreement 0.95 < 0.97 must fail
    for i in range(5):
        cand["probs"][i] = np.roll(cand["probs"][i], 1)
    cand["probs"][:5, labels[:5]] = 0.0
    report = compare(ref, cand, target="executorch", precision="int8", label_idx=labels)
    assert report.task.top1_agreement == pytest.approx(0.95)
    assert any("top-1" in f for f in report.failures)
    assert report.task.uar_drop_points > 1.0


def test_ccc_drop_detected():
    rng = np.random.default_rng(3)
    ref = _outputs(rng, n=200)
    dims = ref["avd"] + 0.01 * rng.standard_normal(ref["avd"].shape)
    cand = {k: v.copy() for k, v in ref.items()}
    cand["avd"] = 0.5 + 0.5 * (cand["avd"] - 0.5)  # shrink: CCC drops clearly
    report = compare(ref, cand, target="onnx", precision="int8", dims=dims)
    assert report.task.ccc_max_drop > 0.02 and any("CCC" in f for f in report.failures)


def test_tolerance_table_has_reasons_and_unknown_pair_lists_known():
    for target in TARGETS.values():
        for precision in target.precisions.values():
            tol = tolerance_for(target.name, precision.name)
            assert tol is precision.tolerance and len(tol.reason) > 40, (target.name, precision.name)
    with pytest.raises(ValueError, match="executorch/fp32"):
        tolerance_for("tflite", "int8")


# ---------------------------------------------------------------------------------------
# ΔUAR / ΔCCC gates decided with a paired bootstrap (issue: noise on small sets is not failure)


def _labelled_set(rng, n=80, classes=9):
    labels = rng.integers(0, classes, n)
    logits = rng.standard_normal((n, classes))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, {"probs": probs, "avd": rng.uniform(0, 1, (n, 3)), "embedding": rng.standard_normal((n, 64))}


def test_one_near_tie_flip_on_a_small_set_is_reported_not_refused():
    rng = np.random.default_rng(5)
    labels, ref = _labelled_set(rng)
    p = ref["probs"]
    # The reference's least decisive correct answer in the smallest class: swapping its top two
    # probabilities (a near-tie flip) moves UAR by more than a point on 80 utterances.
    counts = np.bincount(labels, minlength=9)
    smallest = min((c for c in range(9) if counts[c] and np.any((p.argmax(1) == c) & (labels == c))),
                   key=lambda c: counts[c])
    right = np.where((p.argmax(1) == labels) & (labels == smallest))[0]
    top2 = np.sort(p, 1)[:, -2:]
    i = right[np.argmin(top2[right, 1] - top2[right, 0])]
    cand = {k: v.copy() for k, v in ref.items()}
    first, second = np.argsort(-p[i])[:2]
    cand["probs"][i, first], cand["probs"][i, second] = p[i, second], p[i, first]
    report = compare(ref, cand, target="executorch", precision="int8", label_idx=labels)
    assert report.task.uar_drop_points > 1.0  # the old rule refused this artifact
    low, high = report.task.uar_drop_ci
    assert low <= 0 < high
    assert report.passed, report.failures


def test_a_truly_degraded_artifact_is_still_refused_on_a_small_set():
    rng = np.random.default_rng(6)
    labels, ref = _labelled_set(rng)
    cand = {k: v.copy() for k, v in ref.items()}
    idx = rng.choice(len(labels), 25, replace=False)
    cand["probs"][idx] = np.roll(ref["probs"][idx], 1, axis=1)
    report = compare(ref, cand, target="onnx", precision="int8", label_idx=labels)
    assert report.task.uar_drop_ci[0] > 0
    assert any(f.startswith("UAR drop") and "excludes 0" in f for f in report.failures)


def test_ccc_noise_on_a_small_set_is_not_refused():
    rng = np.random.default_rng(7)
    n = 30
    ref = _outputs(rng, n=n)
    dims = ref["avd"] + 0.3 * rng.standard_normal(ref["avd"].shape)
    cand = {k: v.copy() for k, v in ref.items()}
    cand["avd"] = ref["avd"] + 0.02 * rng.standard_normal(ref["avd"].shape)  # int8-like noise, no bias
    report = compare(ref, cand, target="onnx", precision="int8", dims=dims)
    assert not any("CCC" in f for f in report.failures)
    for dim, (low, high) in report.task.ccc_drop_ci.items():
        assert low <= report.task.ccc_reference[dim] - report.task.ccc_candidate[dim] <= high


def test_bootstrap_interval_is_reproducible():
    rng = np.random.default_rng(8)
    labels, ref = _labelled_set(rng)
    cand = {k: v.copy() for k, v in ref.items()}
    cand["probs"][:3] = np.roll(ref["probs"][:3], 2, axis=1)
    first = compare(ref, cand, target="onnx", precision="int8", label_idx=labels).task.uar_drop_ci
    second = compare(ref, cand, target="onnx", precision="int8", label_idx=labels).task.uar_drop_ci
    assert first == second


def test_undefined_ccc_is_reported_as_nan_and_not_gated():
    """Parity scores CCC with edge_ser.metrics: a label column that is constant and equal to both outputs
    has no defined CCC (NaN, not the 0.0 of an earlier copy); that dimension is neither gated nor counted
    in ccc_max_drop, while the other dimensions still are."""
    from edge_ser import metrics

    rng = np.random.default_rng(4)
    ref = _outputs(rng, n=60)
    ref["avd"][:, 0] = 0.5
    dims = ref["avd"] + np.array([0.0, 0.05, 0.05]) * rng.standard_normal(ref["avd"].shape) * np.array([0, 1, 1])
    cand = {k: v.copy() for k, v in ref.items()}
    cand["avd"][:, 1] = 0.5 + 0.2 * (cand["avd"][:, 1] - 0.5)  # valence shrinks: a real drop
    report = compare(ref, cand, target="onnx", precision="int8", dims=dims)
    task = report.task
    assert math.isnan(task.ccc_reference["arousal"]) and math.isnan(task.ccc_candidate["arousal"])
    assert task.ccc_reference["valence"] == pytest.approx(metrics.ccc(ref["avd"][:, 1], dims[:, 1]), rel=1e-9)
    drop = task.ccc_reference["valence"] - task.ccc_candidate["valence"]
    assert task.ccc_max_drop == pytest.approx(max(drop, task.ccc_reference["dominance"]
                                                  - task.ccc_candidate["dominance"]))
    assert not any("arousal" in f for f in report.failures)
    assert any("valence" in f for f in report.failures)

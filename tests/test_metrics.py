"""Every metric against a small example worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_ser import metrics as m
from edge_ser.labels import CATEGORIES, REPORTED_CATEGORIES


def probs_rows(*rows: dict[str, float]) -> np.ndarray:
    """(n, 9) probabilities from {category: p} dicts (missing categories = 0)."""
    out = np.zeros((len(rows), len(CATEGORIES)))
    for i, row in enumerate(rows):
        for name, p in row.items():
            out[i, CATEGORIES.index(name)] = p
    assert np.allclose(out.sum(axis=1), 1.0)
    return out


def confident(pred: list[str]) -> np.ndarray:
    """0.9 on the predicted class, the remaining 0.1 spread over the other 8."""
    out = np.full((len(pred), len(CATEGORIES)), 0.1 / 8)
    for i, name in enumerate(pred):
        out[i, CATEGORIES.index(name)] = 0.9
    return out


# ----------------------------------------------------------------------------- CCC


def test_ccc_hand_example_drops_nan_reference():
    # pred = 1,2,3,4 ; ref = 2,2,4,4 (the 5th pair has ref NaN and is dropped)
    # mean_x = 2.5, mean_y = 3
    # var_x = (2.25 + .25 + .25 + 2.25)/4 = 1.25 ; var_y = (1+1+1+1)/4 = 1
    # cov = (1.5 + .5 + .5 + 1.5)/4 = 1
    # CCC = 2*1 / (1.25 + 1 + (2.5-3)^2) = 2 / 2.5 = 0.8
    assert m.ccc([1, 2, 3, 4, 9], [2, 2, 4, 4, np.nan]) == pytest.approx(0.8, abs=1e-12)


def test_ccc_matches_rho_sigma_form():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=50), rng.normal(loc=0.3, scale=2.0, size=50)
    rho = np.corrcoef(x, y)[0, 1]
    expected = 2 * rho * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert m.ccc(x, y) == pytest.approx(expected, rel=1e-10)


def test_ccc_undefined_cases_are_nan_and_bad_input_raises():
    assert math.isnan(m.ccc([0.1, 0.2], [np.nan, np.nan]))  # all references missing
    assert math.isnan(m.ccc([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))  # 0/0
    with pytest.raises(m.EvaluationError, match="empty"):
        m.ccc([], [])
    with pytest.raises(m.EvaluationError, match="differ in length"):
        m.ccc([1, 2], [1, 2, 3])
    with pytest.raises(m.EvaluationError, match="finite"):
        m.ccc([np.nan, 1.0], [0.2, 0.3])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=20), st.floats(0.1, 3), st.floats(-2, 2))
def test_ccc_properties(values, scale, shift):
    x = np.asarray(values)
    if x.std() < 1e-3:
        return
    assert m.ccc(x, x) == pytest.approx(1.0)
    y = scale * x + shift
    value = m.ccc(x, y)
    assert -1.0 - 1e-9 <= value <= 1.0 + 1e-9
    assert value == pytest.approx(m.ccc(y, x))  # symmetric
    assert value <= m.ccc(x, x) + 1e-12


# ----------------------------------------------------------------------------- hard labels

CLASSES = ("neutral", "happy", "angry")
#          0          1          2          3          4        5        6        7     8
REF = ["neutral", "neutral", "neutral", "neutral", "happy", "happy", "angry", "", "fear"]
PRED = ["neutral", "neutral", "neutral", "happy", "happy", "angry", "sad", "neutral", "fear"]
# scored = utterances 0..6 (7 has no label, 8 is outside CLASSES)


def test_uar_wa_recall_hand_example():
    # recall neutral = 3/4, happy = 1/2, angry = 0/1 ('sad' is outside the classes: a miss)
    assert m.per_class_recall(REF, PRED, classes=CLASSES) == pytest.approx(
        {"neutral": 0.75, "happy": 0.5, "angry": 0.0})
    assert m.uar(REF, PRED, classes=CLASSES) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # WA: 3 + 1 + 0 correct of 7 scored
    assert m.weighted_accuracy(REF, PRED, classes=CLASSES) == pytest.approx(4 / 7)


def test_uar_ignores_classes_absent_from_references():
    # contempt has no reference: averaged over the 3 present classes, recall reported as NaN
    recall = m.per_class_recall(REF, PRED, classes=CLASSES + ("contempt",))
    assert math.isnan(recall["contempt"])
    assert m.uar(REF, PRED, classes=CLASSES + ("contempt",)) == pytest.approx((0.75 + 0.5) / 3)


def test_uar_accepts_indices_like_names():
    ref_idx = [CATEGORIES.index(r) if r else -1 for r in REF]
    pred_idx = [CATEGORIES.index(p) for p in PRED]
    assert m.uar(ref_idx, pred_idx, classes=CLASSES) == pytest.approx(m.uar(REF, PRED, classes=CLASSES))
    assert m.uar(np.asarray(ref_idx), np.asarray(pred_idx), classes=CLASSES) == pytest.approx(1.25 / 3)


def test_macro_f1_hand_example():
    # neutral: TP 3, FP 0, FN 1 -> 6/7 ; happy: TP 1, FP 1 (utt 3), FN 1 -> 2/4
    # angry: TP 0, FP 1 (utt 5), FN 1 -> 0 ; mean = (6/7 + 1/2 + 0) / 3
    assert m.macro_f1(REF, PRED, classes=CLASSES) == pytest.approx((6 / 7 + 0.5) / 3)


def test_confusion_matrix_hand_example():
    # rows = reference, cols = predicted; the 'sad' prediction of the angry utterance has no column
    expected = np.array([[3, 1, 0],
                         [0, 1, 1],
                         [0, 0, 0]])
    np.testing.assert_array_equal(m.confusion_matrix(REF, PRED, classes=CLASSES), expected)


def test_label_errors_are_clear():
    with pytest.raises(m.EvaluationError, match="calm"):
        m.uar(["calm"], ["neutral"], classes=CLASSES)
    with pytest.raises(m.EvaluationError, match="no reference label"):
        m.uar(["fear", ""], ["fear", "sad"], classes=CLASSES)
    with pytest.raises(m.EvaluationError, match="not categories"):
        m.uar(["sad"], ["sad"], classes=("sadness",))
    with pytest.raises(m.EvaluationError, match="empty"):
        m.uar([], [], classes=CLASSES)
    with pytest.raises(m.EvaluationError, match=r"\[-1, 8\]"):
        m.encode_labels(np.array([0, 9]))


# ----------------------------------------------------------------------------- k-best

KPROBS = probs_rows(
    {"neutral": 0.4, "sad": 0.3, "other": 0.2, "happy": 0.1},             # ref sad
    {"other": 0.5, "fear": 0.25, "happy": 0.15, "neutral": 0.1},           # ref happy
    {"angry": 0.6, "neutral": 0.4},                                         # ref angry
    {"neutral": 1.0},                                                       # no reference
)
KREF = ["sad", "happy", "angry", ""]


def test_k_best_hits_hand_example():
    # ranking over the 6 reported classes: u0 neutral>sad, u1 happy>neutral, u2 angry first
    assert m.k_best_hits(KPROBS, KREF, k=1).tolist() == [False, True, True, False]
    assert m.k_best_hits(KPROBS, KREF, k=2).tolist() == [True, True, True, False]
    # ranking over all 9: u1 is other > fear > happy, so happy only enters at k=3
    assert m.k_best_hits(KPROBS, KREF, k=1, rank_over=CATEGORIES).tolist() == [False, False, True, False]
    assert m.k_best_hits(KPROBS, KREF, k=2, rank_over=CATEGORIES).tolist() == [True, False, True, False]
    assert m.k_best_hits(KPROBS, KREF, k=3, rank_over=CATEGORIES).tolist() == [True, True, True, False]


def test_uar_at_k_hand_example():
    # classes present: sad, happy, angry, one utterance each
    assert m.uar_at_k(KPROBS, KREF, k=1) == pytest.approx(2 / 3)  # (0 + 1 + 1) / 3
    assert m.uar_at_k(KPROBS, KREF, k=2) == pytest.approx(1.0)
    assert m.uar_at_k(KPROBS, KREF, k=1, rank_over=CATEGORIES) == pytest.approx(1 / 3)
    assert m.uar_at_k(KPROBS, KREF, k=2, rank_over=CATEGORIES) == pytest.approx(2 / 3)
    assert m.uar_at_k(KPROBS, KREF, k=3, rank_over=CATEGORIES) == pytest.approx(1.0)


def test_k_best_ties_go_to_first_listed_class_and_k_is_checked():
    uniform = np.full((1, 9), 1 / 9)
    assert m.top1_predictions(uniform).tolist() == [CATEGORIES.index(REPORTED_CATEGORIES[0])]
    assert m.k_best_hits(uniform, ["happy"], k=2).tolist() == [True]  # neutral, happy
    assert m.k_best_hits(uniform, ["angry"], k=2).tolist() == [False]
    with pytest.raises(m.EvaluationError, match="k=7"):
        m.k_best_hits(uniform, ["happy"], k=7)
    with pytest.raises(m.EvaluationError, match="shape"):
        m.k_best_hits(np.full((1, 6), 1 / 6), ["happy"], k=1)
    with pytest.raises(m.EvaluationError, match="softmax"):
        m.k_best_hits(np.ones((1, 9)), ["happy"], k=1)


# ----------------------------------------------------------------------------- soft labels


def test_soft_metrics_hand_example():
    p = probs_rows({"neutral": 0.5, "happy": 0.5}, {"neutral": 1.0}, {"neutral": 1.0})
    p[2] = np.nan  # no votes: dropped
    q = probs_rows({"neutral": 0.25, "happy": 0.75}, {"neutral": 0.5, "other": 0.5}, {"sad": 1.0})
    # agreement: row0 min(.5,.25)+min(.5,.75) = .75 ; row1 .5 -> mean .625
    assert m.soft_agreement(p, q) == pytest.approx(0.625)
    # KL: row0 .5 ln(.5/.25) + .5 ln(.5/.75) ; row1 1 ln(1/.5)
    kl0 = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert m.kl_divergence(p, q) == pytest.approx((kl0 + math.log(2)) / 2)
    # CE: row0 -(.5 ln .25 + .5 ln .75) ; row1 -ln .5
    ce0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert m.cross_entropy(p, q) == pytest.approx((ce0 + math.log(2)) / 2)
    # CE = H(p) + KL; row0 H = ln 2, row1 H = 0
    assert m.cross_entropy(p, q) == pytest.approx(m.kl_divergence(p, q) + math.log(2) / 2)
    assert math.isnan(m.soft_agreement(np.full((1, 9), np.nan), q[:1]))


# ----------------------------------------------------------------------------- per speaker


def test_per_speaker_uar_and_pa_uar_hand_example():
    speakers = ["A", "A", "A", "B", "B", "", "C"]
    ref = ["neutral", "neutral", "happy", "sad", "sad", "angry", "fear"]
    pred = ["neutral", "happy", "happy", "sad", "neutral", "angry", "fear"]
    # A: neutral 1/2, happy 1/1 -> .75 ; B: sad 1/2 -> .5 (only its own class counts)
    # '' is an unknown speaker (dropped); C has only 'fear' (not scored) -> no entry
    per = m.per_speaker_uar(ref, confident(pred), speakers, k=1, classes=REPORTED_CATEGORIES)
    assert per == pytest.approx({"A": 0.75, "B": 0.5})
    # strict '>': .75 is not above 75% ; .75 > .5 but .5 is not above 50%
    assert m.pa_uar(per, x=75) == 0.0
    assert m.pa_uar(per, x=50) == 50.0
    assert m.pa_uar(per, x=74) == 50.0
    assert m.pa_uar(per, x=40) == 100.0
    # k=2: the other 8 scores tie at .1/8, so the runner-up is the first listed reported class
    # that is not the prediction. A's miss (pred happy, ref neutral): runner-up neutral -> hit.
    # B's miss (pred neutral, ref sad): runner-up happy -> still a miss.
    per2 = m.per_speaker_uar(ref, confident(pred), speakers, k=2, classes=REPORTED_CATEGORIES)
    assert per2 == pytest.approx({"A": 1.0, "B": 0.5})


def test_pa_uar_errors_and_single_speaker():
    with pytest.raises(m.EvaluationError, match="empty"):
        m.pa_uar({}, x=75)
    with pytest.raises(m.EvaluationError, match="percentage"):
        m.pa_uar({"A": 0.5}, x=0.75 * 1000)
    per = m.per_speaker_uar(["sad"], confident(["sad"]), ["solo"], classes=REPORTED_CATEGORIES)
    assert per == {"solo": 1.0}
    assert m.pa_uar(per, x=75) == 100.0


# ----------------------------------------------------------------------------- calibration


def test_ece_and_reliability_hand_example():
    probs = probs_rows(
        {"neutral": 0.9, "other": 0.1},               # conf .9, correct
        {"happy": 0.7, "neutral": 0.3},               # conf .7, correct
        {"happy": 0.7, "neutral": 0.3},               # conf .7, wrong (ref sad)
        {"angry": 0.5, "sad": 0.25, "neutral": 0.25},  # conf .5, correct
    )
    ref = ["neutral", "happy", "sad", "angry"]
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    # bin (.8,1]: acc 1, conf .9 -> |.1| * 1/4 ; bin (.6,.8]: acc .5, conf .7 -> .2 * 2/4
    # bin (.4,.6]: acc 1, conf .5 -> .5 * 1/4 ; ECE = .025 + .1 + .125 = .25
    curve = m.reliability_curve(probs, ref, n_bins=5)
    assert curve.ece == pytest.approx(0.25)
    assert curve.count == (0, 0, 1, 2, 1)
    assert curve.accuracy[:2] == (None, None)
    assert curve.accuracy[2:] == pytest.approx((1.0, 0.5, 1.0))
    assert curve.confidence[2:] == pytest.approx((0.5, 0.7, 0.9))
    assert m.expected_calibration_error(probs, ref, n_bins=5) == pytest.approx(0.25)
    with pytest.raises(m.EvaluationError, match="n_bins"):
        m.reliability_curve(probs, ref, n_bins=0)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_speakers_not_utterances():
    # speaker A: 1 utterance of value 0 ; speaker B: 99 utterances of value 1.
    # Drawing 2 speakers with replacement: AA (p=1/4) -> mean 0, AB/BA -> .99, BB -> 1.
    # Utterance-level resampling would almost never give 0; speaker-level gives 0 for ~25%,
    # so the 2.5% quantile is exactly 0 and the 97.5% quantile is 1.
    values = np.r_[0.0, np.ones(99)]
    groups = ["A"] + ["B"] * 99
    sizes: set[int] = set()

    def mean(idx: np.ndarray) -> float:
        sizes.add(len(idx))
        return float(values[idx].mean())

    ci = m.bootstrap_ci(mean, groups, n=200, seed=1)
    assert ci.estimate == pytest.approx(0.99)
    assert ci.low == 0.0 and ci.high == 1.0
    assert ci.n_groups == 2 and ci.n_valid == 200
    assert sizes <= {2, 100, 198} and {2, 198} <= sizes  # always whole speakers
    again = m.bootstrap_ci(mean, groups, n=200, seed=1)
    assert again == ci  # seeded


def test_bootstrap_single_group_unknown_speakers_and_invalid_resamples():
    values = np.array([0.2, 0.4, 0.6])
    ci = m.bootstrap_ci(lambda idx: float(values[idx].mean()), ["s", "s", "s"], n=30)
    assert ci.low == ci.high == ci.estimate == pytest.approx(0.4)
    # unknown speakers are resampled individually: 3 groups
    ci = m.bootstrap_ci(lambda idx: float(values[idx].mean()), ["", None, "unknown"], n=30)
    assert ci.n_groups == 3 and ci.low < ci.estimate < ci.high

    def picky(idx: np.ndarray) -> float:
        if 0 not in idx:
            raise m.EvaluationError("utterance 0 missing")
        return 1.0

    ci = m.bootstrap_ci(picky, ["a", "b"], n=100, seed=0)
    assert 0 < ci.n_valid < 100  # resamples without speaker a are invalid, not fatal
    with pytest.raises(m.EvaluationError, match="empty"):
        m.bootstrap_ci(picky, [], n=10)


def test_one_ccc_formula_constant_series_and_doctests():
    """edge_ser.metrics is the one CCC: constant-and-equal is NaN (0/0), one constant side is 0, and the
    vectorised form (parity's bootstrap) gives the scalar form's values."""
    import doctest

    assert math.isnan(m.concordance(0.3, 0.3, 0.0, 0.0, 0.0))
    assert m.ccc([0.5, 0.5, 0.5], [0.1, 0.4, 0.9]) == 0.0  # constant prediction, varying reference
    assert m.ccc([0.2, 0.2], [0.7, 0.7]) == 0.0  # both constant but different: denominator (mx - my)^2 > 0
    x, y = np.array([0.1, 0.4, 0.3, 0.9]), np.array([0.2, 0.5, 0.1, 0.8])
    moments = (np.array([x.mean(), 0.3]), np.array([y.mean(), 0.3]), np.array([x.var(), 0.0]),
               np.array([y.var(), 0.0]), np.array([np.mean((x - x.mean()) * (y - y.mean())), 0.0]))
    vector = m.concordance(*moments)
    assert vector[0] == pytest.approx(m.ccc(x, y), rel=1e-12) and math.isnan(vector[1])
    assert doctest.testmod(m).failed == 0


def test_mean_recall_on_indices_of_any_vocabulary():
    assert m.mean_recall([0, 0, 1, 1, 5], [0, 1, 1, 1, 2]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m.mean_recall([0, 0, 1], [0, 0, 0], classes=[1, 7]) == 0.0  # 7 is absent: not averaged
    assert math.isnan(m.mean_recall([0, 0], [0, 0], classes=[3]))
    with pytest.raises(m.EvaluationError, match="one of each per utterance"):
        m.mean_recall([0, 1], [0])

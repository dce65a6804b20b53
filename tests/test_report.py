"""evaluate_predictions / write_report / compare_reports on synthetic predictions tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_ser import metrics as m
from edge_ser.evaluation.report import (
    TestSetReport,
    compare_reports,
    evaluate_predictions,
    load_report,
    write_report,
)
from edge_ser.labels import CATEGORIES, DIMENSIONS, REPORTED_CATEGORIES

BOOT = 25  # small bootstrap keeps the tests fast; the intervals are still real


def synthetic_predictions(*, seed: int, noise: float, n: int = 60, n_speakers: int = 6,
                          labels: tuple[str, ...] = REPORTED_CATEGORIES) -> pd.DataFrame:
    """Random but structured: predictions lean toward the reference, dims track the reference."""
    rng = np.random.default_rng(seed)
    speakers = np.array([f"spk{i % n_speakers}" for i in range(n)])
    gender = np.where(np.array([int(s[3:]) for s in speakers]) % 2 == 0, "female", "male")
    label_pool = list(labels) + ["", "fear"]
    label = rng.choice(label_pool, size=n)
    votes = rng.integers(0, 3, size=(n, 9)).astype(float)
    for i, lab in enumerate(label):
        if lab:
            votes[i, CATEGORIES.index(lab)] += 4
    votes[votes.sum(axis=1) == 0, 0] = 1
    soft = votes / votes.sum(axis=1, keepdims=True)
    logits = rng.normal(scale=noise, size=(n, 9)) + 2.5 * soft
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dims = rng.uniform(0, 1, size=(n, 3))
    pred_dims = dims + rng.normal(scale=0.1 * noise, size=(n, 3))
    table = {"utt_id": [f"u{i:03d}" for i in range(n)], "speaker": speakers, "gender": gender, "label": label}
    table.update({f"p_{c}": soft[:, j] for j, c in enumerate(CATEGORIES)})
    table.update({d: dims[:, j] for j, d in enumerate(DIMENSIONS)})
    table.update({f"pred_{c}": probs[:, j] for j, c in enumerate(CATEGORIES)})
    table.update({f"pred_{d}": pred_dims[:, j] for j, d in enumerate(DIMENSIONS)})
    return pd.DataFrame(table)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {"clean": synthetic_predictions(seed=0, noise=0.5), "snr5dB": synthetic_predictions(seed=1, noise=1.5)}


@pytest.fixture(scope="module")
def reports(tables) -> dict[str, TestSetReport]:
    return {name: evaluate_predictions(t, name=name, bootstrap=BOOT) for name, t in tables.items()}


@pytest.fixture(scope="module")
def report_dir(reports, tmp_path_factory) -> Path:
    return write_report(reports, tmp_path_factory.mktemp("report"), title="tiny run",
                        run_info={"model": "wavlm-tiny", "layer": 2})


def test_evaluate_matches_the_metric_functions(tables, reports):
    table, report = tables["clean"], reports["clean"]
    probs = table[[f"pred_{c}" for c in CATEGORIES]].to_numpy()
    labels = table["label"].tolist()
    for k in (1, 2, 3):
        expected = m.uar_at_k(probs, labels, k=k, classes=REPORTED_CATEGORIES, rank_over=REPORTED_CATEGORIES)
        entry = report.uar[str(k)]
        assert entry["value"] == pytest.approx(expected)
        assert entry["low"] <= entry["value"] <= entry["high"]
        assert report.uar_rank_all[str(k)] == pytest.approx(
            m.uar_at_k(probs, labels, k=k, classes=REPORTED_CATEGORIES, rank_over=CATEGORIES))
        per = m.per_speaker_uar(labels, probs, table["speaker"], k=k, classes=REPORTED_CATEGORIES,
                                rank_over=REPORTED_CATEGORIES)
        assert report.per_speaker_uar[str(k)] == pytest.approx(per)
        assert report.pa_uar[str(k)] == {"75": m.pa_uar(per, x=75), "50": m.pa_uar(per, x=50)}
    # the noisy set really is worse at 1-best on this synthetic data
    assert reports["snr5dB"].uar["1"]["value"] < report.uar["1"]["value"]
    for dim in DIMENSIONS:
        assert report.ccc[dim]["value"] == pytest.approx(m.ccc(table[f"pred_{dim}"], table[dim]))
        assert report.ccc[dim]["low"] <= report.ccc[dim]["value"] <= report.ccc[dim]["high"]
    scored = table["label"].isin(REPORTED_CATEGORIES)
    assert report.counts["utterances"] == 60 and report.counts["speakers"] == 6
    assert report.counts["speakers_by_gender"] == {"female": 3, "male": 3}
    assert report.counts["scored"] == int(scored.sum())
    assert sum(map(sum, report.confusion["matrix"])) == int(scored.sum())
    assert report.soft["agreement"] == pytest.approx(
        m.soft_agreement(table[[f"p_{c}" for c in CATEGORIES]].to_numpy(), probs))
    assert 0 <= report.calibration["ece"] <= 1


def test_gender_pa_uar_is_within_gender(tables, reports):
    report = reports["clean"]
    per = report.per_speaker_uar["1"]
    for gender, speakers in (("female", {"spk0", "spk2", "spk4"}), ("male", {"spk1", "spk3", "spk5"})):
        subset = {s: v for s, v in per.items() if s in speakers}
        entry = report.pa_uar_by_gender[gender]
        assert entry["n_speakers"] == 3
        # percent of that gender's 3 speakers, e.g. 2 of 3 above 50% -> 66.7
        assert entry["pa_uar"]["1"]["50"] == pytest.approx(100 * sum(v > 0.5 for v in subset.values()) / 3)
        # pooled UAR over that gender's utterances, recomputed directly from the table
        table = tables["clean"]
        rows = table[table["speaker"].isin(speakers) & table["label"].isin(list(REPORTED_CATEGORIES))]
        probs = rows[[f"pred_{c}" for c in CATEGORIES]].to_numpy()
        expected = m.uar_at_k(probs, rows["label"].tolist(), k=1, classes=REPORTED_CATEGORIES)
        assert entry["uar"]["1"] == pytest.approx(expected)


def test_write_report_files(report_dir):
    data = json.loads((report_dir / "report.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"report.json contains {c}"))
    assert data["format"] == "edge-ser-report" and set(data["test_sets"]) == {"clean", "snr5dB"}
    assert data["run_info"] == {"model": "wavlm-tiny", "layer": 2}
    clean = data["test_sets"]["clean"]
    assert clean["counts"]["utterances"] == 60 and clean["uar"]["2"]["n_valid_resamples"] > 0
    assert TestSetReport.from_dict(clean).to_dict() == clean
    md = (report_dir / "report.md").read_text()
    for text in ("# tiny run", "Table 1", "UAR@3", "paUAR-75 1-best", "paUAR-50 3-best", "By gender",
                 "| clean |", "| snr5dB |", "female", "ECE"):
        assert text in md, text
    expected = {f"{kind}_{name}.png" for kind in ("confusion", "speaker_uar", "ccc_scatter", "reliability")
                for name in ("clean", "snr5dB")} | {"conditions.png"}
    pngs = {p.name for p in report_dir.glob("*.png")}
    assert pngs == expected
    for name in pngs:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert not list(report_dir.glob(".*"))  # no temp files left behind


def test_absent_class_all_nan_dims_and_single_speaker(tmp_path):
    # RAVDESS-like: no contempt, no dimensions, one speaker
    table = synthetic_predictions(seed=2, noise=0.5, n=24, n_speakers=1,
                                  labels=("neutral", "happy", "sad", "angry", "surprise"))
    for dim in DIMENSIONS:
        table[dim] = np.nan
    report = evaluate_predictions(table, name="ravdess", bootstrap=BOOT)
    assert "contempt" not in report.classes_present and report.per_class_recall["contempt"] is None
    assert any("absent and not counted: ['contempt']" in n for n in report.notes)
    assert all(report.ccc[d] is None for d in DIMENSIONS)
    assert any("CCC arousal: not reported" in n for n in report.notes)
    assert report.counts["speakers"] == 1 and len(report.per_speaker_uar["1"]) == 1
    assert report.pa_uar["1"]["75"] in (0.0, 100.0)
    entry = report.uar["1"]
    assert entry["low"] == entry["high"] == pytest.approx(entry["value"])  # one speaker: no spread
    out = write_report({"ravdess": report}, tmp_path / "r", title="one speaker")
    assert not (out / "ccc_scatter_ravdess.png").exists() and (out / "confusion_ravdess.png").exists()
    assert "–/–/–" in (out / "report.md").read_text()


def test_custom_classes_also_report_the_six(tables):
    classes = ("neutral", "happy", "sad", "angry", "surprise", "fear")
    report = evaluate_predictions(tables["clean"], name="c", classes=classes, bootstrap=0)
    assert report.classes == classes and "fear" in report.classes_present
    assert report.uar["1"]["low"] is None
    probs = tables["clean"][[f"pred_{c}" for c in CATEGORIES]].to_numpy()
    assert report.uar["1"]["value"] == pytest.approx(
        m.uar_at_k(probs, tables["clean"]["label"], k=1, classes=classes, rank_over=classes))
    assert report.uar_reported["1"] == pytest.approx(m.uar_at_k(probs, tables["clean"]["label"], k=1))


def test_bad_tables_raise_clear_errors(tables):
    with pytest.raises(m.EvaluationError, match="empty"):
        evaluate_predictions(tables["clean"].iloc[:0], name="x")
    with pytest.raises(m.EvaluationError, match="pred_sad"):
        evaluate_predictions(tables["clean"].drop(columns=["pred_sad"]), name="x")
    bad = tables["clean"].copy()
    bad.loc[0, "pred_happy"] = np.nan
    with pytest.raises(m.EvaluationError, match="NaN"):
        evaluate_predictions(bad, name="x")
    with pytest.raises(m.EvaluationError, match="ks="):
        evaluate_predictions(tables["clean"], name="x", ks=(1, 7))
    with pytest.raises(m.EvaluationError, match="empty"):
        write_report({}, "unused", title="t")


def test_compare_reports(report_dir, reports, tmp_path):
    other = write_report({"clean": reports["clean"]}, tmp_path / "other", title="other run")
    out = compare_reports({"base": report_dir, "other": other}, tmp_path / "cmp")
    data = json.loads((out / "comparison.json").read_text())
    rows = {(r["test_set"], r["metric"]): r["values"] for r in data["rows"]}
    assert rows[("clean", "UAR@1")]["base"] == rows[("clean", "UAR@1")]["other"] == pytest.approx(
        reports["clean"].uar["1"]["value"])
    assert rows[("snr5dB", "CCC Val")]["other"] is None  # the other run lacks that set
    md = (out / "comparison.md").read_text()
    assert "| Test set | metric | base | other |" in md
    assert f"| snr5dB | CCC Val | {reports['snr5dB'].ccc['valence']['value']:.3f} | – |" in md
    with pytest.raises(m.EvaluationError, match="report.json"):
        load_report(tmp_path / "nowhere")

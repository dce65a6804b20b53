"""The demo chain on the tiniest settings: steps run in order, leave records, and resume; an artifact
refused by parity is listed in the model card and the exit status says so."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import edge_ser.demo
from edge_ser.cli import main, root
from edge_ser.cli.demo import EXIT_ARTIFACTS_REFUSED
from edge_ser.demo import STEP_NAMES, DemoConfig, DemoResult, StepRecord, run_demo
from edge_ser.errors import ManifestError


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The tiny chain, run in three calls (to saliency, to train, to evaluate); later tests continue copies."""
    config = DemoConfig(out=tmp_path_factory.mktemp("quick-demo") / "demo", model="tiny-whisper", quick=True)
    first = run_demo(config, until="saliency")
    second = run_demo(config, until="train")
    third = run_demo(config, until="evaluate")
    return config, first, second, third


@pytest.mark.slow
def test_demo_runs_and_resumes_from_records(quick_demo):
    config, first, second, third = quick_demo
    out = config.out
    assert [s.name for s in first.steps] == list(STEP_NAMES[:4])
    assert all(s.status == "done" for s in first.steps)
    for name in STEP_NAMES[:4]:
        record = json.loads((out / "steps" / f"{name}.json").read_text())
        assert record["name"] == name and record["seconds"] >= 0
    saliency = first.steps[3].outputs
    assert 1 <= saliency["chosen_layer"] <= saliency["n_layers"]
    assert (out / "saliency" / "saliency.png").is_file()
    assert (out / "corpus" / "stats.png").is_file()

    # A second call continues: finished steps are kept, the next one runs.
    assert [s.status for s in second.steps] == ["kept"] * 4 + ["done"]
    runs = second.steps[4].outputs["runs"]
    assert {"mfbf0"} <= set(runs) and any(name.startswith("layer") for name in runs)
    for run in runs.values():
        assert (out / "runs" / run["dir"].split("/runs/")[-1] / "run.json").is_file()
    assert [s.status for s in third.steps] == ["kept"] * 5 + ["done"]
    conditions = first.steps[1].outputs["conditions"]
    assert list(conditions) == ["gain-20dB", "gain-10dB", "gain+10dB", "gain+20dB", "telephone"]

    # Augmentation is on by default: one copy of the training rows, whose caches every run trains on
    # (train split only: the held-out rows' copies never reach a run).
    augmented = first.steps[1].outputs["augmented"]
    corpus = json.loads((out / "corpus" / "manifest.json").read_text())
    assert 0 < augmented["utterances"] < corpus["counts"]["utterances"]
    for name, run in runs.items():
        kind = "mfbf0" if name == "mfbf0" else "fm"
        assert len(run["augment"]) == 1 and run["augment"][0].endswith(f"{kind}-windows-augmented")
        run_json = json.loads((out / "runs" / run["dir"].split("/runs/")[-1] / "run.json").read_text())
        assert run_json["features"]["augmented_copies"] == run["augment"]
        # every window of every copied utterance (its original's fold decides whether it trains)
        copied = json.loads((out / "windows" / "corpus-augmented" / "manifest.json").read_text())
        assert copied["windows"]["utterances"] == augmented["utterances"]
        assert run_json["features"]["augmented_utterances"] == copied["counts"]["utterances"]
        # and, by default, on the windows the artifact runs, of the corpus and of the augmented copy
        assert run["windows"] is True and run_json["features"]["windows"] is True
        assert run_json["features"]["feature_dir"].endswith(f"{kind}-windows")


def _refusing_onnx_int8(real_convert_run):
    """convert_run whose onnx/int8 parity gate refuses (every decision flipped); the rest convert for real."""
    from edge_ser.runtime.parity import ParityError, compare

    def convert_run(*, target, precision, **kwargs):
        if (target, precision) == ("onnx", "int8"):
            rng = np.random.default_rng(0)
            probs = rng.dirichlet(np.full(9, 0.3), size=12)
            reference = {"probs": probs, "avd": rng.random((12, 3)), "embedding": rng.standard_normal((12, 16))}
            raise ParityError(compare(reference, {**reference, "probs": probs[:, ::-1].copy()}, target=target,
                                      precision=precision))
        return real_convert_run(target=target, precision=precision, **kwargs)

    return convert_run


@pytest.mark.slow
def test_artifact_refused_at_conversion_is_listed_in_the_card_and_the_exit_status(quick_demo, tmp_path, monkeypatch):
    import edge_ser.converters.pipeline as pipeline

    config = quick_demo[0]
    out = tmp_path / "demo"
    shutil.copytree(config.out, out)  # records point at the fixture's corpus and runs, which stay as they are
    monkeypatch.setattr(pipeline, "convert_run", _refusing_onnx_int8(pipeline.convert_run))

    result = CliRunner().invoke(root, ["demo", "--out", str(out), "--model", "tiny-whisper", "--quick",
                                       "--artifacts", "onnx:fp32,onnx:int8"])

    assert result.exit_code == EXIT_ARTIFACTS_REFUSED, result.output
    convert = json.loads((out / "steps" / "convert.json").read_text())["outputs"]
    assert list(convert["artifacts"]) == ["onnx-fp32"]
    refusal = convert["refused"]["onnx-int8"]
    assert (refusal["target"], refusal["precision"]) == ("onnx", "int8")
    assert refusal["reasons"] and refusal["reasons"][0].startswith("top-1 agreement")
    assert refusal["report"]["task"]["top1_agreement"] < 0.97 and refusal["report"]["failures"] == refusal["reasons"]
    assert not (out / "artifacts" / "onnx-int8").exists()
    # verify and bench ran on the artifact that was written, and skipped the refused one
    assert set(json.loads((out / "verify.json").read_text())) == {"onnx-fp32"}
    assert "onnx-int8" not in json.loads((out / "bench.json").read_text())

    card = (out / "MODEL_CARD.md").read_text()
    # The recipe section reads the main run's run.json: the paper vocabulary in output order, the options.
    assert ("- Label vocabulary: **paper** (the paper's 9 categories, soft grader-vote targets): "
            "neutral, happy, sad, angry, surprise, fear, disgust, contempt, other.") in card
    assert "`--loss ccc12`" in card and "`--no-balance`" in card and "`--ema-decay 0.0`" in card
    assert "- Augmented training copies (train split only): 1 (`edge-ser data augment`" in card
    assert "- Trained on the windows the artifact runs (window corpus `synthetic-windows3s`" in card
    # The headline is the device number: the passing artifact on the test windows, from verify.json.
    onnx_fp32 = json.loads((out / "verify.json").read_text())["onnx-fp32"][0]["task"]
    assert card.index("## Headline: accuracy on the device") < card.index("## Accuracy")
    assert (f"**UAR@1 {100 * onnx_fp32['uar_candidate']:.1f} %** with the `onnx-fp32` artifact as the runtime "
            "runs it") in card
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| onnx-")}
    assert set(rows) == {"onnx-fp32", "onnx-int8"}
    assert f"refused: {refusal['reasons'][0]}" in rows["onnx-int8"]
    assert "| pass |" in rows["onnx-fp32"]
    assert "1 artifact(s) refused by parity" in result.stderr
    assert "onnx-int8 refused at convert: top-1 agreement" in result.stderr
    assert "\r" not in result.output  # no progress-bar redraws when the output is not a terminal
    # The robustness table: every model on clean audio and under gain, telephone band and noise.
    table = card[card.index("## Robustness to input level"):]
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert header.split("|")[2:-1] == [" clean ", " gain-20dB ", " gain-10dB ", " gain+10dB ", " gain+20dB ",
                                       " telephone ", " snr15dB ", " snr5dB "]
    assert sum(line.startswith("| mfbf0 |") for line in table.splitlines()) == 1


def _result_with(tmp_path, refused: dict) -> DemoResult:
    outputs = {"run": "r", "window_s": 3.0, "artifacts": {}, "refused": refused}
    return DemoResult(out=tmp_path, steps=(StepRecord("convert", "done", 1.0, outputs),
                                           StepRecord("card", "done", 0.1, {"model_card": "MODEL_CARD.md"})),
                      wall_time_s=1.1)


REFUSAL = {"onnx-int8": {"target": "onnx", "precision": "int8", "reasons": ["CCC drop 0.164 > 0.02"],
                         "seconds": 1.0, "report": {}}}


@pytest.mark.parametrize(("refused", "status"), [({}, 0), (REFUSAL, EXIT_ARTIFACTS_REFUSED)],
                         ids=["all-passed", "one-refused"])
def test_demo_exit_status_says_whether_parity_refused_an_artifact(tmp_path, monkeypatch, refused, status):
    monkeypatch.setattr(edge_ser.demo, "run_demo", lambda config, fresh: _result_with(tmp_path, refused))
    result = CliRunner().invoke(root, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == status, result.output
    assert "model card:" in result.stdout
    assert ("onnx-int8 refused at convert: CCC drop 0.164 > 0.02" in result.stderr) == bool(refused)

    # the console script (edge_ser.cli:main) passes the status on; other errors still exit 1
    monkeypatch.setattr(sys, "argv", ["edge-ser", "demo", "--out", str(tmp_path)])
    if status:
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == status
    else:
        main()

    def broken(config, fresh):
        raise ManifestError("run folder is incomplete")

    monkeypatch.setattr(edge_ser.demo, "run_demo", broken)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1


def test_demo_help_documents_the_exit_status():
    text = CliRunner().invoke(root, ["demo", "--help"]).output
    assert "Exit status:" in text
    assert f"{EXIT_ARTIFACTS_REFUSED}  the chain finished and MODEL_CARD.md was written, but parity refused" in text


def test_demo_refuses_unknown_stop_step(tmp_path):
    with pytest.raises(ValueError, match="not a demo step"):
        run_demo(DemoConfig(out=tmp_path / "d", model="tiny-whisper", quick=True), until="nope")
    assert not (tmp_path / "d").exists()

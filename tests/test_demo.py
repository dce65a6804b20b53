"""The demo chain on the tiniest settings: steps run in order, leave records, and resume."""

from __future__ import annotations

import json

import pytest

from edge_ser.demo import STEP_NAMES, DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_and_resumes_from_records(tmp_path):
    config = DemoConfig(out=tmp_path / "demo", model="tiny-whisper", quick=True)
    first = run_demo(config, until="saliency")
    assert [s.name for s in first.steps] == list(STEP_NAMES[:4])
    assert all(s.status == "done" for s in first.steps)
    for name in STEP_NAMES[:4]:
        record = json.loads((tmp_path / "demo" / "steps" / f"{name}.json").read_text())
        assert record["name"] == name and record["seconds"] >= 0
    saliency = first.steps[3].outputs
    assert 1 <= saliency["chosen_layer"] <= saliency["n_layers"]
    assert (tmp_path / "demo" / "saliency" / "saliency.png").is_file()
    assert (tmp_path / "demo" / "corpus" / "stats.png").is_file()

    # A second call continues: finished steps are kept, the next one runs.
    second = run_demo(config, until="train")
    assert [s.status for s in second.steps] == ["kept"] * 4 + ["done"]
    runs = second.steps[4].outputs["runs"]
    assert {"mfbf0"} <= set(runs) and any(name.startswith("layer") for name in runs)
    for run in runs.values():
        assert (tmp_path / "demo" / "runs" / run["dir"].split("/runs/")[-1] / "run.json").is_file()


def test_demo_refuses_unknown_stop_step(tmp_path):
    with pytest.raises(ValueError, match="not a demo step"):
        run_demo(DemoConfig(out=tmp_path / "d", model="tiny-whisper", quick=True), until="nope")
    assert not (tmp_path / "d").exists()

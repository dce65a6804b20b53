"""Seed ensembles as one head (`edge-ser ensemble`): the wide block-diagonal TC-GRU equals the
members averaged, the ensemble run folder goes through evaluation, conversion and the runtime, and
ensembles of runs that saw other data are refused.

One tiny pipeline: a 6-speaker synthetic corpus in 3 speaker folds, tiny-whisper (random init)
features of layer 2, 1-epoch fold runs of seeds 0 and 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_ser.cli import root as cli_root
from edge_ser.labels import CATEGORIES
from edge_ser.train.ensemble import EnsembleTCGRU, make_ensemble_run
from edge_ser.train.model import TCGRU
from edge_ser.train.runs import load_run, read_run_info
from edge_ser.train.trainer import TrainConfig, predict, train_folds

LAYER = 2
WINDOW_S = 0.5
TINY = TrainConfig(batch_size=8, lr=3e-3, conv_channels=16, gru_hidden=16, embed_dim=16, max_epochs=1)


def heads(n: int, *, classes: int = 4) -> list[TCGRU]:
    torch.manual_seed(0)
    members = [TCGRU(24, conv_channels=8, gru_hidden=6, gru_layers=2, embed_dim=5, n_classes=classes).eval()
               for _ in range(n)]
    rng = np.random.default_rng(0)
    mean, std = rng.normal(0, 0.1, 24), rng.uniform(0.5, 1.5, 24)
    for member in members:
        member.set_feature_stats(mean, std)
    return members


def members_average(members, x, lengths=None):
    with torch.no_grad():
        outs = [m(x, lengths) for m in members]
    probs = torch.stack([torch.softmax(o.logits, -1) for o in outs]).mean(0)
    avd = torch.stack([o.avd for o in outs]).mean(0)
    return probs, avd, torch.cat([o.embedding for o in outs], dim=1)


@pytest.mark.parametrize("n", [2, 3])
def test_wide_head_equals_the_members_averaged_in_every_form(n):
    from edge_ser.converters.export_forms import export_head

    members = heads(n)
    ensemble = EnsembleTCGRU.from_members(members)
    x, lengths = torch.randn(2, 17, 24), torch.tensor([17, 9])
    want_probs, want_avd, want_embedding = members_average(members, x, lengths)
    with torch.no_grad():
        got = ensemble(x, lengths)
    assert torch.allclose(torch.softmax(got.logits, -1), want_probs, atol=1e-6)
    assert torch.allclose(got.avd, want_avd, atol=1e-6)
    assert torch.allclose(got.embedding, want_embedding, atol=1e-6) and got.embedding.shape == (2, n * 5)
    for form in ("unrolled", "scan"):
        exported = export_head(ensemble, frames=17, gru_form=form).eval()
        with torch.no_grad():
            out = exported(x[:1])
        assert torch.allclose(torch.softmax(out.logits, -1), want_probs[:1], atol=1e-6), form
    # The wide head's zeros are not parameters of the members.
    assert ensemble.count_parameters() == sum(m.count_parameters() for m in members)


def test_heads_of_another_architecture_or_normalisation_are_refused():
    a, b = heads(2)
    other = TCGRU(24, conv_channels=8, gru_hidden=7, gru_layers=2, embed_dim=5, n_classes=4)
    with pytest.raises(ValueError, match="gru_hidden"):
        EnsembleTCGRU.from_members([a, other])
    b.set_feature_stats(np.zeros(24), np.ones(24))
    with pytest.raises(ValueError, match="input normalisation"):
        EnsembleTCGRU.from_members([a, b])
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleTCGRU.from_members([a])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_fold_corpus):
    root = tmp_path_factory.mktemp("ensemble")
    tiny_fold_corpus(root, LAYER)
    train_folds(cache_dir=root / "feats", layer=LAYER, out=root / "folds", seeds=(0, 1), config=TINY, progress=False)
    train_folds(cache_dir=root / "feats", layer=LAYER, out=root / "seed2", seeds=(2,), folds=[0], config=TINY,
                progress=False)
    result = CliRunner().invoke(cli_root, ["ensemble", "--run", str(root / "folds"), "--out", str(root / "ens")])
    assert result.exit_code == 0, result.output
    (root / "ensemble_cli.txt").write_text(result.output)
    return root


def test_k_fold_ensembles_are_run_folders_that_equal_their_members(pipeline):
    from edge_ser.train.dataset import CacheFeatureSource, fold_splits, with_splits

    folds = sorted(p.name for p in (pipeline / "ens").iterdir())
    assert folds == ["fold0_seed0", "fold1_seed0", "fold2_seed0"]
    run_dir = pipeline / "ens" / "fold1_seed0"
    info = read_run_info(run_dir)
    assert info.fold == 1 and info.layer == LAYER and info.feature_model == "tiny-whisper"
    record = json.loads((run_dir / "run.json").read_text())
    members = record["ensemble"]["members"]
    assert [m["seed"] for m in members] == [0, 1]
    assert [Path(m["run"]).name for m in members] == ["fold1_seed0", "fold1_seed1"]
    assert record["test_metrics"] is not None and "computed on" in record["ensemble"]["metrics"]
    ensemble, _ = load_run(run_dir)
    assert isinstance(ensemble, EnsembleTCGRU) and ensemble.n_members == 2
    source = CacheFeatureSource(pipeline / "feats", layer=LAYER)
    source = with_splits(source, fold_splits(np.asarray(source.folds), fold=1), fold=1, k=3)
    rows = np.flatnonzero(np.asarray(source.splits) == "test")
    _, logits = predict(ensemble, source, rows)
    member_probs = [torch.softmax(predict(load_run(pipeline / "folds" / f"fold1_seed{s}")[0], source, rows)[1], -1)
                    for s in (0, 1)]
    assert torch.allclose(torch.softmax(logits, -1), torch.stack(member_probs).mean(0), atol=1e-6)
    # The CLI says, per fold, how many heads and the test UAR of the ensemble and of its members.
    lines = (pipeline / "ensemble_cli.txt").read_text().splitlines()
    assert len(lines) == 3 and all("2 heads" in line and "test UAR" in line and "(members" in line for line in lines)


@pytest.mark.parametrize(("target", "precision"), [("executorch", "int8"), ("onnx", "fp32")])
def test_an_ensemble_converts_and_runs_with_its_labels(pipeline, tmp_path, target, precision):
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.runtime import load

    out = tmp_path / "artifact"
    result = convert_run(run_dir=pipeline / "ens" / "fold0_seed0", target=target, precision=precision, out=out,
                         window_s=WINDOW_S, calibration_utterances=4, validation_utterances=4)
    assert result.manifest["parity"]["passed"], result.manifest["parity"]
    shapes = {o["name"]: o["shape"] for o in result.manifest["outputs"]}
    assert shapes["probs"] == [1, len(CATEGORIES)] and shapes["embedding"] == [1, 2 * TINY.embed_dim]
    model = load(out)
    prediction = model.predict(0.1 * np.random.default_rng(0).standard_normal(int(WINDOW_S * 16000)).astype(np.float32),
                               sample_rate=16000)
    assert list(prediction.probabilities) == list(CATEGORIES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert prediction.embedding.shape == (2 * TINY.embed_dim,)


def test_an_ensemble_is_not_streamed(pipeline, tmp_path):
    from edge_ser.converters.pipeline import convert_run

    with pytest.raises(ValueError, match="ensemble of 2 heads; streaming artifacts are built for one head"):
        convert_run(run_dir=pipeline / "ens" / "fold0_seed0", target="onnx", precision="fp32", out=tmp_path / "s",
                    window_s=WINDOW_S, calibration_utterances=2, validation_utterances=2, hop_s=0.2)


def test_ensembles_of_runs_that_saw_other_data_are_refused(pipeline, tmp_path):
    folds = pipeline / "folds"
    with pytest.raises(ValueError, match="fold"):
        make_ensemble_run([folds / "fold0_seed0", folds / "fold1_seed0"], tmp_path / "a")
    with pytest.raises(ValueError, match="more than once"):
        make_ensemble_run([folds / "fold0_seed0", folds / "fold0_seed0"], tmp_path / "b")
    with pytest.raises(ValueError, match="at least 2"):
        make_ensemble_run([folds / "fold0_seed0"], tmp_path / "c")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="holds \\['x'\\]"):
        make_ensemble_run([folds / "fold0_seed0", folds / "fold0_seed1"], tmp_path / "full")
    # A finished ensemble of the same runs is kept (a rerun); of other runs, refused.
    done = pipeline / "ens" / "fold0_seed0"
    before = (done / "run.json").read_bytes()
    assert make_ensemble_run([folds / "fold0_seed0", folds / "fold0_seed1"], done)["ensemble"]
    assert (done / "run.json").read_bytes() == before
    with pytest.raises(FileExistsError, match="not the ensemble of these runs"):
        make_ensemble_run([folds / "fold0_seed1", folds / "fold0_seed0"], done)
    # Seeds from two k-fold folders join by fold; a fold with one run only is refused by name.
    runner = CliRunner()
    result = runner.invoke(cli_root, ["ensemble", "--run", str(pipeline / "seed2"), "--out", str(tmp_path / "d")])
    assert result.exit_code != 0 and "folds [0] have only one run" in result.output
    result = runner.invoke(cli_root, ["ensemble", "--run", str(folds), "--run", str(folds / "fold0_seed0"),
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "mixes run folders and k-fold folders" in result.output
    # Two k-fold folders of other seeds: fold 0 gets three heads.
    result = runner.invoke(cli_root, ["ensemble", "--run", str(folds), "--run", str(pipeline / "seed2"),
                                      "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    assert "3 heads" in result.output and read_run_info(tmp_path / "f" / "fold0_seed0").fold == 0

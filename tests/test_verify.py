"""`verify_artifact` and `edge-ser verify` on a tiny trained run.

Built once per module: a 3-speaker synthetic corpus, tiny-whisper (random init) features of
block 1, a 1-layer TC-GRU trained 2 epochs, an ONNX fp32 artifact from `convert_run` (0.3 s
window) and an ONNX int8 artifact: the fp32 graph through the project's own dynamic int8
quantizer (`quantize_onnx_dynamic_int8`, what the pipeline's int8 lowering calls) with the
manifest re-recorded. The pipeline's own int8 gate refuses this trained tiny model (embedding
rel error 0.15 > 0.1), which is why the int8 folder is assembled here rather than by `convert_run`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_ser.errors import ManifestError
from edge_ser.runtime import parity
from edge_ser.runtime.targets import TARGETS

WINDOW_S = 0.3
LAYER = 1


def _int8_from_fp32(fp32_dir, out):
    from edge_ser.converters.manifest import file_hashes, write_manifest
    from edge_ser.converters.backend_onnx import quantize_onnx_dynamic_int8

    shutil.copytree(fp32_dir, out)
    quantize_onnx_dynamic_int8(fp32_dir / "model.onnx", out / "model.onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["precision"] = "int8"
    manifest["quantization"] = {"scheme": "onnxruntime-dynamic-int8", "calibration": None}
    manifest["files"] = file_hashes(out)
    manifest["size_bytes"] = manifest["files"]["model.onnx"]["bytes"]
    write_manifest(out, manifest)  # with its manifest_sha256: an edited manifest is refused
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_head_config):
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.data.synthetic import synthesize_corpus
    from edge_ser.features.extract import extract_features
    from edge_ser.train.dataset import CacheFeatureSource
    from edge_ser.train.trainer import train_run

    root = tmp_path_factory.mktemp("verify")
    corpus = synthesize_corpus(out=root / "corpus", n_speakers=3, utterances_per_speaker=4, seed=0)
    extract_features(corpus_dir=corpus.root, model="tiny-whisper", out=root / "feats", layers=[LAYER],
                     random_init=True, show_progress=False)
    config = tiny_head_config
    train_run(source=CacheFeatureSource(root / "feats", layer=LAYER), out=root / "run", config=config,
              progress=False)
    convert_run(run_dir=root / "run", target="onnx", precision="fp32", out=root / "fp32", window_s=WINDOW_S,
                validation_utterances=2)
    _int8_from_fp32(root / "fp32", root / "int8")
    return root


def test_fp32_artifact_passes_against_reference(pipeline):
    from edge_ser.converters.verify import REFERENCE_COMPARISON, verify_artifact
    from edge_ser.data.table import load_corpus

    result = verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                             progress=False)
    n_test = int((load_corpus(pipeline / "corpus").table["split"] == "test").sum())
    assert result.split == "test" and result.n_utterances == n_test == 4
    assert result.n_windows > result.n_utterances  # ~3 s utterances, 0.3 s windows: averaged over several
    (report,) = result.reports
    assert report.comparison == REFERENCE_COMPARISON and report.target == "onnx" and report.precision == "fp32"
    assert report.tolerance == parity.tolerance_for("onnx", "fp32")
    assert result.passed and report.passed, report.to_text()
    assert max(o.max_rel_of_scale for o in report.outputs) <= 1e-4
    assert {o.name for o in report.outputs} == {"probs", "avd", "embedding"}
    assert report.task.top1_agreement == 1.0 and report.task.ccc_reference is not None
    assert report.task.uar_reference == report.task.uar_candidate
    json.dumps(result.to_dict())


def test_int8_with_baseline_separates_quantization_and_conversion_error(pipeline):
    from edge_ser.converters.verify import (
        CONVERSION_COMPARISON, QUANTIZATION_COMPARISON, REFERENCE_COMPARISON, kernel_path_comparison, verify_artifact,
    )

    result = verify_artifact(artifact=pipeline / "int8", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                             baseline=pipeline / "fp32", progress=False)
    verdict, quant, conv, *paths = result.reports
    assert [r.comparison for r in result.reports] == [
        REFERENCE_COMPARISON, QUANTIZATION_COMPARISON, CONVERSION_COMPARISON,
        kernel_path_comparison("int32-exact"), kernel_path_comparison("u8s8-int16-pairs")]
    # The ONNX int8 artifact as every CPU class computes it (7-bit weights: identical sums), and
    # the CPU that verified is on record.
    for path in paths:
        assert path.passed, path.to_text()
        assert next(o for o in path.outputs if o.name == "probs").max_abs == pytest.approx(
            next(o for o in verdict.outputs if o.name == "probs").max_abs, abs=1e-5)
    assert result.cpu["isa_class"] and result.to_dict()["cpu"] == result.cpu
    assert verdict.tolerance == quant.tolerance == parity.tolerance_for("onnx", "int8")
    assert conv.tolerance == parity.tolerance_for("onnx", "fp32") and conv.passed, conv.to_text()
    for name in ("probs", "avd", "embedding"):
        v, q, c = (next(o for o in r.outputs if o.name == name) for r in (verdict, quant, conv))
        assert q.max_abs > 10 * c.max_abs  # int8 rounding dwarfs fp32 reordering
        assert v.max_abs <= q.max_abs + c.max_abs + 1e-6  # triangle inequality: the three are consistent
    assert result.passed == verdict.passed


def test_split_fallback_and_sampling(pipeline):
    from edge_ser.converters.verify import verify_artifact

    result = verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                             split="holdout", max_utterances=2, progress=False)
    assert result.split == "all" and result.n_utterances == 2


def test_refuses_artifact_of_another_run(pipeline, tmp_path):
    from edge_ser.converters.verify import verify_artifact
    from edge_ser.train.runs import load_run, save_weights

    other = tmp_path / "other-run"
    shutil.copytree(pipeline / "run", other)
    model, _ = load_run(other)
    with torch.no_grad():
        model.class_head.bias.add_(0.5)
    save_weights(model, other / "model.safetensors")
    with pytest.raises(ManifestError, match="converted from another run.*Pass the run it was converted from"):
        verify_artifact(artifact=pipeline / "fp32", run_dir=other, corpus_dir=pipeline / "corpus", progress=False)


def test_baseline_must_be_fp32(pipeline):
    from edge_ser.converters.verify import verify_artifact

    with pytest.raises(ValueError, match="precision 'int8'; expected an fp32 artifact"):
        verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                        baseline=pipeline / "int8", progress=False)


def test_cli_exit_code_follows_the_verdict(pipeline, tmp_path, monkeypatch):
    from edge_ser.cli import root

    args = ["verify", "--artifact", str(pipeline / "fp32"), "--run", str(pipeline / "run"),
            "--corpus-dir", str(pipeline / "corpus"), "--max-utterances", "2"]
    out = tmp_path / "verify.json"
    ok = CliRunner().invoke(root, [*args, "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "onnx/fp32: artifact vs PyTorch reference, 2 utterances -> PASS" in ok.output
    assert json.loads(out.read_text())["reports"][0]["passed"] is True
    assert "verifying on CPU:" in ok.output and json.loads(out.read_text())["cpu"]["flags"] is not None

    impossible = dataclasses.replace(parity.tolerance_for("onnx", "fp32"), max_abs_error_of_scale=0.0)
    onnx_fp32 = dataclasses.replace(TARGETS["onnx"].precisions["fp32"], tolerance=impossible)
    monkeypatch.setitem(TARGETS["onnx"].precisions, "fp32", onnx_fp32)
    bad = CliRunner().invoke(root, args)
    assert bad.exit_code == 1, bad.output
    assert "-> FAIL" in bad.output and "of scale > 0" in bad.output


def test_verify_under_a_recording_condition(pipeline):
    """The same artifact checked on louder audio: reference and artifact see the same transformed
    clips; level normalisation in the graph keeps the outputs where they were at 0 dB."""
    from edge_ser.converters.verify import verify_artifact

    clean = verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                            progress=False)
    loud = verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                           progress=False, condition="gain+10dB")
    assert loud.passed and loud.reports[0].comparison.endswith("[gain+10dB]")
    assert loud.reports[0].task.uar_reference == pytest.approx(clean.reports[0].task.uar_reference)
    with pytest.raises(ValueError, match="unknown condition"):
        verify_artifact(artifact=pipeline / "fp32", run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                        progress=False, condition="louder")


@pytest.mark.slow
def test_robustness_sweep_for_onnx_and_executorch_artifacts(pipeline, tmp_path):
    """The standard robustness sweep (clean, gain -20..+20 dB, telephone) for an ONNX and an
    ExecuTorch artifact of the tiny chain, as a table and from the CLI."""
    from edge_ser.cli import root
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.converters.verify import robustness_table, verify_robustness
    from edge_ser.data.conditions import STANDARD_CONDITIONS

    et = tmp_path / "et-int8"
    convert_run(run_dir=pipeline / "run", target="executorch", precision="int8", out=et, window_s=WINDOW_S,
                validation_utterances=2)
    for artifact in (pipeline / "int8", et):
        results = verify_robustness(artifact=artifact, run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                                    max_utterances=4, progress=False)
        assert list(results) == ["clean", *STANDARD_CONDITIONS]
        table = robustness_table(results)
        assert table.count("\n") == len(results) + 1 and "| gain+20dB | 4 |" in table
        # level normalisation in the graph: the reference's answers do not move with the gain
        clean_uar = results["clean"].reports[0].task.uar_reference
        for name in ("gain-20dB", "gain-10dB", "gain+10dB"):
            assert results[name].reports[0].task.uar_reference == pytest.approx(clean_uar), name
    out = tmp_path / "robustness.json"
    cli = CliRunner().invoke(root, ["verify", "--artifact", str(et), "--run", str(pipeline / "run"),
                                    "--corpus-dir", str(pipeline / "corpus"), "--max-utterances", "2", "--robustness",
                                    "--json", str(out)])
    assert cli.exit_code == 0, cli.output
    assert "| condition | n | UAR reference |" in cli.output and "| telephone |" in cli.output
    assert set(json.loads(out.read_text())) == {"clean", *STANDARD_CONDITIONS}


STREAM_HOP_S = 0.1  # 5 Whisper frames; the run's window (0.3 s) is the stream's context


@pytest.fixture(scope="module")
def stream_artifact(pipeline):
    """An ONNX fp32 streaming artifact of the tiny run (tiny-whisper: fm_mode auto = cached)."""
    from edge_ser.converters.pipeline import convert_run

    out = pipeline / "stream-fp32"
    convert_run(run_dir=pipeline / "run", target="onnx", precision="fp32", out=out, window_s=WINDOW_S,
                validation_utterances=2, hop_s=STREAM_HOP_S)
    return out


def test_streaming_artifact_is_verified_as_an_app_streams_it(pipeline, stream_artifact):
    """Each test clip streamed through model.stream() from the initial state: the final estimate per
    utterance (scored against the labels) and every hop compared with the offline computation."""
    from edge_ser.audio import load_audio
    from edge_ser.converters.verify import REFERENCE_COMPARISON, STREAM_HOPS_COMPARISON, verify_artifact
    from edge_ser.data.table import load_corpus

    result = verify_artifact(artifact=stream_artifact, run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                             progress=False)
    corpus = load_corpus(pipeline / "corpus")
    test_rows = corpus.table[corpus.table["split"] == "test"]
    hop = int(round(STREAM_HOP_S * 16000))
    expected_hops = sum(-(-len(load_audio(corpus.audio_path(r.to_dict()))) // hop) for _, r in test_rows.iterrows())
    assert result.hop_s == pytest.approx(STREAM_HOP_S) and result.n_utterances == len(test_rows) == 4
    assert result.n_windows == expected_hops > 4 * 10  # ~3 s clips in 0.1 s hops
    final, every = result.reports
    assert final.comparison == REFERENCE_COMPARISON and final.n_utterances == 4
    assert every.comparison.startswith(STREAM_HOPS_COMPARISON) and every.n_utterances == expected_hops
    assert final.task.uar_reference is not None and final.task.uar_candidate is not None
    assert result.passed, "\n".join(r.to_text() for r in result.reports)
    assert max(o.max_rel_of_scale for r in result.reports for o in r.outputs) <= 1e-4
    assert result.to_dict()["hop_s"] == pytest.approx(STREAM_HOP_S)


def test_streaming_verify_fails_when_the_state_is_not_carried(pipeline, stream_artifact, monkeypatch):
    """The check can fail: a runtime that restarts the state every hop (the estimate then pools one
    hop) breaches parity on the hop-by-hop comparison."""
    from edge_ser.converters.verify import verify_artifact
    from edge_ser.runtime.stream import EmotionStream

    original = EmotionStream._run_hop

    def forgetful(self, hop, *, real_samples):
        self.reset()
        return original(self, hop, real_samples=real_samples)

    monkeypatch.setattr(EmotionStream, "_run_hop", forgetful)
    result = verify_artifact(artifact=stream_artifact, run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                             max_utterances=2, progress=False)
    assert not result.passed
    assert any("of scale >" in f for r in result.reports for f in r.failures)


def test_streaming_verify_refuses_a_baseline_of_another_kind(pipeline, stream_artifact):
    from edge_ser.converters.verify import verify_artifact

    with pytest.raises(ValueError, match=r"baseline .* is windowed, the artifact streaming \(hop 1600 samples"):
        verify_artifact(artifact=stream_artifact, run_dir=pipeline / "run", corpus_dir=pipeline / "corpus",
                        baseline=pipeline / "fp32", progress=False)


def test_cli_verifies_a_streaming_artifact(pipeline, stream_artifact):
    from edge_ser.cli import root

    result = CliRunner().invoke(root, ["verify", "--artifact", str(stream_artifact), "--run", str(pipeline / "run"),
                                       "--corpus-dir", str(pipeline / "corpus"), "--max-utterances", "2"])
    assert result.exit_code == 0, result.output
    assert "streamed from the initial state" in result.output
    assert "onnx/fp32: artifact vs PyTorch reference, 2 utterances -> PASS" in result.output
    assert "streamed artifact vs offline computation, every hop" in result.output

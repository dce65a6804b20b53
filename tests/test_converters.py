"""Converters: fused waveform-in model, the one conversion pipeline, the three backends, the CLI.

Fast tier: a tiny random Whisper (3 blocks, width 64) cut at block 2, a tiny TC-GRU head,
0.5 s windows and generated voiced audio. Every (target, precision) pair converts through
the same ``convert`` call; ExecuTorch and ONNX artifacts are run and compared with the eager
model, Core ML artifacts (no prediction off macOS) are verified structurally.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_ser.converters.backends import TARGETS, get_backend
from edge_ser.converters.fused import (
    FusedSER,
    build_fused_model,
    fit_to_window,
)
from edge_ser.converters.manifest import ARTIFACT_FORMAT, file_hashes
from edge_ser.runtime.artifact import read_manifest
from edge_ser.converters.pipeline import convert, validate
from edge_ser.errors import AudioError, ManifestError
from edge_ser.io import sha256_file
from edge_ser.labels import CATEGORIES, SAMPLE_RATE

WINDOW_S = 0.5
WINDOW = int(WINDOW_S * SAMPLE_RATE)
FM_NAME = "tiny-whisper"
LAYER = 2


def voiced_utterance(seed: int, n_samples: int = WINDOW) -> np.ndarray:
    """Speech-like test audio: a vibrato harmonic tone with a syllable envelope plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 260)
    phase = 2 * np.pi * f0 * (t + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)))
    wave = rng.uniform(0.1, 0.5) * tone * envelope + 0.01 * rng.standard_normal(n_samples)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_fm():
    from edge_ser.fm import load_foundation_model

    return load_foundation_model(FM_NAME, random_init=True, seed=0)


@pytest.fixture(scope="module")
def tiny_head(tiny_fm):
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    head = TCGRU(tiny_fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=256)
    with torch.no_grad():
        # Random heads give near-uniform class probabilities; sharpen them so top-1 means something.
        head.class_head.weight.mul_(20.0)
        head.set_feature_stats(np.zeros(tiny_fm.spec.hidden_size), np.full(tiny_fm.spec.hidden_size, 0.5))
    return head.eval()


@pytest.fixture(scope="module")
def fused(tiny_fm, tiny_head) -> FusedSER:
    return build_fused_model(feature_model=tiny_fm, layer=LAYER, head=tiny_head, window_s=WINDOW_S)


@pytest.fixture(scope="module")
def calibration() -> list[np.ndarray]:
    return [voiced_utterance(seed) for seed in range(8)]


@pytest.fixture(scope="module")
def validation() -> list[np.ndarray]:
    return [voiced_utterance(seed) for seed in range(100, 106)]


# ---------------------------------------------------------------------------------------
# fused model


def test_fused_equals_full_model_hidden_state_path(tiny_fm, tiny_head, fused):
    """Truncated-and-fused == full model's hidden_states[k] fed to the training head (tol 1e-5)."""
    wave = torch.from_numpy(voiced_utterance(7)).reshape(1, -1)
    with torch.no_grad():
        probs, avd, embedding = fused(wave)
        states, _ = tiny_fm.hidden_states(wave)
        reference = tiny_head(states[LAYER])
    assert probs.shape == (1, len(CATEGORIES)) and avd.shape == (1, 3) and embedding.shape == (1, 256)
    torch.testing.assert_close(probs, torch.softmax(reference.logits, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(avd, reference.avd, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedding, reference.embedding, atol=1e-5, rtol=0)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    assert fused.source["feature_model"] == FM_NAME and fused.source["layer"] == LAYER


def test_fused_rejects_wrong_length(fused):
    with pytest.raises(AudioError, match=f"expected \\(1, {WINDOW}\\)"):
        fused(torch.zeros(1, WINDOW + 1))


def test_build_fused_model_rejects_bad_layer(tiny_fm, tiny_head):
    with pytest.raises(ValueError, match="expected 1..3"):
        build_fused_model(feature_model=tiny_fm, layer=7, head=tiny_head, window_s=WINDOW_S)


def test_fit_to_window_centre_crops():
    assert fit_to_window(np.arange(10, dtype=np.float32), 4).tolist() == [3, 4, 5, 6]


# ---------------------------------------------------------------------------------------
# the pipeline, one parametrized test per (target, precision)

PAIRS = [(t, p) for t in sorted(TARGETS) for p in TARGETS[t].precisions]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "precision"), PAIRS, ids=[f"{t}-{p}" for t, p in PAIRS])
def test_convert_every_target_and_precision(fused, calibration, validation, tmp_path, target, precision):
    out = tmp_path / "artifact"
    source = {**fused.source, "run": "unit-test", "calibration": {"split": "train", "corpus": "generated"}}
    result = convert(fused=fused, target=target, precision=precision, out=out, calibration_waveforms=calibration,
                     validation_waveforms=validation, source_info=source)
    backend = get_backend(target)

    # Manifest: the documented contract, and every file's sha256/size as on disk.
    manifest = read_manifest(out).raw
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == ARTIFACT_FORMAT and manifest["target"] == target
    assert manifest["precision"] == precision and manifest["window_samples"] == WINDOW
    assert manifest["labels"] == list(CATEGORIES) and manifest["dimensions"] == ["arousal", "valence", "dominance"]
    assert manifest["inputs"] == [{"name": "waveform", "shape": [1, WINDOW], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in manifest["outputs"]] == [
        ("probs", [1, 9]), ("avd", [1, 3]), ("embedding", [1, 256])]
    assert manifest["source"]["feature_model"] == FM_NAME and manifest["source"]["layer"] == LAYER
    assert manifest["source"]["n_layers_full"] == 3
    for rel, info in manifest["files"].items():
        assert sha256_file(out / rel) == info["sha256"] and (out / rel).stat().st_size == info["bytes"]
    assert set(manifest["files"]) == set(file_hashes(out))
    assert any(rel.startswith(backend.artifact_file) for rel in manifest["files"])
    assert "parity.json" in manifest["files"]
    assert manifest["size_bytes"] == result.size_bytes > 0
    assert not any(p.name.startswith(".artifact.") for p in tmp_path.iterdir()), "temp folder left behind"
    spec = backend.precision(precision)
    if spec.calibrated:
        assert manifest["quantization"]["calibration"]["utterances"] == len(calibration)
    assert (manifest["quantization"] is None) == (precision == "fp32")

    parity = result.parity
    if target == "executorch":
        d = manifest["delegation"]
        assert d["delegated_subgraphs"] >= 1 and d["delegated_nodes"] > d["portable_nodes"]
        # The GRU (one layer in this head) runs as one scan loop whose step is inside XNNPACK
        # (a 1x1 conv = the hidden projection, its weight a constant of the delegate), not as
        # per-frame portable kernels; int8 makes that step a dynamically quantized conv.
        assert d["portable_ops"].get("scan") == 1, d
        assert manifest["backend"]["lowering"]["loop_constants_in_delegate"] is True
        assert not any(op.startswith(("aten_sigmoid", "aten_tanh", "aten_conv", "quantized_decomposed"))
                       for op in d["portable_ops"]), d
        if precision == "int8":
            assert d["delegated_ops"].get("quantized_decomposed_choose_qparams_tensor", 0) >= 1, d
        assert_window_graph_has_no_portable_front_ops(manifest)
    assert manifest["backend"]["graph_forms"] == {"gru": backend.gru_form, "whisper_front": backend.whisper_front_form}
    if target == "onnx" and precision == "int8":
        import onnx

        # The feed-forward down-projections (MatMuls fed by a GELU) stay float32; the rest is int8.
        graph = onnx.load(str(out / backend.artifact_file)).graph
        kept = manifest["backend"]["lowering"]["float_matmuls"]
        by_name = {n.name: n.op_type for n in graph.node}
        assert kept and all(by_name.get(name) == "MatMul" for name in kept), kept
        assert sum(op == "MatMulInteger" for op in by_name.values()) >= 3
        # 7-bit weights: no uint8 x int8 pair can leave int16, so every CPU computes the same sums;
        # parity was checked under both int8 accumulation paths (emulated), not only this CPU's.
        lowering = manifest["backend"]["lowering"]
        assert lowering["weight_bits"] == 7 and not lowering["int16_pair_headroom"]["saturation_possible"]
        paths = result.parity["kernel_paths"]
        assert paths["this_cpu"] in ("int32-exact", "u8s8-int16-pairs")
        assert paths["int32-exact"]["passed"] and paths["u8s8-int16-pairs"]["passed"], paths
        assert manifest["parity"]["kernel_paths"]["u8s8-int16-pairs"]["passed"]
    # The CPU that converted and validated is on record (int8 kernels differ between CPUs).
    assert manifest["converted_on"]["isa_class"] and "flags" in manifest["converted_on"]
    assert json.loads((out / "parity.json").read_text())["cpu"] == manifest["converted_on"]
    if target == "coreml" and sys.platform != "darwin":
        assert parity["ran"] is False
        verification = json.loads((out / "parity.json").read_text())["verification"]
        _check_coreml_verification(verification, precision)
        return
    assert parity["ran"] and parity["passed"], parity.get("failures")
    outputs = {o["name"]: o for o in parity["outputs"]}
    rel = {k: o["max_rel_of_scale"] for k, o in outputs.items()}
    if precision == "fp32":
        # Same float32 math, reordered: the bound, 1e-4 x output scale, and identical top-1.
        assert max(rel.values()) <= 1e-4 and parity["task"]["top1_agreement"] == 1.0
    else:
        # int8 on this model measures rel <= 0.028 (embedding) and cosine >= 0.9998 for both backends;
        # about 2x / 2.5x margin for other seeds, still far inside the shipping table's limits.
        assert max(rel.values()) <= 0.05, rel
        assert outputs["embedding"]["cosine"] >= 0.9995
        assert parity["task"]["top1_agreement_decisive"] == 1.0
    # Input level normalisation is in the graph: +/-20 dB on the input leaves every output where it
    # was (float rounding for fp32; int8 activations are quantized after the normalisation, so
    # the same codes come out up to rounding at bin edges).
    runner = backend.runner(out)
    wave = validation[0].reshape(1, -1)
    base = runner(wave)
    for gain_db in (-20.0, 20.0):
        scaled = runner((wave * 10 ** (gain_db / 20)).astype(np.float32))
        for name in ("probs", "avd", "embedding"):
            scale = max(float(np.abs(base[name]).max()), 1.0 if name != "embedding" else 0.0)
            bound = 1e-4 if precision == "fp32" else 0.02
            assert np.abs(scaled[name] - base[name]).max() <= bound * scale, (name, gain_db)
    # The runner the pipeline validated with reproduces the saved artifact independently.
    runner = backend.runner(out)
    again = validate(runner, fused, [torch.from_numpy(v).reshape(1, -1) for v in validation[:2]],
                     target=target, precision=precision)
    probs_again = next(o for o in again.outputs if o.name == "probs")
    assert probs_again.max_abs <= outputs["probs"]["max_abs"] + 1e-7


def _check_coreml_verification(verification, precision):
    assert verification["passed"], verification
    io = verification["io"]
    assert io["inputs"] == [{"name": "waveform", "shape": [1, WINDOW]}]
    assert [o["name"] for o in io["outputs"]] == ["probs", "avd", "embedding"]
    weights = verification["weights"]
    assert len(weights) >= 10 and all(w["within_bound"] for w in weights)
    kinds = {w["stored_as"] for w in weights}
    big = [w for w in weights if w["numel"] >= 2048]
    if precision == "fp32":
        assert kinds == {"fp32"} and all(w["max_abs_err"] == 0.0 for w in weights)
    elif precision == "fp16":
        assert kinds == {"fp16"} and 0 < max(w["rel_err"] for w in weights) <= 2.0**-11
    elif precision == "int8":
        assert {w["stored_as"] for w in big} == {"int8"}
        assert all(w["levels"] <= 255 for w in big) and all(w["rel_err"] <= 0.01 for w in big)
    elif precision == "palette4":
        assert {w["stored_as"] for w in big} == {"palette4"}
        assert all(w["levels"] <= 16 for w in big) and all(0.01 < w["rel_err"] <= 0.15 for w in big)


def test_existing_output_refused_then_overwritten(fused, calibration, validation, tmp_path):
    out = tmp_path / "artifact"
    kwargs = dict(fused=fused, target="onnx", precision="fp32", out=out, calibration_waveforms=calibration,
                  validation_waveforms=validation[:2], source_info=fused.source)
    convert(**kwargs)
    first = read_manifest(out).raw
    (out / "stale.txt").write_text("left from an older conversion")
    with pytest.raises(ManifestError, match="unlisted \\['stale.txt'\\]"):
        read_manifest(out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert(**kwargs)
    assert (out / "stale.txt").exists()
    convert(**kwargs, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert read_manifest(out).files["model.onnx"] == first["files"]["model.onnx"]
    (out / "model.onnx").write_bytes(b"corrupted")
    with pytest.raises(ManifestError, match="model.onnx has sha256"):
        read_manifest(out)


def test_unknown_target_and_precision_list_known_ones(fused, calibration, validation, tmp_path):
    common = dict(fused=fused, out=tmp_path / "a", calibration_waveforms=calibration,
                  validation_waveforms=validation, source_info={})
    with pytest.raises(ValueError, match=r"unknown target 'tflite'; known targets: \['coreml', 'executorch', 'onnx'\]"):
        convert(target="tflite", precision="fp32", **common)
    with pytest.raises(ValueError, match=r"known precisions for onnx: \['fp32', 'int8'\]"):
        convert(target="onnx", precision="palette4", **common)
    assert not (tmp_path / "a").exists()


def test_calibration_needs_real_windows(fused, validation, tmp_path):
    with pytest.raises(ValueError, match="at least 2 real utterances"):
        convert(fused=fused, target="executorch", precision="int8", out=tmp_path / "a",
                calibration_waveforms=[], validation_waveforms=validation, source_info={})
    with pytest.raises(AudioError, match=f"expected exactly {WINDOW}"):
        convert(fused=fused, target="executorch", precision="int8", out=tmp_path / "b",
                calibration_waveforms=[np.zeros(WINDOW + 5, np.float32)] * 2, validation_waveforms=validation,
                source_info={})


def test_validate_flags_a_wrong_artifact(fused, validation):
    waves = [torch.from_numpy(v).reshape(1, -1) for v in validation[:3]]

    def off_by_a_bit(x):
        with torch.no_grad():
            probs, avd, emb = fused(torch.as_tensor(x))
        return probs.numpy(), avd.numpy() + 0.01, emb.numpy()

    report = validate(off_by_a_bit, fused, waves, target="onnx", precision="fp32")
    assert not report.passed and any(f.startswith("avd") for f in report.failures)
    errors = {o.name: o for o in report.outputs}
    assert errors["avd"].max_abs == pytest.approx(0.01, rel=1e-3)
    assert errors["probs"].max_abs == 0.0


def test_one_target_table_read_by_converters_and_runtime():
    """Each converter backend wraps the runtime's declaration of its target: same file, same
    precisions (each with a tolerance), and the pipeline names no target."""
    from edge_ser.runtime import targets as runtime_targets
    from edge_ser.runtime.parity import tolerance_for

    assert set(TARGETS) == set(runtime_targets.TARGETS)
    for name, backend in TARGETS.items():
        declared = runtime_targets.TARGETS[name]
        assert backend.target is declared and backend.artifact_file == declared.model_file
        assert backend.precisions is declared.precisions
        for precision, spec in declared.precisions.items():
            assert tolerance_for(name, precision) is spec.tolerance
    # The strings artifacts converted earlier carry in their manifests (never renamed).
    assert {n: t.model_file for n, t in runtime_targets.TARGETS.items()} == {
        "executorch": "model.pte", "onnx": "model.onnx", "coreml": "model.mlpackage"}
    source = (Path(__file__).resolve().parents[1] / "converters" / "pipeline.py").read_text(encoding="utf-8")
    assert not [name for name in TARGETS if f'"{name}"' in source or f"'{name}'" in source]


def test_a_declared_target_reaches_the_runtime_readers(monkeypatch, tmp_path):
    """A new target is one declaration: the runner lookup, the parity tolerance and the manifest's
    model file all come from it."""
    from edge_ser.runtime import targets as runtime_targets
    from edge_ser.runtime.artifact import _model_file
    from edge_ser.runtime.parity import tolerance_for
    from edge_ser.runtime.target_spec import PrecisionSpec, TargetSpec
    from edge_ser.runtime.tolerances import FLOAT32_LOWERING

    opened = []
    spec = TargetSpec(name="toy", model_file="model.toy", runner=lambda path, threads=None: opened.append(path),
                      precisions={"fp32": PrecisionSpec("fp32", "none", False, "toy", tolerance=FLOAT32_LOWERING)})
    monkeypatch.setitem(runtime_targets.TARGETS, "toy", spec)
    assert _model_file("toy") == "model.toy"
    assert tolerance_for("toy", "fp32") is FLOAT32_LOWERING
    runtime_targets.get_runner("toy", tmp_path / "model.toy")
    assert opened == [tmp_path / "model.toy"]
    with pytest.raises(ValueError, match="known precisions for toy: \\['fp32'\\]"):
        spec.precision("int8")
    with pytest.raises(ValueError, match="under key"):
        TargetSpec(name="bad", model_file="m", runner=print,
                   precisions={"int8": PrecisionSpec("fp32", "none", False, "", tolerance=FLOAT32_LOWERING)})


def test_cli_choices_come_from_registry():
    from click.testing import CliRunner

    from edge_ser.cli import root

    result = CliRunner().invoke(root, ["convert", "--help"])
    assert result.exit_code == 0
    assert "[coreml|executorch|onnx]" in result.output and "[fp32|fp16|int8|palette4]" in result.output
    bad = CliRunner().invoke(root, ["convert", "--run", ".", "--target", "tflite", "--out", "x"])
    assert bad.exit_code != 0 and "coreml" in bad.output


def test_palette4_bound_follows_a_reference_kmeans():
    from edge_ser.converters.backend_coreml import _compare_weight, kmeans_1d_rel_err

    rng = np.random.default_rng(0)
    # Known 16-level quantization errors: ~0.062 uniform, ~0.102 Gaussian, heavier tails more.
    assert 0.055 < kmeans_1d_rel_err(rng.uniform(-1, 1, 50_000)) < 0.07
    assert 0.09 < kmeans_1d_rel_err(rng.normal(size=50_000)) < 0.11
    heavy = rng.standard_t(3, size=(64, 512))
    assert kmeans_1d_rel_err(heavy) > 0.15
    # A palette as good as k-means passes even above 0.15 on heavy tails ...
    values = np.sort(heavy.ravel())
    centroids = np.quantile(values, (np.arange(16) + 0.5) / 16)
    for _ in range(25):
        edges = (centroids[1:] + centroids[:-1]) / 2
        bins = np.searchsorted(edges, values)
        centroids = np.bincount(bins, weights=values, minlength=16) / np.maximum(np.bincount(bins, minlength=16), 1)
    edges = (centroids[1:] + centroids[:-1]) / 2
    good = centroids[np.searchsorted(edges, heavy.ravel())].reshape(heavy.shape)
    assert _compare_weight("w", good, heavy, stored_as="palette4")["within_bound"]
    # ... a poor one (16 evenly spaced levels over the range) or one with too many levels does not.
    levels = np.linspace(heavy.min(), heavy.max(), 16)
    poor = levels[np.abs(heavy[..., None] - levels).argmin(-1)]
    assert not _compare_weight("w", poor, heavy, stored_as="palette4")["within_bound"]
    assert not _compare_weight("w", np.round(heavy, 1), heavy, stored_as="palette4")["within_bound"]


def test_conv1d_as_conv2d_is_exact_and_leaves_the_source_alone():
    from edge_ser.converters.quantize_xnnpack import Conv1dAs2d, conv1d_as_conv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(6, 8, 3, stride=2, padding=1), torch.nn.GELU(),
                                torch.nn.Conv1d(8, 4, 5, padding=2, dilation=1))
    x = torch.randn(1, 6, 41)
    rewritten, n = conv1d_as_conv2d(model)
    assert n == 2 and all(isinstance(m, Conv1dAs2d) for m in (rewritten[0], rewritten[2]))
    assert isinstance(model[0], torch.nn.Conv1d), "the source model must not be modified"
    assert rewritten[0].stride == (2,) and rewritten[0].kernel_size == (3,)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="padding='same'"):
        Conv1dAs2d(torch.nn.Conv1d(2, 2, 3, padding="same"))
    kept, n_kept = conv1d_as_conv2d(model, skip=("0",))
    assert n_kept == 1 and type(kept[0]) is torch.nn.Conv1d and isinstance(kept[2], Conv1dAs2d)


class _LoopWithConstant(torch.nn.Module):
    """A scan whose body reads a weight: through a 1x1 conv (XNNPACK takes it) or a cumsum
    (XNNPACK does not: a portable kernel would read the constant inside the loop)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.register_buffer("w", torch.randn(8, 8, 1, 1) * 0.3 if op == "conv" else torch.randn(1, 8, 1, 1) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.scan import scan

        def step(h: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.op == "conv":
                h_next = torch.tanh(torch.nn.functional.conv2d(h, self.w) + xt)
            else:
                h_next = torch.tanh(h * torch.cumsum(self.w, dim=1) + xt)
            return h_next, h_next.reshape(1, 8).clone()

        _, ys = scan(step, torch.zeros(1, 8, 1, 1), x.reshape(-1, 1, 8, 1, 1))
        return ys.reshape(1, -1, 8)


@pytest.mark.parametrize("op", ["conv", "cumsum"])
def test_executorch_loop_constants_inlined_or_lowered_as_inputs(op, tmp_path):
    from executorch.runtime import Runtime

    backend = get_backend("executorch")
    module = _LoopWithConstant(op).eval()
    x = torch.randn(1, 6, 8)
    lowered = backend.lower(torch.export.export(module, (x,), strict=False),
                            precision=backend.precision("fp32"), out_dir=tmp_path)
    # A constant a portable kernel would read inside the loop is never left there (the emitter
    # would hand the kernel wrong data); the program is lowered with it as a loop input.
    assert lowered.info["loop_constants_in_delegate"] is (op == "conv")
    got = Runtime.get().load_program(tmp_path / lowered.files[0]).load_method("forward").execute([x])[0]
    with torch.no_grad():
        want = module(x)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def assert_window_graph_has_no_portable_front_ops(manifest: dict) -> None:
    """An ExecuTorch windowed Whisper graph runs its front (level, centre padding, positions,
    attention, the strided stem conv) inside XNNPACK: none of the portable ops that transformers'
    encoder and the strided taps export with (docs/targets.md, "The Whisper front as exported")."""
    portable = manifest["delegation"]["portable_ops"]
    gone = {"aten_where_self", "aten_eq_scalar", "aten_any_dim", "aten_logical_not_default", "aten_full_like_default",
            "aten_expand_copy_default", "aten_arange_start_step", "aten_abs_default", "aten_index_tensor",
            "aten_embedding_default", "aten_reciprocal_default", "aten_slice_copy_tensor", "aten_mean_dim"}
    assert not gone & set(portable), portable


def test_whisper_window_front_form_equals_the_truncated_encoder(tiny_fm):
    """The delegate-friendly Whisper front computes the truncated transformers encoder's features,
    also for a window whose log-mel frame count is odd (one floor frame appended) and at every cut."""
    from edge_ser.converters.whisper_export import WindowedWhisperFM

    generator = torch.Generator().manual_seed(0)
    for layer in (1, 3):
        for samples in (WINDOW, 16160, 3200):  # 50, 101 (odd) and 20 mel frames
            front = tiny_fm.truncated(layer).for_window(samples)
            form = WindowedWhisperFM(front, window_samples=samples).eval()
            wave = 0.1 * torch.randn(1, samples, generator=generator)
            with torch.no_grad():
                want, got, louder = front(wave), form(wave), form(3.0 * wave)
            assert got.shape == want.shape
            assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())
            assert float((louder - got).abs().max()) < 1e-4  # level-normalised as the original


def test_whisper_front_form_is_chosen_per_target(fused):
    from edge_ser.converters.whisper_export import WindowedWhisperFM

    assert fused.with_front_form("transformers") is fused
    bmm = fused.with_front_form("bmm")
    assert isinstance(bmm.front, WindowedWhisperFM) and bmm.head is fused.head and bmm.labels == fused.labels
    assert get_backend("executorch").whisper_front_form == "bmm"
    with pytest.raises(ValueError, match="expected one of transformers, bmm"):
        fused.with_front_form("sdpa")
    wave = fused.example_input()
    with torch.no_grad():
        for want, got in zip(fused(wave), bmm(wave)):
            assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("frames", [100, 101])
def test_strided_conv_taps_are_unit_stride_slices(frames):
    """Whisper's conv2 as a Linear: its strided taps are built from unit-stride slices (XNNPACK
    takes those; a strided slice is a portable copy) and give exactly the conv's outputs."""
    from edge_ser.converters.quantize_xnnpack import Conv1dAsLinear

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(16, 8, 3, stride=2, padding=1).eval()
    rewritten = Conv1dAsLinear(conv).eval()
    x = torch.randn(1, 16, frames)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), conv(x), atol=1e-5)
    graph = torch.export.export(rewritten, (x,)).graph
    steps = [n.args[4] if len(n.args) > 4 else 1 for n in graph.nodes if n.target == torch.ops.aten.slice.Tensor]
    assert steps and all(step == 1 for step in steps), steps


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "padding", "dilation", "bias"), [
    (80, 16, 3, 1, 1, 1, True),    # Whisper conv1
    (16, 16, 3, 2, 1, 1, True),    # Whisper conv2
    (1, 8, 10, 5, 0, 1, False),    # WavLM/HuBERT first feature-extractor conv
    (8, 8, 2, 2, 0, 1, False),
    (8, 4, 3, 1, 2, 2, True),      # dilation
])
def test_conv1d_as_linear_is_exact(cin, cout, k, stride, padding, dilation, bias):
    from edge_ser.converters.quantize_xnnpack import Conv1dAsLinear

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias).eval()
    x = torch.randn(2, cin, 101)
    with torch.no_grad():
        assert torch.allclose(Conv1dAsLinear(conv)(x), conv(x), atol=1e-5)


def test_conv_rewrite_policy_and_grouped_convs():
    from edge_ser.converters.quantize_xnnpack import Conv1dAs2d, Conv1dAsLinear, conv1d_as_conv2d

    model = torch.nn.Module()
    model.front = torch.nn.Module()
    model.front.body = torch.nn.Module()
    model.front.body.conv = torch.nn.Conv1d(4, 4, 3)
    model.front.body.pos = torch.nn.Conv1d(4, 4, 3, groups=2)  # grouped: not a plain linear
    model.head = torch.nn.Conv1d(4, 4, 3)
    rewritten, n = conv1d_as_conv2d(model, as_linear=("front.body.",))
    assert n == 2
    assert isinstance(rewritten.front.body.conv, Conv1dAsLinear)
    assert type(rewritten.front.body.pos) is torch.nn.Conv1d
    assert isinstance(rewritten.head, Conv1dAs2d)
    with pytest.raises(ValueError, match="groups=2"):
        Conv1dAsLinear(model.front.body.pos)


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_mfbf0_front_converts_to_int8_within_tolerance(target, tmp_path):
    # The in-graph MFBF0 front end (STFT, mel, pitch) stays float32 in int8 artifacts; only the
    # head is quantized, so parity holds.
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    head = TCGRU(42, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=16).eval()
    fused = build_fused_model(feature_model="mfbf0", layer=None, head=head, window_s=WINDOW_S)
    result = convert(fused=fused, target=target, precision="int8", out=tmp_path / "a",
                     calibration_waveforms=[voiced_utterance(s) for s in range(4)],
                     validation_waveforms=[voiced_utterance(s) for s in (100, 101, 102)], source_info=fused.source)
    parity = result.manifest["parity"]
    assert parity["ran"] and parity["passed"], parity
    assert parity["embedding_cosine"] > 0.999


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_wavlm_attention_linears_are_delegated(precision, tmp_path):
    # transformers' WavLM builds the q/k/v biases as chunks of one cat; folded to constants,
    # XNNPACK takes those linears instead of leaving them to portable addmm kernels.
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    fm = load_foundation_model("tiny-wavlm", random_init=True, seed=0)
    torch.manual_seed(0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=16).eval()
    fused = build_fused_model(feature_model=fm, layer=1, head=head, window_s=WINDOW_S)
    result = convert(fused=fused, target="executorch", precision=precision, out=tmp_path / "a",
                     calibration_waveforms=[voiced_utterance(s) for s in range(3)],
                     validation_waveforms=[voiced_utterance(s) for s in (100, 101)], source_info=fused.source)
    portable = result.manifest["delegation"]["portable_ops"]
    assert not any("addmm" in op or "linear" in op or "dequantize_per_channel" in op for op in portable), portable
    assert result.manifest["parity"]["passed"], result.manifest["parity"]


def test_half_built_folders_of_killed_conversions_are_removed(tmp_path):
    """A conversion killed mid-way leaves `.<name>.tmp-<pid>-*`; the next conversion into the same
    place removes it when that process is gone, and keeps one whose process still runs."""
    import os
    import subprocess

    from edge_ser.converters.pipeline import _remove_stale_temp_folders

    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = tmp_path / f".art.tmp-{finished.pid}-abc"
    live = tmp_path / f".art.tmp-{os.getpid()}-def"
    foreign = tmp_path / ".art.tmp-xyz"
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    assert _remove_stale_temp_folders(tmp_path / "art") == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()

"""The runtime shim on real (tiny) artifacts: predict, files, timeline, padding, every bad input,
tampered/foreign manifests, Core ML off macOS, and the `predict` / `bench` CLI.

Two artifacts are converted once per module from the same fused model: ONNX fp32 and
ExecuTorch fp32 (tiny random Whisper cut at block 1 + a 1-layer TC-GRU head, 0.3 s window).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_ser.audio import write_audio
from edge_ser.errors import AudioError, ManifestError
from edge_ser.labels import CATEGORIES, SAMPLE_RATE
from edge_ser.runtime import BackendUnavailableError, get_runner, load, read_manifest

WINDOW_S = 0.3
WINDOW = int(round(WINDOW_S * SAMPLE_RATE))
TARGETS = ("onnx", "executorch")
EMBED = 16
# fp32 artifacts reorder float32 arithmetic only: the converter measured ~2e-7 of scale on this
# model; 1e-4 is the project's fp32 parity bound (edge_ser.runtime.tolerances.FLOAT32_LOWERING).
FP32_ATOL = 1e-4


def voiced(seed: int, n_samples: int) -> np.ndarray:
    """Speech-like test audio: a harmonic tone with vibrato and a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 260)
    phase = 2 * np.pi * f0 * (t + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.2 + np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)))
    wave = rng.uniform(0.1, 0.3) * tone * envelope + 0.01 * rng.standard_normal(n_samples)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def fused():
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    fm = load_foundation_model("tiny-whisper", random_init=True, seed=0)
    torch.manual_seed(0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=EMBED)
    with torch.no_grad():
        # A random head is near-uniform over classes; sharpen it so top-k order is not a tie.
        head.class_head.weight.mul_(20.0)
    return build_fused_model(feature_model=fm, layer=1, head=head.eval(), window_s=WINDOW_S)


@pytest.fixture(scope="module")
def artifacts(fused, tmp_path_factory):
    from edge_ser.converters.pipeline import convert

    root = tmp_path_factory.mktemp("artifacts")
    validation = [voiced(seed, WINDOW) for seed in (100, 101)]
    source = {**fused.source, "run": "unit-test"}
    out = {}
    for target in TARGETS:
        convert(fused=fused, target=target, precision="fp32", out=root / target, calibration_waveforms=[],
                validation_waveforms=validation, source_info=source)
        out[target] = root / target
    return out


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def eager(fused, window: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        probs, avd, emb = fused(torch.from_numpy(window).reshape(1, -1))
    return {"probs": probs.numpy(), "avd": avd.numpy(), "embedding": emb.numpy()}


# ---------------------------------------------------------------------------------------
# predicting


def test_predict_outputs_contract_and_match_eager(artifacts, fused, target):
    model = load(artifacts[target])
    assert model.manifest.target == target and model.window_samples == WINDOW
    clip = voiced(1, WINDOW)
    p = model.predict(clip, SAMPLE_RATE)
    assert list(p.probabilities) == list(model.manifest.labels) == list(CATEGORIES)
    probs = np.array(list(p.probabilities.values()))
    assert np.all(probs >= 0) and abs(probs.sum() - 1.0) < 1e-5
    top = p.top_k(3)
    assert len(top) == 3 and [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert top[0][1] == probs.max() and p.label == top[0][0]
    assert all(isinstance(v, float) and np.isfinite(v) for v in (p.arousal, p.valence, p.dominance))
    assert p.embedding.shape == (EMBED,) and p.embedding.dtype == np.float32 and p.windows == 1
    ref = eager(fused, clip)
    np.testing.assert_allclose(probs, ref["probs"][0], atol=FP32_ATOL)
    np.testing.assert_allclose([p.arousal, p.valence, p.dominance], ref["avd"][0], atol=FP32_ATOL)
    np.testing.assert_allclose(p.embedding, ref["embedding"][0], atol=FP32_ATOL)
    d = p.to_dict()
    assert d["label"] == p.label and d["embedding_dim"] == EMBED and json.dumps(d)


def test_predict_file_reads_a_wav_like_predict(artifacts, target, tmp_path):
    model = load(artifacts[target])
    clip = voiced(2, WINDOW + 1000)
    path = write_audio(tmp_path / "clip.wav", clip)  # 32-bit float WAV: lossless
    from_file, from_array = model.predict_file(path), model.predict(clip, SAMPLE_RATE)
    assert from_file.probabilities == from_array.probabilities
    np.testing.assert_array_equal(from_file.embedding, from_array.embedding)


def test_timeline_windows_and_times(artifacts):
    model = load(artifacts["onnx"])
    clip = voiced(3, SAMPLE_RATE)  # 1.0 s, window 0.3 s, hop 0.3 s -> 0, .3, .6 and a last one ending at 1.0
    points = model.timeline(clip, SAMPLE_RATE, hop_s=0.3)
    assert [(round(pt.start_s, 4), round(pt.end_s, 4)) for pt in points] == [
        (0.0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.7, 1.0)]
    for pt in points:
        s = int(round(pt.start_s * SAMPLE_RATE))
        expected = model.run_window(clip[s:s + WINDOW])
        np.testing.assert_allclose(list(pt.prediction.probabilities.values()), expected["probs"][0], atol=1e-7)
    overlapping = model.timeline(clip, SAMPLE_RATE, hop_s=0.1)
    assert len(overlapping) == 8 and overlapping[-1].end_s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hop_s=0"):
        model.timeline(clip, SAMPLE_RATE, hop_s=0)


def test_long_clip_is_averaged_over_windows(artifacts, target):
    model = load(artifacts[target])
    clip = voiced(4, SAMPLE_RATE)
    p = model.predict(clip, SAMPLE_RATE)
    starts = (0, WINDOW, 2 * WINDOW, SAMPLE_RATE - WINDOW)  # all full windows: equal weights
    outs = [model.run_window(clip[s:s + WINDOW]) for s in starts]
    assert p.windows == 4
    mean_probs = np.mean([o["probs"][0] for o in outs], axis=0)
    np.testing.assert_allclose(list(p.probabilities.values()), mean_probs, atol=1e-6)
    np.testing.assert_allclose(p.embedding, np.mean([o["embedding"][0] for o in outs], axis=0), atol=1e-6)
    single = model.predict(clip[:WINDOW], SAMPLE_RATE)
    assert single.probabilities != p.probabilities  # the other windows did count


def test_short_clip_repeat_vs_zero_padding(artifacts):
    clip = voiced(5, int(0.27 * SAMPLE_RATE))
    repeat = load(artifacts["onnx"], pad="repeat")
    zeros = load(artifacts["onnx"], pad="zeros")
    p_rep, p_zero = repeat.predict(clip, SAMPLE_RATE), zeros.predict(clip, SAMPLE_RATE)
    tiled = np.tile(clip, 2)[:WINDOW]
    padded = np.concatenate([clip, np.zeros(WINDOW - len(clip), np.float32)])
    np.testing.assert_allclose(list(p_rep.probabilities.values()), repeat.run_window(tiled)["probs"][0], atol=1e-7)
    np.testing.assert_allclose(list(p_zero.probabilities.values()), zeros.run_window(padded)["probs"][0], atol=1e-7)
    assert not np.allclose(p_rep.embedding, p_zero.embedding)
    with pytest.raises(ValueError, match="pad='mirror'"):
        load(artifacts["onnx"], pad="mirror")


def test_stereo_is_downmixed_unless_strict(artifacts):
    clip = voiced(6, WINDOW)
    stereo = np.stack([clip * 1.5, clip * 0.5], axis=1)  # mean of the channels == clip
    model = load(artifacts["onnx"])
    np.testing.assert_allclose(model.predict(stereo, SAMPLE_RATE).embedding, model.predict(clip, SAMPLE_RATE).embedding,
                               atol=1e-6)
    with pytest.raises(AudioError, match="2 channels.*expected mono"):
        load(artifacts["onnx"], strict=True).predict(stereo, SAMPLE_RATE)


def test_other_rate_resampled_by_default_refused_without_resampling(artifacts):
    clip8k = voiced(7, 8000)  # 1 s at 8 kHz
    p = load(artifacts["onnx"]).predict(clip8k, 8000)
    assert p.windows == 4  # resampled to 16000 samples first
    with pytest.raises(AudioError, match="8000 Hz.*expects 16000 Hz.*resampl"):
        load(artifacts["onnx"], resample=False).predict(clip8k, 8000)


BAD_INPUTS = {
    "empty": (np.zeros(0, np.float32), "empty"),
    "nan": (np.where(np.arange(WINDOW) == 10, np.nan, 0.1).astype(np.float32), "1 NaN/inf sample"),
    "inf": (np.where(np.arange(WINDOW) == 3, np.inf, 0.1).astype(np.float32), "NaN/inf"),
    "all_zero": (np.zeros(WINDOW, np.float32), "digital silence"),
    "too_short": (voiced(8, 1000), r"0\.062 s long.*expected at least 0\.250 s"),
    "int16": ((voiced(9, WINDOW) * 32767).astype(np.int16), "integer dtype int16.*astype"),
    "three_dims": (np.zeros((1, 2, WINDOW), np.float32) + 0.1, "3 dimensions"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_waveforms_are_refused_with_the_reason(artifacts, case):
    wave, message = BAD_INPUTS[case]
    with pytest.raises(AudioError, match=message):
        load(artifacts["onnx"]).predict(wave, SAMPLE_RATE)


def test_bad_files_are_refused(artifacts, tmp_path):
    model = load(artifacts["onnx"])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3)
    with pytest.raises(AudioError, match="cannot read audio file .*corrupt.wav"):
        model.predict_file(corrupt)
    with pytest.raises(AudioError, match="does not exist"):
        model.predict_file(tmp_path / "missing.wav")


# ---------------------------------------------------------------------------------------
# artifact folder checks


def copy_artifact(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_model_file_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    data = bytearray((art / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="model.onnx has sha256 .*modified"):
        load(art)
    assert load(art, verify=False).manifest.target == "onnx"  # the check is what refused it


def test_other_format_version_and_missing_manifest(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(ManifestError, match="version 2.*reads 'edge-ser-artifact' version 1.*Re-convert"):
        read_manifest(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="has no manifest.json"):
        load(art)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS; the refusal is for other systems")
def test_coreml_runner_needs_macos(tmp_path):
    with pytest.raises(BackendUnavailableError, match=f"needs macOS; this is {sys.platform}"):
        get_runner("coreml", tmp_path / "model.mlpackage")
    with pytest.raises(ValueError, match="known targets"):
        get_runner("tflite", tmp_path / "model.tflite")


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_predict_and_timeline(artifacts, tmp_path):
    from edge_ser.cli import root

    model = load(artifacts["onnx"])
    path = write_audio(tmp_path / "hello.wav", voiced(10, SAMPLE_RATE))
    expected = model.predict_file(path)
    result = CliRunner().invoke(root, ["predict", "--artifact", str(artifacts["onnx"]), str(path), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"hello.wav: {expected.top_k(1)[0][0]} ")
    assert result.output.count(",") == 1  # two labels
    result = CliRunner().invoke(root, ["predict", "--artifact", str(artifacts["onnx"]), str(path), "--timeline", "0.3"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 4 and "0.70-  1.00s" in result.output


def test_cli_bench_three_runs(artifacts, tmp_path):
    from edge_ser.cli import root

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(root, ["bench", "--artifact", str(artifacts["executorch"]), "--runs", "3",
                                       "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "executorch/fp32: p50" in result.output
    report = json.loads(out.read_text())
    assert report["runs"] == 3 and report["threads"] == 1 and report["audio_s"] == pytest.approx(WINDOW_S)
    assert 0 < report["min_ms"] <= report["p50_ms"] <= report["p90_ms"]


def test_executorch_thread_pool_is_not_resized_under_a_loaded_program(artifacts):
    # XNNPACK's pool is process-wide; resizing it under a loaded program crashed the process.
    import gc

    from edge_ser.runtime.target_executorch import _LIVE_EXECUTORCH_RUNNERS, ExecuTorchRunner

    gc.collect()
    alone = len(_LIVE_EXECUTORCH_RUNNERS) == 0
    path = artifacts["executorch"] / "model.pte"
    first = ExecuTorchRunner(path, threads=1)
    second = ExecuTorchRunner(path, threads=2)
    assert second.threads == first.threads
    window = voiced(3, WINDOW)[None, :]
    assert np.array_equal(first.run(window)["probs"], second.run(window)["probs"])
    del first, second
    gc.collect()
    if alone:  # no other program loaded: the pool takes the size asked for
        assert ExecuTorchRunner(path, threads=2).threads == 2

"""In-graph front ends: Conv-DFT STFT, Slaney mel, Whisper log-mel, NCCF pitch, MFBF0, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_ser.errors import AudioError
from edge_ser.frontend import (
    MFBF0,
    MFBF0_DIM,
    MFBF0_FRAME_RATE,
    WHISPER_HOP,
    ConvSTFT,
    MFBF0Config,
    PitchTracker,
    WhisperLogMel,
    mfbf0_frames_for_samples,
    slaney_mel_filter_bank,
    whisper_frames_for_samples,
)

SR = 16_000


# --------------------------------------------------------------------------- signals


def _tone(f0: float, n: int = SR) -> np.ndarray:
    t = np.arange(n) / SR
    return (0.5 * np.sin(2 * np.pi * f0 * t + 0.3)).astype(np.float32)


def _glottal(f0: float, n: int = SR) -> np.ndarray:
    """Harmonics up to 7 kHz with a -15 dB/octave tilt and one 700 Hz formant: a crude vowel."""
    from scipy.signal import lfilter

    t = np.arange(n) / SR
    rng = np.random.default_rng(int(f0))
    harmonics = np.arange(1, int(7000 // f0) + 1)
    phases = rng.uniform(0, 2 * np.pi, size=len(harmonics))
    x = (harmonics[:, None] ** -1.5 * np.sin(2 * np.pi * f0 * harmonics[:, None] * t + phases[:, None])).sum(0)
    r, theta = 0.97, 2 * np.pi * 700 / SR
    x = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _noise(n: int, *, seed: int = 1, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _mixed_utterance(n: int = 48_000) -> np.ndarray:
    """Voiced half, then noise, then near-silence: exercises every MFBF0 branch."""
    half, quarter = n // 2, n // 4
    x = np.concatenate([_glottal(150.0, half), _noise(quarter, scale=0.05), _noise(n - half - quarter, scale=1e-4)])
    return x.astype(np.float32)


# --------------------------------------------------------------------------- mel + STFT


@pytest.mark.parametrize(("n_freqs", "n_mels"), [(201, 80), (257, 40), (201, 128)])
def test_slaney_filters_match_transformers(n_freqs, n_mels):
    from transformers.audio_utils import mel_filter_bank

    ours = slaney_mel_filter_bank(n_freqs=n_freqs, n_mels=n_mels, f_max=8000.0)
    ref = mel_filter_bank(
        num_frequency_bins=n_freqs, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=SR, norm="slaney", mel_scale="slaney",
    )
    assert ours.shape == ref.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_slaney_filters_reject_bad_edges():
    with pytest.raises(ValueError, match="f_max=9000"):
        slaney_mel_filter_bank(n_freqs=201, n_mels=80, f_max=9000.0)


@pytest.mark.parametrize(
    ("n_fft", "win_length", "hop", "center", "pad_mode"),
    [(400, 400, 160, True, "reflect"), (512, 400, 160, True, "constant"), (256, 200, 100, False, "reflect")],
)
def test_conv_stft_matches_torch_stft(n_fft, win_length, hop, center, pad_mode):
    x = torch.from_numpy(np.stack([_noise(8000, seed=3, scale=0.1), _glottal(170.0, 8000)]))
    stft = ConvSTFT(n_fft=n_fft, hop_length=hop, win_length=win_length, center=center, pad_mode=pad_mode)
    ours = stft(x)
    ref = torch.stft(
        x, n_fft, hop, win_length, window=torch.hann_window(win_length), center=center, pad_mode=pad_mode,
        return_complex=True,
    ).abs() ** 2
    assert ours.shape == ref.shape == (2, n_fft // 2 + 1, stft.frames_for_samples(8000))
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    print(f"ConvSTFT n_fft={n_fft}: max abs error / max power = {rel:.2e}")
    assert rel < 1e-5
    # Bins holding at least 1e-3 of the peak power also match individually.
    strong = ref > 1e-3 * ref.max()
    assert ((ours - ref).abs()[strong] / ref[strong]).max().item() < 1e-3


# --------------------------------------------------------------------------- Whisper


def _faded_speechlike(n: int) -> np.ndarray:
    # A fade-out keeps the utterance max away from the end, where the 30 s padding differs.
    fade = np.ones(n)
    fade[-3200:] = np.linspace(1.0, 0.05, 3200)
    return (_glottal(130.0, n) * fade + _noise(n, seed=7, scale=0.005)).astype(np.float32)


@pytest.mark.parametrize("n_samples", [24_000, 24_100, 17_777])
def test_whisper_log_mel_matches_feature_extractor(n_samples):
    from transformers import WhisperFeatureExtractor

    audio = _faded_speechlike(n_samples)
    ref = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=SR, return_tensors="np")["input_features"][0]
    ours = WhisperLogMel(n_mels=80)(torch.from_numpy(audio)[None])[0].numpy()
    n_frames = whisper_frames_for_samples(n_samples)
    assert ours.shape == (80, n_frames) == (80, n_samples // WHISPER_HOP)
    ref = ref[:, :n_frames]
    # Frame t reads samples [160 t - 200, 160 t + 200). Past the end we reflect-pad while the
    # extractor sees its 30 s of zeros; only frames with 160 t + 200 > S read there.
    touches_end = np.arange(n_frames) * WHISPER_HOP + 200 > n_samples
    diff = np.abs(ours - ref).max(axis=0)
    print(f"S={n_samples}: bulk max abs error {diff[~touches_end].max():.2e}, "
          f"end frames {np.round(diff[touches_end], 4).tolist()}")
    # Same utterance max on both sides (the floor max - 8 then matches too).
    assert abs(ours.max() - ref.max()) < 1e-5
    assert diff[~touches_end].max() < 5e-5
    # The padding differs only in the last 40 samples of a faded tail: bounded well below one
    # decade of power (0.25 in Whisper's (log10 + 4) / 4 units).
    assert touches_end.sum() <= 1
    if touches_end.any():
        assert diff[touches_end].max() < 0.05


def test_whisper_log_mel_is_per_utterance():
    a, b = _faded_speechlike(16_000), 0.01 * _noise(16_000, seed=9)
    frontend = WhisperLogMel()
    batch = frontend(torch.from_numpy(np.stack([a, b])))
    # Batched and single convolutions take different float32 summation orders (~1e-6).
    torch.testing.assert_close(batch[1], frontend(torch.from_numpy(b)[None])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[0], frontend(torch.from_numpy(a)[None])[0], rtol=0, atol=1e-5)
    # The max - 8 floor is per utterance: the quiet item keeps its own dynamic range.
    assert batch[1].max().item() < batch[0].max().item() - 0.25


# --------------------------------------------------------------------------- pitch


@pytest.mark.parametrize("f0", [90.0, 120.0, 180.0, 250.0, 400.0])
@pytest.mark.parametrize("kind", ["tone", "glottal"])
def test_pitch_tracker_finds_known_f0(f0, kind):
    x = (_tone if kind == "tone" else _glottal)(f0)
    f0_hz, voicing = PitchTracker()(torch.from_numpy(x)[None])
    assert f0_hz.shape == voicing.shape == (1, 1 + len(x) // 160)
    f0_hz, voicing = f0_hz[0].numpy(), voicing[0].numpy()
    voiced = voicing >= 0.5
    assert voiced.mean() >= 0.95, f"only {voiced.mean():.0%} of frames voiced"
    error = np.abs(f0_hz[voiced] - f0) / f0
    assert np.median(error) < 0.02
    # Interior frames (no zero padding in their window) are all within 2 %.
    assert np.percentile(error, 95) < 0.02
    assert np.median(voicing[3:-3]) > 0.95


def test_pitch_voicing_low_on_white_noise():
    _, voicing = PitchTracker()(torch.from_numpy(_noise(SR))[None])
    print(f"white noise voicing: mean {voicing.mean():.3f}, max {voicing.max():.3f}")
    assert voicing.mean().item() < 0.3
    assert (voicing >= 0.5).float().mean().item() < 0.02


def test_pitch_silence_is_unvoiced_and_finite():
    f0_hz, voicing = PitchTracker()(torch.zeros(1, 4000))
    assert torch.isfinite(f0_hz).all() and torch.all(voicing == 0)


def test_nccf_matches_numpy_brute_force():
    tracker = PitchTracker()
    x = _glottal(137.0, 6000) + _noise(6000, seed=4, scale=0.05)
    ours = tracker.nccf(torch.from_numpy(x)[None])[0].numpy()
    # The tracker correlates the low-passed 8 kHz signal; brute-force on that same signal.
    decimated = tracker.decimate(torch.from_numpy(x)[None])[0, 0].double().numpy()
    assert tracker.internal_rate == 8000 and len(decimated) == 3000
    padded = np.pad(decimated, (tracker.pad_left, tracker.pad_right))
    w = tracker.window_length
    for frame in (0, 7, 20, 36):
        start = frame * tracker.internal_hop
        ref_window = padded[start : start + w]
        expected = []
        for lag in tracker.lags:
            lagged = padded[start + lag : start + lag + w]
            expected.append(ref_window @ lagged / np.sqrt((ref_window @ ref_window) * (lagged @ lagged)))
        np.testing.assert_allclose(ours[:, frame], np.asarray(expected), atol=2e-5)


# --------------------------------------------------------------------------- MFBF0


def test_mfbf0_shape_constants_and_normalisation():
    x = torch.from_numpy(_mixed_utterance(24_050))[None]
    model = MFBF0()
    feats = model(x)
    assert MFBF0_DIM == 42 and MFBF0_FRAME_RATE == 100.0
    assert feats.shape == (1, mfbf0_frames_for_samples(24_050), MFBF0_DIM) == (1, 150, 42)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats.mean(dim=1), torch.zeros(1, 42), rtol=0, atol=1e-4)
    std = feats.std(dim=1, unbiased=False)[0]
    raw_var = model.raw_features(x).var(dim=2, unbiased=False)[0]
    expected = torch.sqrt(raw_var / (raw_var + model.config.norm_eps))
    torch.testing.assert_close(std, expected, rtol=1e-3, atol=1e-4)
    json.dumps(model.config.to_dict())


def test_mfbf0_unvoiced_fill_rule():
    model = MFBF0()
    x = torch.from_numpy(_mixed_utterance(32_000))[None]
    raw = model.raw_features(x)[0]
    log_f0, voicing = raw[40], raw[41]
    voiced = voicing >= model.config.voicing_threshold
    assert 0.3 < voiced.float().mean().item() < 0.7
    assert abs(torch.exp(log_f0[voiced]).median().item() - 150.0) < 3.0
    torch.testing.assert_close(log_f0[~voiced], torch.full_like(log_f0[~voiced], log_f0[voiced].mean().item()))

    # No voiced frame at all: the documented fallback log(sqrt(f_min * f_max)).
    noise_raw = model.raw_features(torch.from_numpy(_noise(16_000))[None])[0]
    assert (noise_raw[41] < 0.5).all()
    torch.testing.assert_close(noise_raw[40], torch.full_like(noise_raw[40], float(np.log(np.sqrt(50.0 * 500.0)))))


def test_mfbf0_silence_gives_zeros_not_nan():
    feats = MFBF0()(torch.zeros(2, 8000))
    assert feats.shape == (2, 50, 42)
    assert torch.isfinite(feats).all() and feats.abs().max().item() < 1e-2


def test_mfbf0_config_changes_width():
    model = MFBF0(MFBF0Config(n_mels=24, normalize=False))
    assert model(torch.from_numpy(_tone(200.0, 4000))[None]).shape == (1, 25, 26)


@pytest.mark.parametrize(
    ("module", "bad", "match"),
    [
        (WhisperLogMel, torch.zeros(16_000), r"shape \(16000,\).*unsqueeze"),
        (MFBF0, torch.zeros(1, 16_000, dtype=torch.int16), "int16.*32768"),
        (MFBF0, torch.zeros(1, 300), r"at least 400 samples .*got 300"),
    ],
)
def test_bad_input_errors_explain_the_fix(module, bad, match):
    with pytest.raises(AudioError, match=match):
        module()(bad)


# --------------------------------------------------------------------------- export


def _parity_input() -> torch.Tensor:
    return torch.from_numpy(_mixed_utterance(48_000))[None]


@pytest.mark.parametrize("module_cls", [WhisperLogMel, MFBF0])
def test_torch_export_matches_eager(module_cls):
    model = module_cls().eval()
    x = _parity_input()
    program = torch.export.export(model, (x,))
    exported, eager = program.module()(x), model(x)
    assert exported.shape == eager.shape
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-6)


def _eager_and_error(model: torch.nn.Module, x: torch.Tensor, out: np.ndarray) -> tuple[np.ndarray, float]:
    eager = model(x).detach().numpy()
    assert out.shape == eager.shape
    return eager, float(np.abs(out - eager).max())


@pytest.mark.slow
def test_mfbf0_lowers_to_executorch_xnnpack_and_runs():
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    model = MFBF0().eval()
    x = _parity_input()
    program = to_edge_transform_and_lower(
        torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    out = method.execute([x])[0].numpy()
    _, error = _eager_and_error(model, x, out)
    print(f"MFBF0 ExecuTorch/XNNPACK .pte vs eager: max abs error {error:.2e}")
    assert error < 5e-4


@pytest.mark.slow
def test_mfbf0_onnx_export_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    model = MFBF0().eval()
    x = _parity_input()
    path = tmp_path / "mfbf0.onnx"
    torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    _, error = _eager_and_error(model, x, out)
    print(f"MFBF0 ONNX Runtime vs eager: max abs error {error:.2e}")
    assert error < 5e-4


def test_conv_stft_reflect_index_is_fpad_reflect_and_power_of_padded_is_forward():
    import torch.nn.functional as F

    stft = ConvSTFT(n_fft=400, hop_length=160)
    for n in (201, 1000, 16640):
        x = torch.randn(2, 1, n, generator=torch.Generator().manual_seed(n))
        padded = F.pad(x, (200, 200), mode="reflect")
        assert torch.equal(x[..., stft.reflect_index(n).long()], padded)
        assert stft.reflect_index(n).dtype == torch.int32
        torch.testing.assert_close(stft.power_of_padded(padded), stft(x[:, 0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="reflect padding"):
        stft.reflect_index(200)
    with pytest.raises(ValueError, match="reflect padding"):
        ConvSTFT(n_fft=400, hop_length=160, center=False).reflect_index(1000)

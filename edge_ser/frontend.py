"""In-graph, exportable audio front ends: Conv-DFT STFT, Whisper log-mel and MFBF0.

Everything here is plain real-valued torch ops (conv1d, slicing, elementwise math,
argmax, gather, where) so one module serves every target: ``torch.export``,
ExecuTorch/XNNPACK, Core ML and ONNX. Complex ``torch.stft`` is avoided on purpose:
it fails ExecuTorch's edge dialect check (../shared/STACK.md, "STFT inside a
waveform-in graph"). Shapes are fixed by the input length, never by its values, so
there is no data-dependent Python control flow.

Frame conventions (all at 16 kHz, hop 160 samples = 10 ms):

* :class:`WhisperLogMel` gives ``S // 160`` frames for ``S`` samples, exactly as
  transformers' ``WhisperFeatureExtractor`` does before its 30 s padding.
* :class:`MFBF0` gives ``S // 160`` frames too (:func:`mfbf0_frames_for_samples`),
  time-major ``(batch, frames, 42)`` like foundation-model features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_ser.errors import AudioError
from edge_ser.labels import SAMPLE_RATE

WHISPER_N_FFT: int = 400
"""Whisper's STFT size and window length (25 ms at 16 kHz)."""

WHISPER_HOP: int = 160
"""Whisper's hop in samples (10 ms at 16 kHz): 100 log-mel frames per second."""

MFBF0_N_MELS: int = 40
"""Log-mel bands in MFBF0 (SPEC.md section 7 item 9)."""

MFBF0_DIM: int = MFBF0_N_MELS + 2
"""MFBF0 feature width: 40 log-mel bands, then log-F0, then voicing probability."""

MFBF0_FRAME_RATE: float = SAMPLE_RATE / 160
"""MFBF0 frames per second (10 ms hop)."""

WINDOWS: tuple[str, ...] = ("hann", "hamming", "rectangular")
PAD_MODES: tuple[str, ...] = ("reflect", "constant")

_LN10 = math.log(10.0)
_NCCF_REL_FLOOR = 1e-8


def whisper_frames_for_samples(n_samples: int) -> int:
    """Number of :class:`WhisperLogMel` frames for ``n_samples`` at 16 kHz.

    >>> whisper_frames_for_samples(48_000)
    300
    """
    return int(n_samples) // WHISPER_HOP


def mfbf0_frames_for_samples(n_samples: int) -> int:
    """Number of :class:`MFBF0` frames for ``n_samples`` at 16 kHz (10 ms hop).

    >>> mfbf0_frames_for_samples(48_000)
    300
    >>> mfbf0_frames_for_samples(48_159)
    300
    """
    return int(n_samples) // 160


# --------------------------------------------------------------------------- mel filters


def hz_to_mel_slaney(freq_hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (Auditory Toolbox, librosa's ``htk=False``): linear below 1 kHz, log above.

    >>> float(hz_to_mel_slaney(1000.0))
    15.0
    """
    freq = np.asarray(freq_hz, dtype=np.float64)
    linear = 3.0 * freq / 200.0
    # Above 1 kHz each factor of 6.4 in frequency adds 27 mels.
    log_part = 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(freq >= 1000.0, log_part, linear)


def mel_to_hz_slaney(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel_slaney`.

    >>> float(mel_to_hz_slaney(15.0))
    1000.0
    """
    mel = np.asarray(mels, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    log_part = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log_part, linear)


def slaney_mel_filter_bank(
    *, n_freqs: int, n_mels: int, sample_rate: int = SAMPLE_RATE, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular Slaney-scale mel filters with Slaney area normalisation (as librosa / Whisper).

    Args:
        n_freqs: number of one-sided STFT bins, ``n_fft // 2 + 1``.
        n_mels: number of mel bands.
        sample_rate: Hz.
        f_min, f_max: band edges in Hz; ``f_max`` defaults to ``sample_rate / 2``.

    Returns:
        float64 array ``(n_freqs, n_mels)``: ``power (.., n_freqs) @ filters`` gives mel power.
        Each filter is scaled by ``2 / (upper edge - lower edge)`` in Hz, so wide high bands
        do not get more energy than narrow low ones.
    """
    nyquist = sample_rate / 2.0
    f_max = nyquist if f_max is None else float(f_max)
    if n_freqs < 2 or n_mels < 1:
        raise ValueError(
            f"mel filter bank needs n_freqs >= 2 and n_mels >= 1; got n_freqs={n_freqs}, n_mels={n_mels}. "
            "Pass n_freqs = n_fft // 2 + 1."
        )
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(
            f"mel band edges f_min={f_min} Hz, f_max={f_max} Hz are invalid; expected "
            f"0 <= f_min < f_max <= {nyquist} (half of sample_rate={sample_rate})."
        )
    edges_hz = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2))
    bin_hz = np.linspace(0.0, nyquist, n_freqs)
    lower, center, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - lower[None, :]) / (center - lower)[None, :]
    falling = (upper[None, :] - bin_hz[:, None]) / (upper - center)[None, :]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (upper - lower))[None, :]


# --------------------------------------------------------------------------- input checks


def _check_waveform(waveform: torch.Tensor, *, min_samples: int, who: str) -> None:
    # Only shape/dtype checks: they are static under torch.export, so they add no graph ops.
    if not isinstance(waveform, torch.Tensor):
        raise AudioError(
            f"{who} expects a torch.Tensor waveform of shape (batch, samples); got {type(waveform).__name__}. "
            "Convert with torch.as_tensor(x, dtype=torch.float32)."
        )
    if waveform.dim() != 2:
        raise AudioError(
            f"{who} expects a waveform of shape (batch, samples); got shape {tuple(waveform.shape)}. "
            "Add a batch axis with x.unsqueeze(0) or downmix multichannel audio to mono first."
        )
    if not waveform.is_floating_point():
        raise AudioError(
            f"{who} expects a floating-point waveform in [-1, 1]; got dtype {waveform.dtype}. "
            "Convert integer PCM with x.float() / 32768."
        )
    if waveform.shape[1] < min_samples:
        raise AudioError(
            f"{who} needs at least {min_samples} samples ({min_samples / SAMPLE_RATE * 1000:.1f} ms at "
            f"{SAMPLE_RATE} Hz); got {waveform.shape[1]}. Pad short clips with zeros."
        )


def _window(name: str, length: int) -> torch.Tensor:
    if name == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64)
    if name == "hamming":
        return torch.hamming_window(length, periodic=True, dtype=torch.float64)
    if name == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    raise ValueError(f"unknown window {name!r}; expected one of {list(WINDOWS)}.")


# --------------------------------------------------------------------------- STFT


class ConvSTFT(nn.Module):
    """Power spectrogram as one ``conv1d`` with a fixed windowed DFT basis.

    Matches ``torch.stft(x, n_fft, hop_length, win_length, window, center, pad_mode,
    return_complex=True).abs() ** 2`` with a periodic window; the window is zero-padded
    to ``n_fft`` in the middle, as ``torch.stft`` does.

    Input ``(batch, samples)`` float32; output ``(batch, n_fft // 2 + 1, frames)`` power
    (squared magnitude, waveform units squared), ``frames = 1 + samples // hop_length``
    with ``center=True`` and ``1 + (samples - n_fft) // hop_length`` without.
    """

    def __init__(
        self,
        *,
        n_fft: int,
        hop_length: int,
        win_length: int | None = None,
        window: str = "hann",
        center: bool = True,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else int(win_length)
        if not 0 < win_length <= n_fft or hop_length <= 0:
            raise ValueError(
                f"ConvSTFT got n_fft={n_fft}, win_length={win_length}, hop_length={hop_length}; "
                "expected 0 < win_length <= n_fft and hop_length > 0."
            )
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected one of {list(PAD_MODES)}.")
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = win_length
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.n_freqs = self.n_fft // 2 + 1

        full_window = torch.zeros(self.n_fft, dtype=torch.float64)
        left = (self.n_fft - win_length) // 2
        full_window[left : left + win_length] = _window(window, win_length)
        k = torch.arange(self.n_freqs, dtype=torch.float64)[:, None]
        n = torch.arange(self.n_fft, dtype=torch.float64)[None, :]
        # Reduce k*n modulo n_fft before the trig so large products keep full float64 precision.
        angle = 2.0 * math.pi * torch.remainder(k * n, self.n_fft) / self.n_fft
        basis = torch.cat([full_window * torch.cos(angle), -full_window * torch.sin(angle)], dim=0)
        self.register_buffer("basis", basis.to(torch.float32)[:, None, :])

    @property
    def min_samples(self) -> int:
        """Shortest accepted input: reflect padding needs more samples than the pad width."""
        return self.n_fft // 2 + 1 if self.center else self.n_fft

    def frames_for_samples(self, n_samples: int) -> int:
        if self.center:
            return 1 + int(n_samples) // self.hop_length
        return 1 + (int(n_samples) - self.n_fft) // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> power ``(batch, n_fft // 2 + 1, frames)``."""
        _check_waveform(waveform, min_samples=self.min_samples, who="ConvSTFT")
        signal = waveform.to(torch.float32).unsqueeze(1)
        if self.center:
            pad = self.n_fft // 2
            signal = F.pad(signal, (pad, pad), mode=self.pad_mode)
        return self.power_of_padded(signal)

    def power_of_padded(self, signal: torch.Tensor) -> torch.Tensor:
        """Power ``(batch, n_fft // 2 + 1, frames)`` of a signal ``(batch, 1, samples)`` already
        padded (what :meth:`forward` runs after its centre padding; no input checks)."""
        spec = F.conv1d(signal, self.basis, stride=self.hop_length)
        # Slices, not chunk/split: those lower to portable split_with_sizes_copy in ExecuTorch.
        real = spec[:, : self.n_freqs]
        imag = spec[:, self.n_freqs :]
        return real * real + imag * imag

    def reflect_index(self, n_samples: int) -> torch.Tensor:
        """The centre reflect padding of a ``n_samples``-long input as a gather index (int32,
        ``n_samples + n_fft`` entries): ``signal[..., index]`` equals ``F.pad(signal, (n_fft // 2,) * 2,
        mode="reflect")``. For graphs of a fixed input length, where ``F.pad``'s reflect mode exports
        as several index computations per call and a gather with a constant index is one op."""
        pad, n = self.n_fft // 2, int(n_samples)
        if not self.center or self.pad_mode != "reflect" or n <= pad:
            raise ValueError(f"reflect_index of a ConvSTFT with center={self.center}, pad_mode={self.pad_mode!r} "
                             f"for {n} samples; expected centre reflect padding of more than {pad} samples.")
        index = torch.arange(-pad, n + pad).abs()
        return torch.where(index >= n, 2 * (n - 1) - index, index).to(torch.int32)


# --------------------------------------------------------------------------- Whisper log-mel


class WhisperLogMel(nn.Module):
    """Whisper's log-mel front end without the 30 s padding.

    Same math as transformers' ``WhisperFeatureExtractor`` (n_fft 400, hop 160, periodic
    Hann, centre reflect pad, power, Slaney mel 0-8 kHz, ``log10(max(mel, 1e-10))``, last
    frame dropped, floor at ``max - 8`` with the max over each utterance, ``(x + 4) / 4``).

    Input ``(batch, samples)`` float32 at 16 kHz, at least 201 samples; output
    ``(batch, n_mels, samples // 160)``. The extractor pads to 30 s with zeros, so only
    the last frame (which sees reflect padding here and zeros there) and, rarely, the
    utterance max can differ from it.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = int(n_mels)
        self.stft = ConvSTFT(n_fft=WHISPER_N_FFT, hop_length=WHISPER_HOP, window="hann", center=True)
        filters = slaney_mel_filter_bank(n_freqs=self.stft.n_freqs, n_mels=self.n_mels, f_max=8000.0)
        # (n_mels, n_freqs, 1): a kernel-1 conv is a matmul that XNNPACK delegates without expand_copy.
        self.register_buffer("mel_weight", torch.from_numpy(filters.T.copy()).float()[:, :, None])

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, n_mels, samples // 160)`` normalised log-mel."""
        _check_waveform(waveform, min_samples=self.stft.min_samples, who="WhisperLogMel")
        return self.of_power(self.stft(waveform))

    def of_power(self, power: torch.Tensor) -> torch.Tensor:
        """The normalised log-mel of a centred STFT power ``(batch, n_freqs, frames + 1)`` (what
        :meth:`forward` computes after the STFT; a graph that pads the signal its own way starts here)."""
        power = power[:, :, :-1]
        mel = F.conv1d(power, self.mel_weight)
        log_mel = torch.log(torch.clamp(mel, min=1e-10)) * (1.0 / _LN10)
        peak = torch.amax(log_mel, dim=(1, 2), keepdim=True)
        log_mel = torch.maximum(log_mel, peak - 8.0)
        return (log_mel + 4.0) * 0.25


# --------------------------------------------------------------------------- pitch


class PitchTracker(nn.Module):
    """Normalised cross-correlation (NCCF) pitch tracker built from fixed convolutions.

    For frame ``t`` (centred at ``t * hop`` samples, like a centred STFT) with reference
    window ``a = x[c - W/2 : c + W/2]`` and lagged windows ``b_l = x[c - W/2 + l : ...]``::

        nccf(l) = <a, b_l> / sqrt(|a|^2 |b_l|^2 + eps)

    The signal is first low-passed and decimated (``decimation``, default 2: 16 -> 8 kHz, a
    31-tap Hann-windowed sinc at 0.9 x the new Nyquist, as one strided conv); F0 up to 500 Hz
    needs no more, and it makes the constants and FLOPs about 4x smaller. The
    cross-correlations come from one DFT conv (basis of length ``W + max_lag + 1``) and a
    fixed inverse-DFT matmul, so the graph has no FFT, no unfold and no complex numbers; the
    energies come from a conv of ``x^2`` with fixed box kernels. The signal is zero-padded
    at both ends. ``W``, lags and hop are in decimated samples internally.

    Lag picking: argmax over lags of ``nccf * (1 - lag_weight * (l - min_lag) / (max_lag - min_lag))``
    (the small tilt prefers the period over its multiples, which a periodic signal
    correlates with just as well), then parabolic interpolation on the raw NCCF around it.
    Voicing is the interpolated NCCF peak clipped to [0, 1].

    Input ``(batch, samples)`` float32 at ``sample_rate``; ``forward`` returns
    ``(f0_hz, voicing)``, each ``(batch, 1 + samples // hop)``.
    """

    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        hop_length: int = 160,
        window_length: int = 400,
        f_min: float = 50.0,
        f_max: float = 500.0,
        lag_weight: float = 0.1,
        decimation: int = 2,
    ) -> None:
        super().__init__()
        if decimation < 1 or hop_length % decimation or window_length % decimation:
            raise ValueError(
                f"PitchTracker got decimation={decimation}, hop_length={hop_length}, window_length="
                f"{window_length}; expected decimation >= 1 dividing both lengths."
            )
        if not 0.0 < f_min < f_max < sample_rate / (4 * decimation):
            raise ValueError(
                f"PitchTracker got f_min={f_min} Hz, f_max={f_max} Hz; expected 0 < f_min < f_max < "
                f"{sample_rate / (4 * decimation)} Hz (a quarter of the decimated rate "
                f"{sample_rate}/{decimation})."
            )
        self.sample_rate = int(sample_rate)
        self.hop_length = int(hop_length)
        self.decimation = int(decimation)
        self.input_window_length = int(window_length)
        self.internal_rate = self.sample_rate // self.decimation
        self.internal_hop = self.hop_length // self.decimation
        self.window_length = self.input_window_length // self.decimation
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.lag_weight = float(lag_weight)
        self.min_lag = int(math.floor(self.internal_rate / f_max))
        self.max_lag = int(math.ceil(self.internal_rate / f_min))
        # One extra lag either side so the parabola around an extreme candidate has neighbours.
        self.first_lag = self.min_lag - 1
        self.n_lags = self.max_lag - self.min_lag + 3
        self.span = self.window_length + self.max_lag + 1  # samples each frame's correlation reads
        self.pad_left = self.window_length // 2
        self.pad_right = self.span - self.pad_left

        taps = 31
        t = torch.arange(taps, dtype=torch.float64) - taps // 2
        cutoff = 0.9 / (2 * self.decimation)  # cycles per input sample
        lowpass = 2 * cutoff * torch.sinc(2 * cutoff * t) * torch.hann_window(taps + 2, periodic=False,
                                                                               dtype=torch.float64)[1:-1]
        self.register_buffer("lowpass", (lowpass / lowpass.sum()).to(torch.float32)[None, None, :])

        dft_size = self.span  # >= W + max lag: the circular correlation never wraps
        n_bins = dft_size // 2 + 1
        n = torch.arange(self.span, dtype=torch.float64)[None, :]
        k = torch.arange(n_bins, dtype=torch.float64)[:, None]
        angle = 2.0 * math.pi * torch.remainder(k * n, dft_size) / dft_size
        ref_mask = (n < self.window_length).to(torch.float64)
        dft = torch.cat(
            [ref_mask * torch.cos(angle), -ref_mask * torch.sin(angle), torch.cos(angle), -torch.sin(angle)], dim=0
        )
        self.n_bins = n_bins
        self.register_buffer("dft_basis", dft.to(torch.float32)[:, None, :])

        # Real inverse DFT restricted to the lags we need, from the one-sided cross-spectrum.
        lags = torch.arange(self.first_lag, self.first_lag + self.n_lags, dtype=torch.float64)
        kk = torch.arange(n_bins, dtype=torch.float64)[None, :]
        weight = torch.full((n_bins,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if dft_size % 2 == 0:
            weight[-1] = 1.0
        inv_angle = 2.0 * math.pi * torch.remainder(lags[:, None] * kk, dft_size) / dft_size
        inverse = torch.cat([weight * torch.cos(inv_angle), -weight * torch.sin(inv_angle)], dim=1) / dft_size
        self.register_buffer("inverse_dft", inverse.to(torch.float32)[:, :, None])

        span_taps = torch.arange(self.span)[None, :]
        # Rows: reference window, whole span, then one window per lag.
        starts = torch.cat([torch.zeros(1, dtype=torch.long), lags.long()])[:, None]
        lengths = torch.full_like(starts, self.window_length)
        starts = torch.cat([starts[:1], torch.zeros(1, 1, dtype=torch.long), starts[1:]])
        lengths = torch.cat([lengths[:1], torch.full((1, 1), self.span, dtype=torch.long), lengths[1:]])
        boxes = ((span_taps >= starts) & (span_taps < starts + lengths)).to(torch.float32)
        self.register_buffer("energy_boxes", boxes[:, None, :])

        tilt = 1.0 - self.lag_weight * (lags - self.min_lag) / (self.max_lag - self.min_lag)
        self.register_buffer("lag_tilt", tilt.to(torch.float32)[None, :, None])

    @property
    def lags(self) -> np.ndarray:
        """Lags of the rows of :meth:`nccf` in decimated samples, ``min_lag - 1 .. max_lag + 1``."""
        return np.arange(self.first_lag, self.first_lag + self.n_lags)

    def frames_for_samples(self, n_samples: int) -> int:
        return 1 + int(n_samples) // self.hop_length

    def decimate(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> low-passed ``(batch, 1, ceil(samples / decimation))`` at ``internal_rate``.

        Decimated sample ``j`` is centred on input sample ``j * decimation``.
        """
        signal = waveform.to(torch.float32).unsqueeze(1)
        if self.decimation == 1:
            return signal
        half = self.lowpass.shape[-1] // 2
        return F.conv1d(F.pad(signal, (half, half)), self.lowpass, stride=self.decimation)

    def nccf(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> NCCF ``(batch, n_lags, 1 + samples // hop)`` in [-1, 1]."""
        _check_waveform(waveform, min_samples=self.input_window_length, who="PitchTracker")
        n_frames = self.frames_for_samples(waveform.shape[1])
        signal = F.pad(self.decimate(waveform), (self.pad_left, self.pad_right))
        spec = F.conv1d(signal, self.dft_basis, stride=self.internal_hop)[:, :, :n_frames]
        nb = self.n_bins
        ref_re, ref_im = spec[:, :nb], spec[:, nb : 2 * nb]
        seg_re, seg_im = spec[:, 2 * nb : 3 * nb], spec[:, 3 * nb :]
        # conj(A) * B, split into real and imaginary parts.
        cross = torch.cat([ref_re * seg_re + ref_im * seg_im, ref_re * seg_im - ref_im * seg_re], dim=1)
        corr = F.conv1d(cross, self.inverse_dft)
        energy = F.conv1d(signal * signal, self.energy_boxes, stride=self.internal_hop)[:, :, :n_frames]
        ref_energy = energy[:, :1]
        span_energy = energy[:, 1:2]
        lag_energy = energy[:, 2:]
        # The DFT route leaves float32 rounding of about 1e-6 * sqrt(ref * span energy) in corr.
        # Where a lagged window is (nearly) empty, e.g. in the zero padding after the last
        # sample, that noise divided by a tiny energy would read as NCCF ~1, so the
        # denominator is floored at 1e-4 * sqrt(ref * span energy); on real windows the floor
        # is ~1e-8 relative and changes nothing. The absolute 1e-20 keeps silence at 0, not 0/0.
        denom = torch.sqrt(ref_energy * (lag_energy + _NCCF_REL_FLOOR * span_energy) + 1e-20)
        return corr / denom

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, samples)`` -> ``(f0_hz, voicing)``, each ``(batch, 1 + samples // hop)``."""
        ncc = self.nccf(waveform)
        score = (ncc * self.lag_tilt)[:, 1:-1]
        best = torch.argmax(score, dim=1, keepdim=True) + 1  # (B, 1, T) index into ncc rows
        around = torch.gather(ncc, 1, torch.cat([best - 1, best, best + 1], dim=1))
        left, peak, right = around[:, 0], around[:, 1], around[:, 2]
        # Curvature is <= 0 at a maximum; clamping it away from 0 keeps the division finite.
        curvature = torch.clamp(left - 2.0 * peak + right, max=-1e-6)
        shift = torch.clamp(0.5 * (left - right) / curvature, min=-0.5, max=0.5)
        lag = best[:, 0].to(torch.float32) + float(self.first_lag) + shift
        f0_hz = float(self.internal_rate) / lag
        voicing = torch.clamp(peak - 0.25 * (left - right) * shift, min=0.0, max=1.0)
        return f0_hz, voicing


# --------------------------------------------------------------------------- MFBF0


@dataclasses.dataclass(frozen=True)
class MFBF0Config:
    """MFBF0 settings (SPEC.md section 7 item 9). All frequencies in Hz, lengths in samples at 16 kHz."""

    n_mels: int = MFBF0_N_MELS
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 50.0
    f_max: float = 500.0
    pitch_window: int = 400
    pitch_decimation: int = 2
    lag_weight: float = 0.1
    voicing_threshold: float = 0.5
    log_floor: float = 1e-10
    normalize: bool = True
    norm_eps: float = 1e-4

    UNVOICED_RULE = (
        "log-F0 of frames with voicing < voicing_threshold is replaced by the mean log-F0 of the "
        "utterance's voiced frames, or by log(sqrt(f_min * f_max)) when no frame is voiced"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MFBF0(nn.Module):
    """Mel filterbank + F0 baseline features, fully in-graph.

    Input ``(batch, samples)`` float32 16 kHz waveform (>= 400 samples). Output
    ``(batch, samples // 160, 42)`` float32, time-major at 100 Hz:

    * ``[..., :40]`` natural-log Slaney mel power, ``log(max(mel, 1e-10))``, 25 ms Hann window
      (400 samples, zero-padded to a 512-point DFT), centred frames, reflect padding;
    * ``[..., 40]`` log-F0 (log Hz) from :class:`PitchTracker`; unvoiced frames follow
      :attr:`MFBF0Config.UNVOICED_RULE` (no data-dependent control flow: masks and ``where``);
    * ``[..., 41]`` voicing probability in [0, 1] (peak NCCF).

    With ``normalize`` (default) each utterance is mean/variance normalised over its frames,
    per dimension: ``(x - mean) / sqrt(var + norm_eps)``, so silence maps to 0, not NaN.
    The centred STFT has one frame more than ``samples // 160``; the last one (centred on
    the final sample) is dropped, as Whisper does, to keep exactly 100 frames per second.
    """

    def __init__(self, config: MFBF0Config | None = None) -> None:
        super().__init__()
        self.config = config or MFBF0Config()
        cfg = self.config
        self.stft = ConvSTFT(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window="hann")
        filters = slaney_mel_filter_bank(n_freqs=self.stft.n_freqs, n_mels=cfg.n_mels)
        self.register_buffer("mel_weight", torch.from_numpy(filters.T.copy()).float()[:, :, None])
        self.pitch = PitchTracker(
            hop_length=cfg.hop_length,
            window_length=cfg.pitch_window,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            lag_weight=cfg.lag_weight,
            decimation=cfg.pitch_decimation,
        )
        self.min_samples = max(cfg.win_length, cfg.pitch_window, self.stft.min_samples)
        self.fallback_log_f0 = 0.5 * (math.log(cfg.f_min) + math.log(cfg.f_max))

    @property
    def dim(self) -> int:
        return self.config.n_mels + 2

    def frames_for_samples(self, n_samples: int) -> int:
        return int(n_samples) // self.config.hop_length

    def raw_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unnormalised features ``(batch, dim, samples // hop)`` (feature-major)."""
        _check_waveform(waveform, min_samples=self.min_samples, who="MFBF0")
        power = self.stft(waveform)[:, :, :-1]
        log_mel = torch.log(torch.clamp(F.conv1d(power, self.mel_weight), min=self.config.log_floor))
        f0_hz, voicing = self.pitch(waveform)
        f0_hz = f0_hz[:, None, :-1]
        voicing = voicing[:, None, :-1]
        log_f0 = self._fill_unvoiced(torch.log(f0_hz), voicing)
        return torch.cat([log_mel, log_f0, voicing], dim=1)

    def _fill_unvoiced(self, log_f0: torch.Tensor, voicing: torch.Tensor) -> torch.Tensor:
        voiced = voicing >= self.config.voicing_threshold
        weight = voiced.to(log_f0.dtype)
        count = weight.sum(dim=2, keepdim=True)
        voiced_mean = (log_f0 * weight).sum(dim=2, keepdim=True) / torch.clamp(count, min=1.0)
        fill = torch.where(count > 0.0, voiced_mean, torch.full_like(voiced_mean, self.fallback_log_f0))
        return torch.where(voiced, log_f0, fill)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, samples // 160, 42)``."""
        feats = self.raw_features(waveform)
        if self.config.normalize:
            # Shifting by the first frame before averaging keeps float32 rounding proportional to
            # the spread, not the level (log-F0 ~5, log-mel floor ~-23): a near-constant dim
            # would otherwise turn summation noise into visible output after the 1/std scaling.
            shifted = feats - feats[:, :, :1]
            centred = shifted - shifted.mean(dim=2, keepdim=True)
            var = (centred * centred).mean(dim=2, keepdim=True)
            feats = centred / torch.sqrt(var + self.config.norm_eps)
        return feats.transpose(1, 2)

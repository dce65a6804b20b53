"""How a cached stream computes a Whisper encoder's hidden states, without streaming.

A streaming artifact in ``cached`` mode (:mod:`edge_ser.converters.stream_fm`) runs the
foundation model hop by hop: a running level and log-mel maximum, the conv stem on each hop with
:data:`FRONT_CONTEXT_SAMPLES` of audio before it, positions since the segment start, and each
hop's frames attending to themselves and to the ``context_frames`` frames before them.
:func:`cached_reference_states` computes the same states for a whole clip at once: the reference
the artifact's parity is checked against, and what ``edge-ser features extract --stream-hop``
stores so that a head can be trained on what a stream gives it. It lives here, with the
foundation model, because feature extraction and evaluation (below the converters) use it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FRONT_CONTEXT_SAMPLES = 640
"""Samples before the hop that Whisper's stem needs for the hop's first frame (its left receptive
field: conv2's frame ``t`` reads mel frames ``2t - 2 .. 2t + 2``, a mel frame 200 samples either
side of its centre); two 20 ms frames."""

WHISPER_FRAME_SAMPLES = 320
"""Samples per Whisper encoder frame (20 ms): a hop is a whole number of them."""


def whole_hops(n_samples: int, hop_samples: int) -> int:
    """Hops a stream runs for ``n_samples`` pushed and then flushed: the last partial hop counts (it is
    zero-padded), and an empty or short clip still makes one."""
    return max(1, -(-int(n_samples) // int(hop_samples)))


def pad_to_whole_hops(waveform: np.ndarray, hop_samples: int) -> np.ndarray:
    """Mono ``waveform`` zero-padded at the end to :func:`whole_hops` hops (float32): the samples a
    stream runs when the clip is pushed and flushed (``EmotionStream.flush`` pads the last hop)."""
    wave = np.asarray(waveform, dtype=np.float32).reshape(-1)
    return np.concatenate([wave, np.zeros(whole_hops(len(wave), hop_samples) * int(hop_samples) - len(wave),
                                          np.float32)])


def stream_frames(spec: object, *, window_samples: int, hop_samples: int) -> tuple[int, int]:
    """``(hop_frames, context_frames)`` of a cached stream with ``hop_samples`` per hop and a
    ``window_samples`` context, for the Whisper ``spec`` (a :class:`~edge_ser.fm.specs.FoundationModelSpec`
    or registry name); raises ValueError for a hop that is not whole frames or not inside the window."""
    from edge_ser.fm.model import frames_for_samples

    window_samples, hop_samples = int(window_samples), int(hop_samples)
    if hop_samples % WHISPER_FRAME_SAMPLES or hop_samples < 2 * WHISPER_FRAME_SAMPLES:
        raise ValueError(f"a hop of {hop_samples} samples ({hop_samples / 16000:g} s); expected a whole number of "
                         "Whisper's 20 ms frames (320 samples), at least two: a multiple of the model's frame step, "
                         "e.g. 0.5 or 1.0.")
    if not 0 < hop_samples <= window_samples // 2:
        raise ValueError(f"hop of {hop_samples} samples for a {window_samples}-sample window; expected 0 < hop <= "
                         "window / 2 (at least half the window is left context). Use a shorter hop or a longer context.")
    hop_frames = frames_for_samples(spec, window_samples) - frames_for_samples(spec, window_samples - hop_samples)
    return hop_frames, frames_for_samples(spec, window_samples) - hop_frames


@torch.no_grad()
def cached_reference_frames(front: nn.Module, waveform: np.ndarray, *, hop_samples: int,
                            context_frames: int) -> torch.Tensor:
    """What :class:`CachedWhisperFM` feeds the head over a stream of ``waveform`` (mono, one segment,
    preceded by zeros), computed without streaming: ``(1, K * M, D)`` for the ``K`` whole hops.
    The last of :func:`cached_reference_states`."""
    return cached_reference_states(front, waveform, hop_samples=hop_samples, context_frames=context_frames)[-1]


@torch.no_grad()
def cached_reference_states(front: nn.Module, waveform: np.ndarray, *, hop_samples: int,
                            context_frames: int) -> list[torch.Tensor]:
    """Every hidden state of ``front`` (a Whisper :class:`~edge_ser.fm.model.TruncatedFoundationModel`)
    as a cached stream computes it over ``waveform`` (mono, one segment, preceded by zeros): index 0
    the stem's frames plus positions, ``k`` the output of block ``k``, the last one through the
    encoder's final layer norm where the front keeps it (as transformers' last hidden state); each
    ``(1, K * M, D)`` for the ``K`` whole hops. What ``edge-ser features extract --stream-hop``
    stores; the last state is what :class:`CachedWhisperFM` feeds the head.

    Independent of the streaming code where it can be: the level and the log-mel maximum from
    cumulative sums in float64, the STFT by ``torch.stft``, and the blocks are the truncated
    encoder's transformers layers run once over all frames with positions ``0..T-1`` and a block
    attention mask."""
    from edge_ser.frontend import WhisperLogMel

    level, log_mel_module = list(front.front_end)
    if not isinstance(log_mel_module, WhisperLogMel):
        raise ValueError("cached_reference_states needs a Whisper front (WhisperLogMel front end).")
    body, table = front.body, front.position_table
    m, c = hop_samples // WHISPER_FRAME_SAMPLES, int(context_frames)
    wave = np.asarray(waveform, dtype=np.float64).reshape(-1)
    n_hops = len(wave) // hop_samples
    if n_hops * m > table.shape[0]:
        raise ValueError(f"{n_hops} hops of {m} frames exceed the {table.shape[0]} positions of one segment; "
                         "pass at most one segment of audio.")
    padded = np.concatenate([np.zeros(FRONT_CONTEXT_SAMPLES), wave])
    cumulative_power = np.cumsum(wave[: n_hops * hop_samples] ** 2)
    window = torch.hann_window(400, periodic=True, dtype=torch.float64)
    mel_weight = log_mel_module.mel_weight[:, :, 0].to(torch.float64)
    running_max = -np.inf
    stems = []
    for k in range(n_hops):
        end = (k + 1) * hop_samples
        gain = level.target / math.sqrt(cumulative_power[end - 1] / end + level.floor_power)
        samples = torch.from_numpy(padded[k * hop_samples: end + FRONT_CONTEXT_SAMPLES] * gain)
        spectrum = torch.stft(samples, n_fft=400, hop_length=160, window=window, center=True, pad_mode="reflect",
                              return_complex=True)
        power = spectrum.abs() ** 2
        log_mel = torch.log10(torch.clamp(mel_weight @ power[:, :-1], min=1e-10))
        running_max = max(running_max, float(log_mel.max()))
        normalised = ((torch.maximum(log_mel, torch.tensor(running_max - 8.0, dtype=torch.float64)) + 4.0) / 4.0)
        x = F.gelu(body.conv1(normalised.to(torch.float32)[None]))
        x = F.gelu(body.conv2(x)).permute(0, 2, 1)
        stems.append(x[:, x.shape[1] - m:])
    x = torch.cat(stems, dim=1) + table[: n_hops * m].unsqueeze(0)
    t = torch.arange(n_hops * m)
    hop_of = t // m
    visible = (t[None, :] >= hop_of[:, None] * m - c) & (t[None, :] < (hop_of[:, None] + 1) * m)
    mask = torch.where(visible, 0.0, torch.finfo(torch.float32).min).reshape(1, 1, len(t), len(t))
    states = [x]
    for block in body.layers:
        x = block(x, mask)
        states.append(x[0] if isinstance(x, tuple) else x)
    states[-1] = body.layer_norm(states[-1])
    return states


__all__ = ["FRONT_CONTEXT_SAMPLES", "cached_reference_frames", "cached_reference_states", "pad_to_whole_hops",
           "stream_frames", "whole_hops"]

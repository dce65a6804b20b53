"""The foundation model of a streaming artifact in ``cached`` mode: each hop runs the FM on its new
frames only, attending to cached keys/values of the frames before (docs/streaming.md).

Whisper only. What one call computes for a hop of ``H`` samples (``M = H / 320`` frames) with a
context of ``C`` cached frames (the window's frames minus the hop's):

1. **Level.** The gain that scales the audio to :data:`~edge_ser.fm.model.INPUT_LEVEL_DBFS` uses
   the mean power of every sample since the segment start, this hop included (a running
   statistic, state ``stats``), not the power of one window.
2. **Log-mel and conv stem** on the hop plus :data:`FRONT_CONTEXT_SAMPLES` samples before it
   (state ``audio``): the newest ``M`` frames of Whisper's two input convs. 640 samples is the stem's
   whole left receptive field, so those frames do not depend on the window's left edge. Whisper's
   ``max - 8`` floor uses the running maximum of the log-mel since the segment start (``stats``).
   The last frame of each hop sees the reflect padding at the right edge of the audio so far, as
   the newest frame of a windowed call does.
3. **Positions since the segment start**: frame ``t`` of the segment gets Whisper's positional row
   ``t`` (a whole clip's frame has the position it has in the clip), so a segment lasts at most
   the table's 1500 rows (30 s); the runtime resets the segment before (``max_segment_s``).
4. **Blocks with a key/value cache**: in every block up to the cut the hop's frames attend to
   each other and to the keys/values of the ``C`` frames before them (state ``kv``, one
   ``(2, C, D)`` slab per block); cache slots from before the segment start are masked out.

A segment reset zeroes ``kv`` and ``stats`` (positions, level and log-mel maximum restart with the
head's states); ``audio`` (the stem's 640 samples) is kept, since the audio is continuous.

The offline computation it equals (:func:`cached_reference_frames`): the same per-hop level and
log-mel maximum computed from cumulative sums, ``torch.stft``, the stem on each hop's samples, and
the truncated encoder's own transformers blocks run once over all frames with positions 0..T-1
and a block mask (frame ``t`` of hop ``k`` attends to frames ``kM - C .. (k+1)M - 1``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_ser.converters.whisper_export import bmm_block, layer_norm
from edge_ser.fm.stream import (  # noqa: F401  the offline reference, re-exported for the converters
    FRONT_CONTEXT_SAMPLES,
    cached_reference_frames,
    cached_reference_states,
)
from edge_ser.runtime.artifact import STREAM_FM_CHOICES, STREAM_FM_MODES

FM_MODES: tuple[str, ...] = STREAM_FM_MODES
"""How a streaming artifact runs the foundation model per hop: ``window`` (the whole context window
every hop, any family) or ``cached`` (only the hop's frames, with cached keys/values; Whisper).
Declared once, in the runtime (:data:`edge_ser.runtime.artifact.STREAM_FM_MODES`)."""

_LN10 = math.log(10.0)
_MASKED = -3.0e4
"""Additive attention bias of a masked cache slot: finite in float16 as well (max 65504), so the
mask's product ``0 * -_MASKED`` stays 0 in a Core ML fp16 program (1e9 would be inf there, and
0 * inf NaN), and far enough below any attention score that its softmax weight is exactly 0."""
STATS_FIELDS: tuple[str, ...] = ("frames", "power_sum", "samples", "log_mel_max")
"""The ``stats`` state, in order: frames since the segment start, sum of squared samples and number of
samples since the segment start (the running level), running maximum of the log-mel (log10 units)."""


FM_MODE_CHOICES: tuple[str, ...] = STREAM_FM_CHOICES
"""``auto`` and the modes (:data:`edge_ser.runtime.artifact.STREAM_FM_CHOICES`)."""


def resolve_fm_mode(fm_mode: str, *, feature_model: str | None = None, family: str | None = None) -> str:
    """The mode ``fm_mode`` stands for (``auto``: ``cached`` for Whisper, else ``window``), checked."""
    if fm_mode == "auto":
        fm_mode = "cached" if family == "whisper" else "window"
    return check_fm_mode(fm_mode, feature_model=feature_model, family=family)


def check_fm_mode(fm_mode: str, *, feature_model: str | None = None, family: str | None = None) -> str:
    """``fm_mode`` if known (and, for ``cached``, built for ``family``); raises listing the choices."""
    if fm_mode not in FM_MODES:
        raise ValueError(f"fm_mode={fm_mode!r}; expected one of {', '.join(FM_MODES)}.")
    if fm_mode == "cached" and family != "whisper":
        raise ValueError(
            f"fm_mode='cached' is built for Whisper only; got {feature_model or family!r}. WavLM and HuBERT add "
            "positions with a convolution over 128 frames centred on each frame (64 frames, 1.28 s, of look-ahead) "
            "and WavLM a relative-position bias, so their blocks cannot run on a hop's frames alone with a cache. "
            "Use fm_mode='window' (--stream-fm window) for them."
        )
    return fm_mode


class CachedWhisperFM(nn.Module):
    """Whisper cut after block k, one hop at a time (see the module docstring).

    ``forward(hop (1, H), audio_in (1, 640), kv_in (k, 2, C, D), stats_in (1, 4))`` ->
    ``(features (1, M, D), audio_out, kv_out, stats_out)``. Shares the truncated model's weights.

    Args:
        front: a Whisper :class:`~edge_ser.fm.model.TruncatedFoundationModel` (the fused model's
            front), whose ``position_table`` holds all of Whisper's positional rows.
        hop_samples: ``H``, a multiple of 320.
        context_frames: ``C``, frames of cached keys/values per block.
    """

    def __init__(self, front: nn.Module, *, hop_samples: int, context_frames: int) -> None:
        super().__init__()
        from edge_ser.fm.model import LevelNormalizer
        from edge_ser.frontend import WhisperLogMel

        spec = getattr(front, "spec", None)
        check_fm_mode("cached", feature_model=getattr(spec, "name", type(front).__name__),
                      family=getattr(spec, "family", None))
        level, log_mel = list(front.front_end)
        if not isinstance(level, LevelNormalizer) or not isinstance(log_mel, WhisperLogMel):
            raise ValueError(f"Whisper front end {front.front_end}; expected LevelNormalizer then WhisperLogMel.")
        if hop_samples % 320 or hop_samples < 640 or context_frames < 1:
            raise ValueError(f"hop_samples={hop_samples}, context_frames={context_frames}; expected a hop of whole "
                             "20 ms frames (>= 2) and at least one cached frame.")
        table = getattr(front, "position_table", None)
        if table is None:
            raise ValueError("the Whisper front has no position_table (all positional rows); build it with "
                             "TruncatedFoundationModel.for_window, which keeps them for streaming.")
        self.hop_samples = int(hop_samples)
        self.hop_frames = self.hop_samples // 320
        self.context_frames = int(context_frames)
        self.level_target, self.level_floor_power = level.target, level.floor_power
        self.stft = log_mel.stft
        self.register_buffer("mel_weight", log_mel.mel_weight.detach().clone())
        self.body = front.body  # conv1, conv2, layers, layer_norm (Identity below the last block)
        self.register_buffer("positions", table.detach().clone())
        self.max_frames = int(table.shape[0])
        attention = self.body.layers[0].self_attn
        self.n_blocks = len(self.body.layers)
        self.width = int(attention.embed_dim)
        self.n_heads, self.head_dim, self.scaling = int(attention.num_heads), int(attention.head_dim), attention.scaling
        self.register_buffer("slot", torch.arange(self.context_frames + self.hop_frames, dtype=torch.float32))
        # The STFT's centre reflect padding as one gather with a constant index (the window's length
        # is fixed): F.pad's reflect mode exports as arange/abs/sub/index, six portable ops a hop.
        self.register_buffer("pad_index", self.stft.reflect_index(FRONT_CONTEXT_SAMPLES + self.hop_samples))
        self.register_buffer("frame_offsets", torch.arange(self.hop_frames, dtype=torch.float32))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The FM's carried states by input name: the stem's audio, the key/value cache, the statistics."""
        return {"audio_in": (1, FRONT_CONTEXT_SAMPLES),
                "kv_in": (self.n_blocks, 2, self.context_frames, self.width),
                "stats_in": (1, len(STATS_FIELDS))}

    @property
    def max_segment_frames(self) -> int:
        """Frames a segment may hold: one positional row each."""
        return self.max_frames

    def stem(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``(1, n_mels, 2F)`` normalised log-mel -> ``(1, F, D)`` Whisper conv-stem frames (before positions)."""
        x = F.gelu(self.body.conv1(log_mel))
        return F.gelu(self.body.conv2(x)).permute(0, 2, 1)

    def forward(self, hop: torch.Tensor, audio_in: torch.Tensor, kv_in: torch.Tensor,
                stats_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m, c = self.hop_frames, self.context_frames
        frames_before = stats_in[:, 0:1]
        started = torch.clamp(frames_before, 0.0, 1.0)  # (1, 1): 0 on a segment's first hop
        # Written with ops XNNPACK takes (4-D mean, rsqrt): sum and division export as portable ops,
        # each splitting the delegated graph.
        n = self.hop_samples
        hop_power = torch.mean((hop * hop).reshape(1, 1, 1, n), dim=(-1, -2), keepdim=True).reshape(1, 1) * float(n)
        power_sum = stats_in[:, 1:2] + hop_power
        samples = stats_in[:, 2:3] + float(n)
        gain = self.level_target * torch.rsqrt(power_sum / samples + self.level_floor_power)
        window = torch.cat([audio_in, hop], dim=1)
        padded = torch.index_select(window * gain, 1, self.pad_index)
        power = self.stft.power_of_padded(padded.reshape(1, 1, padded.shape[1]))[:, :, :-1]
        log_mel = torch.log(torch.clamp(F.conv1d(power, self.mel_weight), min=1e-10)) * (1.0 / _LN10)
        window_max = torch.amax(log_mel, dim=(1, 2)).reshape(1, 1)
        running_max = window_max + started * (torch.maximum(stats_in[:, 3:4], window_max) - window_max)
        log_mel = (torch.maximum(log_mel, running_max.reshape(1, 1, 1) - 8.0) + 4.0) * 0.25
        x = self.stem(log_mel)
        x = x[:, x.shape[1] - m:]
        # Clamped and cast last, to int32: Core ML's gather takes no other index type.
        index = torch.clamp(frames_before.reshape(1) + self.frame_offsets, max=float(self.max_frames - 1))
        x = x + torch.index_select(self.positions, 0, index.to(torch.int32)).reshape(1, m, self.width)
        # Cache slot j holds frame frames_before - c + j: masked while that is before the segment start,
        # where slot + frames_before - c is a negative whole number: clamped to [-1, 0], times -_MASKED,
        # the bias is _MASKED there and 0 elsewhere (a clamp and a product: where/ge are portable ops).
        offset = torch.clamp(self.slot + frames_before.reshape(1) - float(c), min=-1.0, max=0.0)
        bias = (offset * -_MASKED).reshape(1, 1, 1, c + m)
        # The cache as (blocks * 2, C, D) rows, reshaped rather than indexed: select/unsqueeze/stack
        # export as portable copies of the whole cache, a reshape as a free view.
        slabs = kv_in.reshape(2 * self.n_blocks, c, self.width)
        caches = []
        for i, block in enumerate(self.body.layers):
            x, kv = self._block(block, x, slabs.narrow(0, 2 * i, 2), bias)
            caches.append(kv)
        features = layer_norm(self.body.layer_norm, x)
        kv_out = (torch.cat(caches, dim=0) if len(caches) > 1 else caches[0]).reshape(self.n_blocks, 2, c, self.width)
        stats_out = torch.cat([frames_before + float(m), power_sum, samples, running_max], dim=1)
        return features, window[:, window.shape[1] - FRONT_CONTEXT_SAMPLES:], kv_out, stats_out

    def _block(self, block: nn.Module, x: torch.Tensor, kv: torch.Tensor,
               bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Whisper encoder block on the hop's frames ``(1, M, D)`` with its cache ``(2, C, D)``;
        returns the frames and the next cache, the newest ``C`` frames' keys and values."""
        x, keys, values = bmm_block(block, x, heads=self.n_heads, head_dim=self.head_dim, scaling=self.scaling,
                                    prefix=kv, bias=bias.reshape(1, 1, bias.shape[-1]))
        m = self.hop_frames
        return x, torch.cat([keys[:, m:], values[:, m:]], dim=0)

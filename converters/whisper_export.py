"""Whisper's truncated encoder written with the ops the ExecuTorch XNNPACK delegate takes.

transformers' ``WhisperEncoder`` exports with about twenty ops XNNPACK does not take, each run by
ExecuTorch's portable kernels between delegate calls (an ETDump profile of the int8 3 s window of
Whisper-base cut after block 1, session 12): the attention interface's mask handling
(``eq``/``logical_not``/``any``/``where`` over the ``(1, heads, T, T)`` scores, and ``full_like``),
``matmul``'s ``expand_copy`` of both operands, ``F.pad``'s reflect mode as arange/abs/sub/index
over the window, the positional table looked up by ``embedding`` of an ``arange``, and the level's
``reciprocal``. :class:`WindowedWhisperFM` computes the same features as the truncated encoder for
one fixed window with none of them: the centre padding is two gathers of the edge samples, the
positions a constant added, attention two ``bmm`` (no mask: a window attends to all of itself),
the level a 4-D mean and an ``rsqrt``, and the layer norms means and an ``rsqrt`` as well (XNNPACK
has no layer norm; ``native_layer_norm`` ran as a portable op around every attention and MLP). The cached streaming form
(:class:`~edge_ser.converters.stream_fm.CachedWhisperFM`) runs its blocks through the same
:func:`bmm_block`.

Outputs equal :class:`~edge_ser.fm.model.TruncatedFoundationModel`'s to float32 rounding (a
fast-tier test checks it); the converter's parity gate compares the artifact with the fused model
as trained, so any difference is part of the measured error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WHISPER_FRONT_FORMS: tuple[str, ...] = ("transformers", "bmm")
"""How a windowed graph's Whisper front is written (:attr:`~edge_ser.converters.backend_base.Backend.whisper_front_form`)."""


def level_gain(waveform: torch.Tensor, *, target: float, floor_power: float) -> torch.Tensor:
    """``(1, samples)`` -> the ``(1, 1)`` gain of :class:`~edge_ser.fm.model.LevelNormalizer`,
    ``target / sqrt(mean(x^2) + floor_power)``, as a 4-D mean and an ``rsqrt`` (XNNPACK takes
    both; ``mean`` over a 2-D input and ``reciprocal`` run as portable ops)."""
    n = waveform.shape[1]
    power = torch.mean((waveform * waveform).reshape(1, 1, 1, n), dim=(-1, -2), keepdim=True).reshape(1, 1)
    return target * torch.rsqrt(power + floor_power)


def layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (an ``nn.LayerNorm`` over the last dim, or ``nn.Identity``) applied to ``(1, T, D)``
    as 4-D means and an ``rsqrt``: XNNPACK has no layer norm, and ``native_layer_norm`` runs as a
    portable op that splits the delegated graph before and after every block's attention and MLP."""
    if isinstance(norm, nn.Identity):
        return x
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        raise ValueError(f"layer_norm of {norm}; expected an nn.LayerNorm over the last dimension (or nn.Identity).")
    frames, width = x.shape[1], x.shape[2]
    rows = x.reshape(1, frames, width, 1)
    centred = rows - torch.mean(rows, dim=(-1, -2), keepdim=True)
    variance = torch.mean(centred * centred, dim=(-1, -2), keepdim=True)
    y = (centred * torch.rsqrt(variance + norm.eps)).reshape(1, frames, width)
    return y * norm.weight + norm.bias if norm.elementwise_affine else y


def bmm_block(block: nn.Module, x: torch.Tensor, *, heads: int, head_dim: int, scaling: float,
              prefix: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One transformers ``WhisperEncoderLayer`` (eval mode) on ``x`` ``(1, M, D)``.

    ``prefix``: optional cached ``(2, C, D)`` keys and values the frames also attend to (before
    their own); ``bias``: optional additive attention bias broadcast to ``(heads, M, C + M)``.
    Returns ``(x_out (1, M, D), keys (1, C + M, D), values (1, C + M, D))``.
    Attention as ``bmm`` (``matmul`` exports with an ``expand_copy`` of each operand)."""
    m = x.shape[1]
    attention = block.self_attn
    y = layer_norm(block.self_attn_layer_norm, x)
    q = (attention.q_proj(y) * scaling).reshape(m, heads, head_dim).transpose(0, 1)  # (heads, M, d)
    keys, values = attention.k_proj(y), attention.v_proj(y)
    if prefix is not None:
        keys = torch.cat([prefix[0:1], keys], dim=1)  # (1, C + M, D)
        values = torch.cat([prefix[1:2], values], dim=1)
    k = keys.reshape(-1, heads, head_dim).transpose(0, 1)  # (heads, C + M, d)
    v = values.reshape(-1, heads, head_dim).transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2))
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    context = torch.bmm(weights, v).transpose(0, 1).reshape(1, m, heads * head_dim)
    x = x + attention.out_proj(context)
    y = layer_norm(block.final_layer_norm, x)
    x = x + block.fc2(F.gelu(block.fc1(y)))
    return x, keys, values


class WindowedWhisperFM(nn.Module):
    """A Whisper :class:`~edge_ser.fm.model.TruncatedFoundationModel` for inputs of exactly
    ``window_samples``, in delegate-friendly ops (module docstring). ``(1, window_samples)``
    float32 16 kHz -> ``(1, frames, D)``, the truncated encoder's output. Shares its weights.

    Keeps the submodule path ``body.conv1``/``body.conv2`` of the truncated model, so the int8
    quantizer's rewrite of the foundation model's input convs
    (:data:`~edge_ser.converters.quantize_xnnpack.FOUNDATION_CONV_PREFIX`) finds them.
    """

    def __init__(self, front: nn.Module, *, window_samples: int) -> None:
        super().__init__()
        from edge_ser.fm.model import LevelNormalizer
        from edge_ser.frontend import WhisperLogMel

        spec = getattr(front, "spec", None)
        if getattr(spec, "family", None) != "whisper":
            raise ValueError(f"WindowedWhisperFM needs a Whisper front; got {getattr(spec, 'name', type(front).__name__)}.")
        level, log_mel = list(front.front_end)
        if not isinstance(level, LevelNormalizer) or not isinstance(log_mel, WhisperLogMel):
            raise ValueError(f"Whisper front end {front.front_end}; expected LevelNormalizer then WhisperLogMel.")
        self.spec = spec
        self.layer = getattr(front, "layer", None)
        self.window_samples = int(window_samples)
        self.level_target, self.level_floor_power = level.target, level.floor_power
        self.log_mel = log_mel
        # The centre reflect padding: two gathers of the n_fft / 2 edge samples with constant indices
        # (F.pad's reflect mode exports as arange/abs/sub/index over the whole window, and one gather
        # of the whole window would store its 4-byte index per sample in the program).
        index = log_mel.stft.reflect_index(self.window_samples)
        edge = (index.shape[0] - self.window_samples) // 2
        self.register_buffer("pad_left", index[:edge].clone())
        self.register_buffer("pad_right", index[index.shape[0] - edge:].clone())
        self.body = front.body
        frames = (self.window_samples // 160 + 1) // 2  # whisper_even_mel pads an odd mel count by one frame
        table = self.body.embed_positions.weight.detach()
        if table.shape[0] < frames:
            raise ValueError(f"the encoder has {table.shape[0]} positional rows; a {self.window_samples}-sample window "
                             f"needs {frames}. Build it with TruncatedFoundationModel.for_window({self.window_samples}).")
        self.register_buffer("positions", table[:frames].clone().unsqueeze(0))
        attention = self.body.layers[0].self_attn
        self.heads, self.head_dim, self.scaling = int(attention.num_heads), int(attention.head_dim), attention.scaling

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        from edge_ser.fm.model import whisper_even_mel

        gain = level_gain(waveform, target=self.level_target, floor_power=self.level_floor_power)
        scaled = waveform * gain
        padded = torch.cat([torch.index_select(scaled, 1, self.pad_left), scaled,
                            torch.index_select(scaled, 1, self.pad_right)], dim=1)
        log_mel = whisper_even_mel(self.log_mel.of_power(self.log_mel.stft.power_of_padded(padded.reshape(1, 1, -1))))
        x = F.gelu(self.body.conv1(log_mel))
        x = F.gelu(self.body.conv2(x)).permute(0, 2, 1) + self.positions
        for block in self.body.layers:
            x, _, _ = bmm_block(block, x, heads=self.heads, head_dim=self.head_dim, scaling=self.scaling)
        return layer_norm(self.body.layer_norm, x)


def export_front(front: nn.Module, *, window_samples: int) -> nn.Module:
    """The delegate-friendly form of a fused model's front for ``window_samples`` inputs: a
    :class:`WindowedWhisperFM` for a Whisper front, the front itself otherwise (WavLM, HuBERT,
    MFBF0 keep their graphs)."""
    if getattr(getattr(front, "spec", None), "family", None) != "whisper":
        return front
    return WindowedWhisperFM(front, window_samples=window_samples).eval()


__all__ = ["WHISPER_FRONT_FORMS", "WindowedWhisperFM", "bmm_block", "export_front", "layer_norm", "level_gain"]

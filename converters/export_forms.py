"""Export-only forms of the TC-GRU head: a fixed window, no padding, and the GRU in a form each
backend can lower (STACK.md). They copy the weights of a trained :class:`edge_ser.train.model.TCGRU`
and compute the same outputs; training and evaluation never use them.

``nn.GRU`` does not delegate to XNNPACK and Core ML rejects ``aten.gru``, so the GRU is written
in one of two forms (:data:`GRU_FORMS`):

- ``"unrolled"`` (:class:`UnrolledGRU`): written out frame by frame with ``nn.Linear`` and
  elementwise ops. Core ML converts it; the graph grows with the window (about 15 nodes per
  frame and layer).
- ``"scan"`` (:class:`ScanGRU`): the input projections for all frames in one ``nn.Linear``,
  the recurrence as one ``torch.scan`` over frames whose body (one step) is lowered once.
  ExecuTorch emits the scan as a loop and XNNPACK takes the body (with
  :func:`edge_ser.converters.backend_executorch.scan_xnnpack_partitioner`): lowering takes
  seconds, whatever the window length. For int8, :meth:`_ScanGRULayer.store_hidden_int8`
  writes the step's hidden product as a dynamically quantized 1x1 conv.

:func:`export_head` picks the form; :meth:`edge_ser.converters.fused.FusedSER.with_gru_form`
applies it to a fused model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edge_ser.train.model import TCGRU, TCGRUOutput

__all__ = ["GRU_FORMS", "UnrolledGRU", "ScanGRU", "StatefulGRU", "TCGRUExport", "TCGRUStreamingHead", "export_head"]

GRU_FORMS: tuple[str, ...] = ("unrolled", "scan")
"""Export forms of the GRU (see the module docstring)."""


def export_head(model: TCGRU, *, frames: int, gru_form: str = "unrolled") -> "TCGRUExport":
    """An export-ready copy of ``model`` for a fixed, unpadded window of ``frames`` frames (eval mode, no dropout).

    gru_form: ``"unrolled"`` (any batch; Core ML) or ``"scan"`` (batch 1; ExecuTorch), see the module docstring.
    An ensemble (:class:`~edge_ser.train.ensemble.EnsembleTCGRU`) gets its wide head in that form and
    the same averaging of the members.
    """
    from edge_ser.train.ensemble import EnsembleTCGRU

    if isinstance(model, EnsembleTCGRU):
        return EnsembleExport(model, frames=frames, gru_form=gru_form)  # type: ignore[return-value]
    return TCGRUExport(model, frames=frames, gru_form=gru_form)


class EnsembleExport(nn.Module):
    """The export form of an ensemble head: the wide TC-GRU's export form, then the members' average
    (:func:`edge_ser.train.ensemble.combine_members`)."""

    def __init__(self, model: Any, *, frames: int, gru_form: str) -> None:
        super().__init__()
        self.wide = TCGRUExport(model.wide, frames=frames, gru_form=gru_form)
        self.n_members, self.n_dims, self.n_classes = model.n_members, model.n_dims, model.n_classes
        self.input_dim = model.input_dim

    def forward(self, x: torch.Tensor) -> TCGRUOutput:
        from edge_ser.train.ensemble import combine_members

        return combine_members(self.wide(x), n_members=self.n_members, n_dims=self.n_dims, n_classes=self.n_classes)


class _UnrolledGRULayer(nn.Module):
    """One GRU layer over a fixed number of frames, from the weights of one ``nn.GRU`` layer.

    PyTorch's GRU: r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    b_hr and b_hz can be folded into the input projections; b_hn cannot (it sits inside r * (...)).
    """

    def __init__(self, *, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                 frames: int) -> None:
        super().__init__()
        hidden = w_hh.shape[1]
        in_dim = w_ih.shape[1]
        self.frames = int(frames)
        w_ir, w_iz, w_in = w_ih.detach().clone().reshape(3, hidden, in_dim)
        w_hr, w_hz, w_hn = w_hh.detach().clone().reshape(3, hidden, hidden)
        b_ir, b_iz, b_in = b_ih.detach().clone().reshape(3, hidden)
        b_hr, b_hz, b_hn = b_hh.detach().clone().reshape(3, hidden)
        self.in_r = _linear(w_ir, b_ir + b_hr)
        self.in_z = _linear(w_iz, b_iz + b_hz)
        self.in_n = _linear(w_in, b_in)
        self.hid_r = _linear(w_hr, None)
        self.hid_z = _linear(w_hz, None)
        self.hid_n = _linear(w_hn, b_hn)
        # Step 0 has h = 0, where W_hn h + b_hn is just b_hn; kept (1, 1, H) so no reshape is needed.
        self.register_buffer("b_hn0", b_hn.reshape(1, 1, hidden).clone())

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, frames, in_dim) -> (B, frames, H); ``h0``: (B, 1, H) initial state (None: zeros)."""
        xr = self.in_r(x)
        xz = self.in_z(x)
        xn = self.in_n(x)
        xr0, xz0, xn0 = (_frames(t, 0, 1) for t in (xr, xz, xn))
        if h0 is None:
            r = torch.sigmoid(xr0)
            z = torch.sigmoid(xz0)
            n = torch.tanh(xn0 + r * self.b_hn0)
            h = n - z * n  # (1 - z) * n with h0 = 0
        else:
            r = torch.sigmoid(xr0 + self.hid_r(h0))
            z = torch.sigmoid(xz0 + self.hid_z(h0))
            n = torch.tanh(xn0 + r * self.hid_n(h0))
            h = n + z * (h0 - n)
        steps = [h]
        for t in range(1, x.shape[1]):
            r = torch.sigmoid(xr[:, t:t + 1] + self.hid_r(h))
            z = torch.sigmoid(xz[:, t:t + 1] + self.hid_z(h))
            n = torch.tanh(xn[:, t:t + 1] + r * self.hid_n(h))
            h = n + z * (h - n)
            steps.append(h)
        return torch.cat(steps, dim=1) if len(steps) > 1 else steps[0]


def _frames(t: torch.Tensor, start: int, length: int, *, dim: int = 1) -> torch.Tensor:
    """``t`` narrowed to ``length`` entries of ``dim`` from ``start``; ``t`` itself when that is all of
    it (a full-extent slice exports as an ``alias`` node, which Core ML's converter rejects)."""
    if start == 0 and length == t.shape[dim]:
        return t
    return t.narrow(dim, start, length)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class UnrolledGRU(nn.Module):
    """A multi-layer unidirectional ``nn.GRU`` (batch_first) unrolled over `fixed_frames` steps.

    Built from the state of an existing ``nn.GRU``; computes the same outputs with only
    ``nn.Linear``, slicing, sigmoid/tanh, add/mul/sub and ``torch.cat`` so that XNNPACK and
    Core ML take the whole recurrence. Input (B, fixed_frames, input_size) -> (B, fixed_frames, H).
    """

    def __init__(self, gru: nn.GRU, *, fixed_frames: int) -> None:
        super().__init__()
        _check_export_gru(gru, fixed_frames, "UnrolledGRU")
        self.fixed_frames = int(fixed_frames)
        self.layers = nn.ModuleList(
            _UnrolledGRULayer(**_gru_layer_weights(gru, i), frames=self.fixed_frames) for i in range(gru.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _gru_layer_weights(gru: nn.GRU, layer: int) -> dict[str, torch.Tensor]:
    """Copies of one ``nn.GRU`` layer's weights as the export layers' keyword arguments."""
    return {key: getattr(gru, f"{name}_l{layer}").detach().clone()
            for key, name in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}


def _check_export_gru(gru: nn.GRU, frames: int, form: str) -> None:
    if gru.bidirectional or not gru.batch_first or not gru.bias:
        raise ValueError(
            f"{form} needs a unidirectional batch_first nn.GRU with biases; got bidirectional="
            f"{gru.bidirectional}, batch_first={gru.batch_first}, bias={gru.bias}."
        )
    if int(frames) < 1:
        raise ValueError(f"fixed_frames={frames!r}; expected a positive number of frames.")


class _ScanGRULayer(nn.Module):
    """One GRU layer as ``torch.scan`` over frames (batch 1), from one ``nn.GRU`` layer's weights.

    Gate order r, z, n as in ``nn.GRU``. The input projections of every frame are one
    ``nn.Linear(in, 3H)`` (b_hr and b_hz folded into its bias); the scan body is one GRU step:
    ``h W_hh^T + [0, 0, b_hn]`` (as a 1x1 conv, see :meth:`_hidden_product`), the gates, and the
    new state. The carry is (1, H, 1, 1) and the per-step output a (1, H) copy of it (scan
    outputs may not alias).

    ``W_hh`` enters the body as a loop input when exported; the ExecuTorch lowering turns it
    back into a constant of the body (:func:`edge_ser.converters.backend_executorch.inline_scan_constants_pass`)
    so XNNPACK packs it once instead of at every frame.
    """

    def __init__(self, *, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor) -> None:
        super().__init__()
        hidden = int(w_hh.shape[1])
        self.hidden = hidden
        bias = b_ih.clone()
        bias[: 2 * hidden] += b_hh[: 2 * hidden]
        self.inp = _linear(w_ih, bias)
        self.register_buffer("w_hh", w_hh.detach().clone().reshape(3 * hidden, hidden, 1, 1))  # 1x1 conv weight
        b_hidden = torch.zeros(3 * hidden)
        b_hidden[2 * hidden:] = b_hh[2 * hidden:]
        self.register_buffer("b_hidden", b_hidden)
        self.hidden_int8 = False

    def store_hidden_int8(self) -> None:
        """Make the step's hidden-to-hidden product int8: ``W_hh`` stored int8 (symmetric, one
        scale per output row, the PT2E per-channel scheme) and the state quantized per step with
        a dynamic per-tensor range, written with the same quantize/dequantize ops PT2E emits, so
        XNNPACK runs it as one dynamically quantized 1x1 conv (the PT2E quantizer itself does
        not look inside loop bodies)."""
        from torchao.quantization.pt2e import quantize_pt2e  # noqa: F401  registers quantized_decomposed ops

        w = self.w_hh  # (3H, H, 1, 1)
        scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0  # (3H,)
        self.register_buffer("w_hh_q", torch.clamp(torch.round(w / scale[:, None, None, None]), -127, 127).to(torch.int8))
        self.register_buffer("w_hh_scale", scale.to(torch.float32))
        self.register_buffer("w_hh_zero", torch.zeros(w.shape[0], dtype=torch.int64))
        del self.w_hh
        self.hidden_int8 = True

    def _hidden_product(self, h: torch.Tensor) -> torch.Tensor:
        """``h W_hh^T + [0, 0, b_hn]`` for a (1, H, 1, 1) state, as a 1x1 ``conv2d``: unlike
        ``linear``, which lowering decomposes inside loop bodies, a conv stays one op that
        XNNPACK takes with a constant weight, in float32 or dynamically quantized int8."""
        if not self.hidden_int8:
            return F.conv2d(h, self.w_hh, self.b_hidden)
        qd = torch.ops.quantized_decomposed
        scale, zero = qd.choose_qparams.tensor(h, -128, 127, _DYNAMIC_QUANT_EPS, torch.int8)
        h_q = qd.quantize_per_tensor.tensor(h, scale, zero, -128, 127, torch.int8)
        h_dq = qd.dequantize_per_tensor.tensor(h_q, scale, zero, -128, 127, torch.int8)
        w = qd.dequantize_per_channel.default(self.w_hh_q, self.w_hh_scale, self.w_hh_zero, 0, -127, 127, torch.int8)
        return F.conv2d(h_dq, w, self.b_hidden)

    def _step(self, h: torch.Tensor, gx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU step: state (1, H, 1, 1) and input gates (1, 3H, 1, 1) -> (new state, (1, H) copy)."""
        hidden = self.hidden
        gh = self._hidden_product(h)  # (1, 3H, 1, 1)
        rz = torch.sigmoid(gx[:, : 2 * hidden] + gh[:, : 2 * hidden])
        r, z = rz[:, :hidden], rz[:, hidden:]
        n = torch.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        h_next = n + z * (h - n)
        # A copy in another shape: scan outputs may not alias the carry, and a same-shape
        # clone is folded away in lowering, leaving XNNPACK one node as two outputs.
        return h_next, h_next.reshape(1, hidden).clone()

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """x: (1, frames, in_dim) -> (1, frames, H); ``h0``: (1, 1, H) initial state (None: zeros).

        One frame runs as the step's ops directly (a one-step loop would only add loop overhead), except
        with the int8 hidden product: XNNPACK's layout pass follows a dynamically quantized input back
        through slices and reshapes to the graph input (the 3-D ``h_in`` of a streaming head) and
        fails to make that 4-D input channels-last, so the int8 step always runs inside the loop,
        where its input is the loop's 4-D carry."""
        from torch._higher_order_ops.scan import scan  # torch's scan HOP (no public alias in 2.13)

        hidden = self.hidden
        # (frames, 1, 3H, 1, 1): scan runs over dim 0; each step sees (1, 3H, 1, 1), the layout of
        # the 1x1 conv, so the body has no reshape between its ops.
        gates_x = self.inp(x).reshape(-1, 1, 3 * hidden, 1, 1)
        init = torch.zeros(1, hidden, 1, 1, dtype=x.dtype) if h0 is None else h0.reshape(1, hidden, 1, 1)
        if x.shape[1] == 1 and not self.hidden_int8:
            _, out = self._step(init, gates_x.reshape(1, 3 * hidden, 1, 1))  # a view; gates_x[0] is a copy
            return out.reshape(1, 1, hidden)
        _, outputs = scan(self._step, init, gates_x)  # (frames, 1, H)
        return outputs.reshape(1, -1, hidden)


_DYNAMIC_QUANT_EPS = 2.0 ** -12
"""eps of the dynamic activation range, as XNNPACK's PT2E dynamic config uses."""


class ScanGRU(nn.Module):
    """A multi-layer unidirectional ``nn.GRU`` (batch_first) as one ``torch.scan`` per layer.

    Same outputs as the source ``nn.GRU`` for batch 1 and `fixed_frames` frames; the exported
    graph has one scan per layer whose body is a single GRU step, so its size does not grow
    with the window. Input (1, fixed_frames, input_size) -> (1, fixed_frames, H).
    """

    def __init__(self, gru: nn.GRU, *, fixed_frames: int) -> None:
        super().__init__()
        _check_export_gru(gru, fixed_frames, "ScanGRU")
        self.fixed_frames = int(fixed_frames)
        self.layers = nn.ModuleList(
            _ScanGRULayer(**_gru_layer_weights(gru, i)) for i in range(gru.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != 1:
            raise ValueError(
                f"ScanGRU input has shape {tuple(x.shape)}; expected (1, frames, features): the scan form runs "
                "batch 1 (one window per call). Use UnrolledGRU or nn.GRU for batches."
            )
        for layer in self.layers:
            x = layer(x)
        return x


class TCGRUExport(nn.Module):
    """Export-ready TC-GRU for a fixed, unpadded window (eval-mode, weights copied from a :class:`TCGRU`).

    forward(x (B, frames, F)) -> :class:`TCGRUOutput` with the same values as ``TCGRU(x, None)``.
    The normalisation is applied as ``(x - mean) * (1 / std)`` and the time mean as ``sum * (1 / frames)``
    (XNNPACK's mean wants 4-D input).
    """

    def __init__(self, model: TCGRU, *, frames: int, gru_form: str = "unrolled") -> None:
        super().__init__()
        if int(frames) < 1:
            raise ValueError(f"frames={frames!r}; expected the fixed window length in feature frames (>= 1).")
        if gru_form not in GRU_FORMS:
            raise ValueError(f"gru_form={gru_form!r}; expected one of {', '.join(GRU_FORMS)}.")
        self.gru_form = gru_form
        self.frames = int(frames)
        self.input_dim = model.input_dim
        self.register_buffer("feat_mean", model.feat_mean.detach().clone())
        self.register_buffer("feat_inv_std", 1.0 / model.feat_std.detach().clone())
        self.conv = _copy_module(model.conv)
        gru_cls = ScanGRU if gru_form == "scan" else UnrolledGRU
        self.gru = gru_cls(model.gru, fixed_frames=self.frames)
        self.embedding = _copy_module(model.embedding)
        self.avd_head = _copy_module(model.avd_head)
        self.class_head = _copy_module(model.class_head)
        self.inv_frames = 1.0 / self.frames
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> TCGRUOutput:
        """x: (B, frames, F) float32 -> TCGRUOutput(avd (B, 3), logits (B, 9), embedding (B, E))."""
        x = (x - self.feat_mean) * self.feat_inv_std
        # ReLU after the transpose (same values): a conv whose only user is a ReLU is left float32
        # by XNNPACK's dynamic int8 quantizer, which has no conv+relu pattern.
        h = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        out = self.gru(h)
        pooled = torch.sum(out, dim=1) * self.inv_frames
        embedding = torch.relu(self.embedding(pooled))
        return TCGRUOutput(avd=self.avd_head(embedding), logits=self.class_head(embedding), embedding=embedding)


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


# ---------------------------------------------------------------------------------------
# Streaming: the head over one hop of new frames, its state carried between calls


class StatefulGRU(nn.Module):
    """A multi-layer ``nn.GRU`` (batch 1, batch_first) that starts from a given state and returns
    its final state: ``forward(x (1, T, in), h0 (L, 1, H)) -> (out (1, T, H), h_T (L, 1, H))``.

    ``gru_form``: ``"native"`` (an ``nn.GRU`` copy: ONNX exports one GRU op per call),
    ``"unrolled"`` (per frame: Core ML) or ``"scan"`` (``torch.scan``: ExecuTorch); same values.
    """

    def __init__(self, gru: nn.GRU, *, gru_form: str) -> None:
        super().__init__()
        _check_export_gru(gru, 1, "StatefulGRU")
        if gru_form not in ("native", *GRU_FORMS):
            raise ValueError(f"gru_form={gru_form!r}; expected one of native, {', '.join(GRU_FORMS)}.")
        self.gru_form = gru_form
        self.num_layers = int(gru.num_layers)
        self.hidden = int(gru.hidden_size)
        if gru_form == "native":
            self.native = _copy_module(gru).eval()
        else:
            layer_cls = _ScanGRULayer if gru_form == "scan" else _UnrolledGRULayerWithState
            self.layers = nn.ModuleList(layer_cls(**_gru_layer_weights(gru, i)) for i in range(self.num_layers))

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gru_form == "native":
            return self.native(x, h0)
        finals = []
        for i, layer in enumerate(self.layers):
            x = layer(x, _frames(h0, i, 1, dim=0))
            # A layer's outputs are its states: the last one is its final state.
            finals.append(_frames(x, x.shape[1] - 1, 1))
        return x, torch.cat(finals, dim=0) if len(finals) > 1 else finals[0].clone()


class _UnrolledGRULayerWithState(_UnrolledGRULayer):
    """:class:`_UnrolledGRULayer` for any number of frames (the frame count comes from the input)."""

    def __init__(self, **weights: torch.Tensor) -> None:
        super().__init__(**weights, frames=1)


class TCGRUStreamingHead(nn.Module):
    """The TC-GRU over one hop: the newest ``hop_frames`` feature frames of a window, with the
    recurrent state, the conv's context and the running time pool carried between calls.

    ``forward(features (1, F, N), h_in (L, 1, H), ctx_in (1, 2, N), pool_in (1, H), count_in (1, 1))
    -> (avd, logits, embedding, h_out, ctx_out, pool_out, count_out)``; all states start at zero.

    The conv before the GRU sees one frame to each side, so the head runs one frame behind the
    audio: a call finishes the frame whose look-ahead has just arrived and the ``hop_frames - 1``
    before the newest, and runs the newest with zero look-ahead (the "same" padding the offline
    head gives its last frame) for the estimate only; the next call redoes that frame with its real
    neighbour. ``ctx`` holds the last two normalised frames; ``pool``/``count`` the sum and number
    of finished GRU outputs. The estimate pools finished outputs plus the provisional newest one,
    so after K calls it equals :class:`~edge_ser.train.model.TCGRU` on the K hops' frames joined
    (eval mode, no padding). On the first call (``count_in == 0``) the frame before the stream is
    the zero left padding: its step is discarded (the state and pool keep their zeros).
    """

    def __init__(self, model: TCGRU, *, hop_frames: int, gru_form: str = "scan") -> None:
        super().__init__()
        if isinstance(hop_frames, bool) or int(hop_frames) != hop_frames or hop_frames < 2:
            raise ValueError(f"hop_frames={hop_frames!r}; expected at least 2 feature frames per hop "
                             "(a longer hop_s).")
        self.hop_frames = int(hop_frames)
        self.input_dim = model.input_dim
        self.gru_layers = model.gru_layers
        self.gru_hidden = model.gru_hidden
        self.n_classes = model.n_classes
        self.register_buffer("feat_mean", model.feat_mean.detach().clone())
        self.register_buffer("feat_inv_std", 1.0 / model.feat_std.detach().clone())
        self.register_buffer("lookahead", torch.zeros(1, 1, model.input_dim))  # the zero right padding
        conv = _copy_module(model.conv)
        conv.padding = (0,)  # context comes from ctx_in and the look-ahead frame instead
        self.conv = conv
        self.gru = StatefulGRU(model.gru, gru_form=gru_form)
        self.embedding = _copy_module(model.embedding)
        self.avd_head = _copy_module(model.avd_head)
        self.class_head = _copy_module(model.class_head)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the carried states, by input name (``*_in``)."""
        return {"h_in": (self.gru_layers, 1, self.gru_hidden), "ctx_in": (1, 2, self.input_dim),
                "pool_in": (1, self.gru_hidden), "count_in": (1, 1)}

    def forward(self, features: torch.Tensor, h_in: torch.Tensor, ctx_in: torch.Tensor, pool_in: torch.Tensor,
                count_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.hop_frames
        new = (_frames(features, features.shape[1] - m, m) - self.feat_mean) * self.feat_inv_std  # (1, m, N)
        sequence = torch.cat([ctx_in, new, self.lookahead], dim=1)  # (1, m + 3, N)
        # ReLU after the transpose, as in TCGRUExport (XNNPACK's dynamic int8 has no conv+relu pattern).
        conv = torch.relu(self.conv(sequence.transpose(1, 2)).transpose(1, 2))  # (1, m + 1, C)
        started = torch.clamp(count_in, 0.0, 1.0)  # (1, 1): 0 on the first call only
        out0, h0 = self.gru(conv[:, 0:1], h_in)
        h1 = h_in + started * (h0 - h_in)  # the first call's step 0 is the zero padding's: discarded
        out_mid, h_out = self.gru(conv[:, 1:m], h1)
        out_new, _ = self.gru(conv[:, m:m + 1], h_out)  # the newest frame, provisional
        # reshape, not out0[:, 0]: a select exports as a portable copy, a reshape as a free view.
        hidden = out0.shape[2]
        pool_out = pool_in + started * out0.reshape(1, hidden) + torch.sum(out_mid, dim=1)
        count_out = count_in + started + float(m - 1)
        pooled = (pool_out + out_new.reshape(1, hidden)) / (count_out + 1.0)
        embedding = torch.relu(self.embedding(pooled))
        ctx_out = _frames(new, m - 2, 2)
        return (self.avd_head(embedding), self.class_head(embedding), embedding, h_out, ctx_out, pool_out,
                count_out)

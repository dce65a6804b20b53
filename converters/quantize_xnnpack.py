"""XNNPACK int8 (the ExecuTorch target's quantization step): PT2E with per-channel int8 weights
and activations quantized dynamically per call, prepared on calibration utterances, plus the
graph rewrites that let XNNPACK take the int8 ops (convs as linears or 2-D convs, folded bias
chains). :class:`edge_ser.converters.backend_executorch.ExecuTorchBackend` calls it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_ser.converters.quantize import quantize_pt2e

DYNAMIC = True
"""Dynamic int8 activations for XNNPACK. Static per-tensor activation ranges cannot hold the
power spectrum inside the waveform-in graph (its values span ~10 decades, int8 spans ~2), so a
statically quantized STFT/mel front end loses most of the log-mel; the dynamic config annotates
linear layers and 2-D convolutions, and STACK.md measured it faster (14.5 vs 19.1 ms) and closer
(cosine 0.99994 vs 0.99992) than static int8 on a Whisper-base-sized encoder.

The TC-GRU's ``nn.Conv1d`` is rewritten as an equivalent height-1 ``Conv2d``
(:func:`conv1d_as_conv2d`) so the dynamic config quantizes it too. The foundation model's own
convolutions (Whisper's two input convs, WavLM/HuBERT's feature-extractor convs) become
:class:`Conv1dAsLinear` instead: XNNPACK quantizes a linear layer's input with one range per
row (per frame), its convolutions with one range per window. On the RAVDESS Whisper-base
layer-1 run, Whisper's input convs as int8 convs flipped 1 of 24 validation decisions (probs
PSNR 36-37 dB); as per-frame int8 linears they changed no decisive test decision (240
held-out windows: decisive top-1 agreement 0.996 as with the convs float32, probs PSNR 36.2
vs 36.7 dB) and the artifact shrank from 9.18 to 6.46 MB. The front end's fixed STFT/mel
filters stay float32.
"""

FOUNDATION_CONV_PREFIX = "front.body."
"""Module-name prefix (in the fused model) of the foundation model's own layers: its ``Conv1d``
layers become :class:`Conv1dAsLinear` in int8 artifacts (one int8 range per frame). The front
end's fixed STFT/mel/pitch filters are functional convs and stay float32."""


def _xnnpack_quantizer(*, keep_scalar_operands: bool, module_names: Sequence[str] | None) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    class _ScalarKeepingQuantizer(XNNPACKQuantizer):
        # The stock transform turns scalar operands of add/mul into float tensor attributes;
        # in graphs with integer index math (WavLM's relative-position buckets) that turns
        # int64 indices into floats and calibration fails (STACK.md). Scalars then simply
        # stay unquantized.
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return model

    quantizer = _ScalarKeepingQuantizer() if keep_scalar_operands else XNNPACKQuantizer()
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=DYNAMIC)
    if module_names is None:
        quantizer.set_global(config)
    else:
        for name in module_names:
            quantizer.set_module_name(name, config)
    return quantizer


class Conv1dAs2d(nn.Module):
    """An ``nn.Conv1d`` computed as ``Conv2d`` over a height-1 image (same weights, same outputs).

    XNNPACK's dynamically quantized convolution is 2-D only (the PT2E quantizer skips 1-D
    convs under a dynamic config), so this is how a Conv1d gets int8 weights there.
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"Conv1d with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}; expected numeric zero "
                "padding (the only kind rewritten as Conv2d)."
            )
        self.conv = nn.Conv2d(
            conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
            padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.unsqueeze(2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        # Callers read these off the Conv1d (transformers' Whisper checks input length with stride).
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


class Conv1dAsLinear(nn.Module):
    """An ``nn.Conv1d`` (groups 1, zero padding) computed as a ``Linear`` over stacked taps
    (im2col): the ``kernel_size`` shifted, strided views of the input are concatenated along
    channels and one ``Linear(in * k, out)`` maps each output frame. Same outputs.

    Why: XNNPACK's dynamically quantized linear takes one int8 range per row, here per output
    frame, while its quantized conv takes one range for the whole window. A foundation model's
    input convs (Whisper's two convs after the log-mel) lose decisions with one range per window
    and keep them with one per frame (see :data:`DYNAMIC`).
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"Conv1d with groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}; "
                "expected groups=1 and numeric zero padding (the only kind rewritten as a Linear)."
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        k = conv.kernel_size[0]
        self.linear = nn.Linear(conv.in_channels * k, conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            # Column order of the stacked input: tap 0's channels, then tap 1's, ...
            self.linear.weight.copy_(conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T) -> (B, out, T_out), as the source conv."""
        (k,), (s,), (p,), (d,) = self.kernel_size, self.stride, self.padding, self.dilation
        if p:
            x = torch.nn.functional.pad(x, (p, p))
        frames = (x.shape[-1] - d * (k - 1) - 1) // s + 1
        if s > 1 and d == 1:
            return self.linear(self._strided_taps(x, frames)).transpose(1, 2)
        taps = [x[:, :, j * d: j * d + s * (frames - 1) + 1: s] for j in range(k)]
        stacked = torch.cat(taps, dim=1) if k > 1 else taps[0]
        return self.linear(stacked.transpose(1, 2)).transpose(1, 2)

    def _strided_taps(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The stacked taps ``(B, frames, C * k)`` of a strided conv from unit-stride slices.

        A strided slice exports as a portable ``slice_copy`` (XNNPACK's slice takes unit steps
        only): three copies of the window between delegate calls for Whisper's conv2. Here the
        time axis is folded into rows of ``s`` frames, ``(B, rows, s * C)``, so tap ``j = q * s + r``
        is rows ``q .. q + frames - 1`` and channel block ``r``: unit-stride slices. Same values in
        the same column order as the strided taps, so the same outputs."""
        (k,), (s,) = self.kernel_size, self.stride
        channels = x.shape[1]
        rows = frames + (k - 1) // s
        x = x.transpose(1, 2)  # (B, T, C)
        if x.shape[1] < rows * s:
            x = torch.nn.functional.pad(x, (0, 0, 0, rows * s - x.shape[1]))
        elif x.shape[1] > rows * s:  # a slice of the whole exports as a copy: only when it drops frames
            x = x[:, : rows * s]
        folded = x.reshape(x.shape[0], rows, s * channels)
        taps = [folded[:, j // s: j // s + frames, (j % s) * channels: (j % s + 1) * channels] for j in range(k)]
        return torch.cat(taps, dim=2) if k > 1 else taps[0]


def conv1d_as_conv2d(module: nn.Module, *, skip: Sequence[str] = (),
                     as_linear: Sequence[str] = ()) -> tuple[nn.Module, int]:
    """A deep copy of `module` with its ``nn.Conv1d`` layers rewritten for XNNPACK's dynamic
    int8: those whose qualified name starts with one of `as_linear` (and have groups 1) become
    :class:`Conv1dAsLinear`, those starting with one of `skip` (or grouped ones under
    `as_linear`) stay as they are, all others become :class:`Conv1dAs2d`. Returns (copy,
    number rewritten). The original (which may share weights with a reference) is untouched."""
    import copy

    clone = copy.deepcopy(module)
    replaced = 0
    for parent_name, parent in list(clone.named_modules()):
        for name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not nn.Conv1d:
                continue
            if any(qualified.startswith(prefix) for prefix in as_linear):
                if child.groups == 1:
                    setattr(parent, name, Conv1dAsLinear(child))
                    replaced += 1
            elif not any(qualified.startswith(prefix) for prefix in skip):
                setattr(parent, name, Conv1dAs2d(child))
                replaced += 1
    return clone, replaced


_FOLDABLE = ("aten.cat.", "aten.split.", "aten.split_with_sizes.", "aten.chunk.", "aten.slice.", "getitem")


def fold_constant_biases(graph: torch.fx.GraphModule) -> int:
    """Fold cat/split/chunk/slice/getitem chains over constants into constants, in place;
    returns how many nodes were folded.

    transformers' WavLM and HuBERT attention passes ``torch.cat((b_q, b_k, b_v))`` to
    ``multi_head_attention_forward``, which chunks it again, so the q/k/v ``linear`` biases
    are computed tensors. XNNPACK delegates a quantized linear only with a constant bias: in
    WavLM-large cut at block 12, 36 int8 linears ran as portable ``addmm`` on dequantized
    weights because of this. Only these shape-moving ops are folded (no arithmetic, nothing
    that grows a tensor), so folding cannot change values or inflate the artifact.
    """
    import operator

    def attribute(target: str) -> Any:
        owner = graph
        for part in target.split("."):
            owner = getattr(owner, part, None)
        return owner

    def constant(node: Any) -> bool:
        return node.op == "get_attr" and isinstance(attribute(node.target), torch.Tensor)

    folded = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        name = "getitem" if node.target is operator.getitem else str(node.target)
        if not name.startswith(_FOLDABLE):
            continue
        inputs = node.all_input_nodes
        if not inputs or not all(constant(n) or (n.op == "call_function" and n.meta.get("_edge_ser_folded"))
                                 for n in inputs):
            continue
        env = {n: attribute(n.target) if constant(n) else n.meta["_edge_ser_value"] for n in inputs}
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        value = node.target(*args, **kwargs)
        if isinstance(value, torch.Tensor):
            attr = f"_folded_{node.name}"
            graph.register_buffer(attr, value.detach().clone().contiguous())
            with graph.graph.inserting_before(node):
                replacement = graph.graph.get_attr(attr)
            replacement.meta = dict(node.meta)
            node.replace_all_uses_with(replacement)
            graph.graph.erase_node(node)
            folded += 1
        else:  # a tuple/list (split, chunk): keep the node, remember its value for its getitems
            node.meta["_edge_ser_folded"] = True
            node.meta["_edge_ser_value"] = value
    graph.graph.eliminate_dead_code()  # folded split/chunk nodes nobody reads any more
    graph.recompile()
    return folded


def export_folded(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """``module`` exported for an XNNPACK lowering (inference graph, constant bias chains folded,
    :func:`fold_constant_biases`), as a GraphModule to export again or to quantize. ``example``:
    the one input, or a tuple of all inputs (a streaming model's hop and states)."""
    examples = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        graph = torch.export.export(module.eval(), examples, strict=False).module()
    fold_constant_biases(graph)
    return graph


def quantize_pt2e_xnnpack_int8(
    module: torch.nn.Module,
    *,
    calibration_inputs: Sequence[tuple[torch.Tensor, ...]],
    keep_scalar_operands: bool = True,
    module_names: Sequence[str] | None = None,
) -> torch.nn.Module:
    """int8 for XNNPACK via PT2E: per-channel symmetric weights; activations dynamic (:data:`DYNAMIC`).

    ``module``: the fused model (``(1, window_samples)`` -> outputs) or its streaming form (hop
    and states -> outputs and states). ``calibration_inputs``: one tuple of ``module``'s inputs
    per call, from real utterances (:func:`edge_ser.converters.pipeline.calibration_inputs`: one
    window each, or the hops of the utterances streamed with their states). Returns the converted
    (quantize/dequantize-annotated) module, ready for ``torch.export`` and lowering.

    ``module_names``: quantize only these submodules (``None`` = the whole graph, the default).
    Quantizing only ``("front",)`` was tried to keep the head float32; XNNPACK lowering then
    failed on the tiny Whisper test model ("Weight and Input should both be quantized").
    """
    calibration_inputs = [tuple(inputs) for inputs in calibration_inputs]
    if not calibration_inputs:
        raise ValueError("got no calibration inputs; expected the calls of real training utterances "
                         "(edge_ser.converters.pipeline.calibration_inputs).")
    module, _ = conv1d_as_conv2d(module.eval(), as_linear=(FOUNDATION_CONV_PREFIX,))
    module.requires_grad_(False)  # a copy; without this, export traces the scan's backward too
    for layer in module.modules():  # the scan GRU's hidden weights: int8 storage (see store_hidden_int8)
        if hasattr(layer, "store_hidden_int8"):
            layer.store_hidden_int8()
    graph = export_folded(module, calibration_inputs[0])
    quantizer = _xnnpack_quantizer(keep_scalar_operands=keep_scalar_operands, module_names=module_names)
    # Loop bodies (the scan GRU step) are not annotated: an observer inside a loop body cannot be
    # traced, and the step's int8 form is written by the model itself (store_hidden_int8). Nor are
    # the top-level ops that already read such an int8 form (the streaming head runs single GRU
    # steps outside the loop): annotated again, their dequantized weight would get a quantize op
    # that stays in the program at run time (ExecuTorch's portable kernel then aborted on its scale).
    top_level = graph.graph
    quantizer.set_filter_function(lambda node: node.graph is top_level and not _reads_int8_form(node))
    return quantize_pt2e(graph, quantizer, calibration_inputs)


def _reads_int8_form(node: torch.fx.Node) -> bool:
    """Whether ``node`` takes an input that the model already dequantizes itself (``store_hidden_int8``)."""
    return any(arg.op == "call_function" and "dequantize" in str(arg.target) for arg in node.all_input_nodes)

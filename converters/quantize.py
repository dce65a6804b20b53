"""Quantization: PT2E int8 before lowering (per-channel int8 weights, activations quantized
dynamically per call, prepared on calibration utterances) and the weight-only / dynamic schemes
the backends apply to their own formats.

Calibration always uses real utterances (a list of waveforms from the run's training
split), never one random tensor: activation ranges from noise are not the ranges of speech.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from edge_ser.progress import progress_bar

from edge_ser.errors import AudioError

log = logging.getLogger(__name__)

MIN_CALIBRATION_UTTERANCES = 2
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


def calibration_tensors(waveforms: Sequence[np.ndarray | torch.Tensor], *, window_samples: int) -> list[torch.Tensor]:
    """Check and convert calibration/validation waveforms to ``(1, window_samples)`` float32 tensors.

    Each waveform must already be mono and exactly one window long (crop/pad with
    :func:`edge_ser.converters.fused.fit_to_window`).
    """
    tensors = []
    for i, wave in enumerate(waveforms):
        t = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1) if not isinstance(wave, torch.Tensor) \
            else wave.detach().to(torch.float32).reshape(1, -1)
        if t.shape[1] != window_samples:
            raise AudioError(
                f"waveform {i} has {t.shape[1]} samples; expected exactly {window_samples} (one window). "
                "Crop/pad with edge_ser.converters.fused.fit_to_window(wave, window_samples)."
            )
        if not torch.isfinite(t).all():
            raise AudioError(f"waveform {i} contains NaN or inf; expected finite audio samples.")
        tensors.append(t)
    return tensors


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
        taps = [x[:, :, j * d: j * d + s * (frames - 1) + 1: s] for j in range(k)]
        stacked = torch.cat(taps, dim=1) if k > 1 else taps[0]
        return self.linear(stacked.transpose(1, 2)).transpose(1, 2)


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
    calibration_waveforms: Sequence[np.ndarray | torch.Tensor],
    window_samples: int,
    keep_scalar_operands: bool = True,
    module_names: Sequence[str] | None = None,
) -> torch.nn.Module:
    """int8 for XNNPACK via PT2E: per-channel symmetric weights; activations dynamic (:data:`DYNAMIC`).

    ``module``: the fused model, ``(1, window_samples)`` -> outputs. Returns the converted
    (quantize/dequantize-annotated) module, ready for ``torch.export`` and lowering.

    ``module_names``: quantize only these submodules (``None`` = the whole graph, the default).
    Quantizing only ``("front",)`` was tried to keep the head float32; XNNPACK lowering then
    failed on the tiny Whisper test model ("Weight and Input should both be quantized").
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    tensors = calibration_tensors(calibration_waveforms, window_samples=window_samples)
    if len(tensors) < MIN_CALIBRATION_UTTERANCES:
        raise ValueError(
            f"got {len(tensors)} calibration waveforms; expected at least {MIN_CALIBRATION_UTTERANCES} real "
            "utterances from the run's training split (e.g. --calibration-utterances 32)."
        )
    module, _ = conv1d_as_conv2d(module.eval(), as_linear=(FOUNDATION_CONV_PREFIX,))
    module.requires_grad_(False)  # a copy; without this, export traces the scan's backward too
    for layer in module.modules():  # the scan GRU's hidden weights: int8 storage (see store_hidden_int8)
        if hasattr(layer, "store_hidden_int8"):
            layer.store_hidden_int8()
    graph = export_folded(module, tensors[0])
    quantizer = _xnnpack_quantizer(keep_scalar_operands=keep_scalar_operands, module_names=module_names)
    # Loop bodies (the scan GRU step) are not annotated: an observer inside a loop body cannot be
    # traced, and the step's int8 form is written by the model itself (store_hidden_int8).
    top_level = graph.graph
    quantizer.set_filter_function(lambda node: node.graph is top_level)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for t in progress_bar(tensors, desc="calibrating int8", unit="utt", leave=False):
            prepared(t)
    return convert_pt2e(prepared)


ONNX_QUANTIZED_OPS: tuple[str, ...] = ("MatMul", "Gemm")
"""Dynamic int8 covers the matmuls (transformer blocks, heads); convolutions, which hold the
STFT/mel/pitch front end, stay float32 for the reason given at :data:`DYNAMIC` (the same
policy as the ExecuTorch int8 path), and so do the matmuls fed by a GELU
(:func:`onnx_float_matmuls`)."""


def onnx_float_matmuls(model: Any) -> list[str]:
    """Names of the ``MatMul`` nodes whose input comes straight from a ``Gelu``: the
    feed-forward down-projections of the transformer blocks.

    ONNX Runtime's dynamic quantization gives each activation tensor one int8 range for the
    whole window (XNNPACK's takes one per row). A GELU output (2048 wide in Whisper-base) is
    heavy-tailed, so one range spends most levels on a few outliers. Measured on the RAVDESS
    Whisper-base layer-1 run (fold 0, 8 validation + 72 test windows): quantizing every MatMul
    flipped 1 of 8 validation decisions (probs PSNR 31.3 dB, decisive top-1 agreement 0.960);
    keeping only the down-projection float32: 0 of 8, 1.000 on 75 decisive windows, 35.9 dB.
    Keeping q/k/v/out or the head's Gemms float32 instead did not help (0.947-0.987).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Gelu":
            names.append(node.name)
    return names


ONNX_WEIGHT_BITS = 7
"""int8 weights on 7 bits ([-64, 64], onnxruntime's ``reduce_range``), so that no CPU's kernel can
saturate. ONNX Runtime's uint8 x int8 kernel on x86 without VNNI (AVX2, AVX-512 without VNNI)
adds pairs of products in int16 with saturation; with 8-bit weights one pair can reach
255 * 127 * 2 = 64770 > 32767, and on the demo's Whisper-base run that turned a passing artifact
(VNNI machine) into probs PSNR 20.7 dB / top-1 0.875 (AVX2 machine). With 7 bits a pair is at
most 255 * 64 * 2 = 32640, so every kernel computes the same exact int32 sum
(:func:`edge_ser.converters.int8_emulation.int16_pair_headroom` checks it on every artifact).
Measured against the alternatives on Whisper-base cut after block 3 + paper-size head, 3 s,
AVX2-only AMD EPYC, 2 threads, one run (docs/parity.md): uint8 x uint8 weights (also exact
everywhere) are a little closer to float (probs PSNR 91.9 vs 85.5 dB, embedding cosine 0.99995
vs 0.99986) but 7 % slower here and cannot use VNNI's uint8 x int8 instruction at all; 8-bit
uint8 x int8 saturates here (cosine 0.9915)."""


def quantize_onnx_dynamic_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Weights int8 per output channel on :data:`ONNX_WEIGHT_BITS` bits, activations quantized at
    run time (no calibration); returns what stayed float32 (``{"float_matmuls": [...]}``), the
    weight bits and the int16-pair headroom. Raises if any kernel could saturate."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edge_ser.converters.int8_emulation import int16_pair_headroom

    keep_float = onnx_float_matmuls(onnx.load(str(src)))
    quantize_dynamic(
        model_input=str(src), model_output=str(dst), per_channel=True, weight_type=QuantType.QInt8,
        reduce_range=ONNX_WEIGHT_BITS == 7, op_types_to_quantize=list(ONNX_QUANTIZED_OPS), nodes_to_exclude=keep_float,
    )
    headroom = int16_pair_headroom(onnx.load(str(dst)))
    if headroom["saturation_possible"]:
        raise RuntimeError(
            f"ONNX int8 model {dst}: a uint8 x int8 pair can reach {headroom['worst_pair_sum']} > 32767 "
            f"(node {headroom['worst_node']}), which saturates on x86 CPUs without VNNI. Expected 7-bit weights; "
            "this is a bug in the quantization settings.")
    return {"float_matmuls": keep_float, "weight_bits": ONNX_WEIGHT_BITS, "int16_pair_headroom": headroom}


COREML_WEIGHT_THRESHOLD = 2048
"""Core ML compresses weight tensors with at least this many elements; biases and other
small tensors stay fp32 (they are a negligible share of the size and sensitive to error)."""


def compress_coreml_weights(mlmodel: Any, *, scheme: str) -> Any:
    """Weight compression of a Core ML ML Program: ``"int8"`` (linear symmetric, per output
    channel) or ``"palette4"`` (4-bit k-means palettization, one 16-entry table per tensor)."""
    import coremltools.optimize.coreml as cto

    if scheme == "int8":
        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=COREML_WEIGHT_THRESHOLD,
        )
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    if scheme == "palette4":
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=COREML_WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    raise ValueError(f"unknown Core ML weight compression {scheme!r}; expected 'int8' or 'palette4'.")

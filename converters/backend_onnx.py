"""ONNX target, converter side: ``torch.export`` graph -> ``model.onnx`` (opset from the dynamo
exporter), checked by ``onnx.checker``; int8 = ONNX Runtime's dynamic quantization
(:func:`quantize_onnx_dynamic_int8`, below). The file name, precisions, tolerances and runner are
declared in :mod:`edge_ser.runtime.target_onnx`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.converters.backend_base import DEFAULT_IO_NAMES, Backend, IONames, Lowered, PrecisionSpec
from edge_ser.runtime import target_onnx


class OnnxBackend(Backend):
    target = target_onnx.TARGET
    gru_form = "native"  # ONNX has a native GRU op; the per-frame graph only slows export (minutes at 3 s)

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import torch

        return {"name": self.name, "version": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__}

    def lower(self, exported: Any, *, precision: PrecisionSpec, out_dir: Path,
              io_names: IONames = DEFAULT_IO_NAMES) -> Lowered:
        import onnx
        import torch

        start = time.perf_counter()
        out_dir = Path(out_dir)
        final = out_dir / self.artifact_file
        fp32_path = final if precision.name == "fp32" else out_dir / ".fp32.onnx"
        onnx_program = torch.onnx.export(exported, (), dynamo=True, external_data=False, verbose=False)
        onnx_program.save(str(fp32_path), external_data=False)
        # Named after the export: the exporter names values after FX nodes, and a node called
        # e.g. "embedding" (a positional-embedding lookup) would collide with the output name.
        model = onnx.load(str(fp32_path))
        name_io(model, inputs=list(io_names[0]), outputs=list(io_names[1]))
        onnx.save(model, str(fp32_path))
        quantization: dict[str, Any] = {}
        if precision.name == "int8":
            quantization = quantize_onnx_dynamic_int8(fp32_path, final)
            fp32_path.unlink()
        model = onnx.load(str(final))
        onnx.checker.check_model(model)
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return Lowered(files=(self.artifact_file,), info={
            "lowering_s": round(time.perf_counter() - start, 3),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            **quantization,
        })


    def kernel_path_runners(self, artifact_dir: Path, *, precision: PrecisionSpec,
                            num_threads: int = 1) -> dict[str, Any]:
        """int8: the artifact rewritten to each CPU class's int8 accumulation
        (:mod:`edge_ser.converters.int8_emulation`), so parity is checked for every kernel path
        ONNX Runtime dispatches to, not only this CPU's."""
        if precision.name != "int8":
            return {}
        import onnx

        from edge_ser.converters.int8_emulation import emulate_int8_accumulation
        from edge_ser.cpu_features import INT8_ACCUMULATION_PATHS
        from edge_ser.runtime.target_onnx import OnnxRunner

        model = onnx.load(str(Path(artifact_dir) / self.artifact_file))
        return {path: OnnxRunner(emulate_int8_accumulation(model, path).SerializeToString(),
                                 threads=num_threads)
                for path in INT8_ACCUMULATION_PATHS}


def name_io(model: Any, *, inputs: list[str], outputs: list[str]) -> None:
    """Rename an ONNX graph's inputs/outputs in place, first moving any internal value that
    already uses one of the new names out of the way."""
    graph = model.graph
    if len(graph.input) != len(inputs) or len(graph.output) != len(outputs):
        raise ValueError(
            f"ONNX graph has {len(graph.input)} inputs / {len(graph.output)} outputs; expected {len(inputs)} / "
            f"{len(outputs)} ({inputs} -> {outputs}). The fused model must take one waveform and return three tensors."
        )
    current = {v.name for v in graph.input} | {v.name for v in graph.output}
    all_names = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    mapping = {}
    for wanted in (*inputs, *outputs):
        if wanted in all_names and wanted not in current:
            mapping[wanted] = f"{wanted}__internal"
    mapping.update({old.name: new for old, new in zip(graph.input, inputs)})
    mapping.update({old.name: new for old, new in zip(graph.output, outputs)})
    mapping = {k: v for k, v in mapping.items() if k != v}
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for seq in (graph.input, graph.output, graph.value_info):
        for value in seq:
            value.name = mapping.get(value.name, value.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)


ONNX_QUANTIZED_OPS: tuple[str, ...] = ("MatMul", "Gemm")
"""Dynamic int8 covers the matmuls (transformer blocks, heads); convolutions, which hold the
STFT/mel/pitch front end, stay float32 for the reason given at
:data:`edge_ser.converters.quantize_xnnpack.DYNAMIC` (the same
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

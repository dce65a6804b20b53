"""ONNX target: ``torch.export`` graph -> ``model.onnx`` (opset from the dynamo exporter),
checked by ``onnx.checker`` and loaded by onnxruntime; int8 = dynamic quantization."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.converters.backend_base import DEFAULT_IO_NAMES, Backend, IONames, Lowered, PrecisionSpec, Runner

ONNX_FILE = "model.onnx"


class OnnxBackend(Backend):
    name = "onnx"
    artifact_file = ONNX_FILE
    gru_form = "native"  # ONNX has a native GRU op; the per-frame graph only slows export (minutes at 3 s)
    precisions = {
        "fp32": PrecisionSpec("fp32", "none", False, "float32 weights and activations"),
        "int8": PrecisionSpec(
            "int8", "onnxruntime-dynamic-int8", False,
            "onnxruntime quantize_dynamic on MatMul/Gemm: per-channel 7-bit int8 weights (no int16 saturation on "
            "any CPU), activations quantized to uint8 at run time; convolutions (the STFT/mel front end) and the MatMuls fed by a GELU (feed-forward "
            "down-projections) stay float32",
        ),
    }

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

        from edge_ser.converters.quantize import quantize_onnx_dynamic_int8

        start = time.perf_counter()
        out_dir = Path(out_dir)
        final = out_dir / ONNX_FILE
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
        return Lowered(files=(ONNX_FILE,), info={
            "lowering_s": round(time.perf_counter() - start, 3),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            **quantization,
        })



    def kernel_path_runners(self, artifact_dir: Path, *, precision: PrecisionSpec,
                            num_threads: int = 1) -> dict[str, Runner]:
        """int8: the artifact rewritten to each CPU class's int8 accumulation
        (:mod:`edge_ser.converters.int8_emulation`), so parity is checked for every kernel path
        ONNX Runtime dispatches to, not only this CPU's."""
        if precision.name != "int8":
            return {}
        import onnx

        from edge_ser.converters.int8_emulation import emulate_int8_accumulation
        from edge_ser.cpu_features import INT8_ACCUMULATION_PATHS
        from edge_ser.runtime.backends import OnnxRunner

        model = onnx.load(str(Path(artifact_dir) / ONNX_FILE))
        return {path: OnnxRunner(emulate_int8_accumulation(model, path).SerializeToString(),
                                 threads=num_threads).run
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

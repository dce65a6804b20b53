"""ExecuTorch target, converter side: the PT2E int8 step (:mod:`edge_ser.converters.quantize_xnnpack`)
and ``torch.export`` graph -> XNNPACK-delegated ``.pte`` program. The file name, precisions,
tolerances and runner are declared in :mod:`edge_ser.runtime.target_executorch`."""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_ser.converters.backend_base import DEFAULT_IO_NAMES, Backend, IONames, Lowered, PrecisionSpec
from edge_ser.runtime import target_executorch

log = logging.getLogger(__name__)


class ExecuTorchBackend(Backend):
    target = target_executorch.TARGET
    gru_form = "scan"  # one lowered GRU step run in a loop; the per-frame graph takes minutes to lower
    whisper_front_form = "bmm"  # transformers' attention exports ~20 portable ops between delegate calls

    def versions(self) -> dict[str, str]:
        import executorch.version
        import torch

        return {"name": self.name, "version": executorch.version.__version__.split("+")[0],
                "torch": torch.__version__, "delegate": "xnnpack"}

    def quantize_before_export(self, module: Any, *, precision: PrecisionSpec, examples: tuple[Any, ...],
                               calibration_inputs: Sequence[tuple[Any, ...]]) -> Any:
        """int8: PT2E for XNNPACK on the calibration utterances' calls
        (:func:`edge_ser.converters.quantize_xnnpack.quantize_pt2e_xnnpack_int8`). fp32: constant
        bias chains folded (:func:`~edge_ser.converters.quantize_xnnpack.export_folded`), because
        XNNPACK takes a linear only with a constant bias."""
        from edge_ser.converters.quantize_xnnpack import export_folded, quantize_pt2e_xnnpack_int8

        if precision.calibrated:
            return quantize_pt2e_xnnpack_int8(module, calibration_inputs=calibration_inputs)
        return export_folded(module, examples)

    def lower(self, exported: Any, *, precision: PrecisionSpec, out_dir: Path,
              io_names: IONames = DEFAULT_IO_NAMES) -> Lowered:  # a .pte's I/O are positional
        from executorch.exir import to_edge_transform_and_lower

        if precision.calibrated:
            # Quantize/dequantize ops that XNNPACK does not take (seen on WavLM-large) stay in the
            # program; emitting them needs the quantized kernels' out variants registered.
            import executorch.kernels.quantized  # noqa: F401

        from executorch.exir.pass_manager import ExportedProgramPassManager

        start = time.perf_counter()
        edge = to_edge_transform_and_lower(
            exported, partitioner=[scan_xnnpack_partitioner()],
            transform_passes=ExportedProgramPassManager([inline_scan_constants_pass()]),
        )
        stranded = undelegated_body_constants(edge.exported_program().graph_module)
        if stranded:
            # ExecuTorch's emitter does not carry a constant that a portable kernel reads inside a
            # loop body (the kernel sees wrong data), so such a program is never written: lower
            # again with the weights as loop inputs (correct, slower per frame).
            log.warning("loop-body constants %s are not delegated to XNNPACK; lowering again with them as loop "
                        "inputs (correct, slower per frame).", ", ".join(stranded))
            edge = to_edge_transform_and_lower(exported, partitioner=[scan_xnnpack_partitioner()])
        delegation = delegation_summary(edge.exported_program().graph_module)
        program = edge.to_executorch()
        path = Path(out_dir) / self.artifact_file
        path.write_bytes(program.buffer)
        return Lowered(files=(self.artifact_file,), info={"lowering_s": round(time.perf_counter() - start, 3),
                                                "delegation": delegation,
                                                "loop_constants_in_delegate": not stranded})


def inline_scan_constants_pass() -> Any:
    """An ExportedProgram pass that moves weights used by ``torch.scan`` bodies into the bodies.

    ``torch.export`` passes every parameter a scan body closes over as a loop input
    (``additional_inputs``). XNNPACK treats a loop input as dynamic data and re-packs it at
    every iteration; measured on the TC-GRU's 2 x 150-step scan (3 s window, 256 units, 2
    threads) that was ~40 us per step, 12 ms per window, against 4.2 ms (float32) and 3.0 ms
    (int8 step) with the weights inside the delegate. This pass replaces each such input that is a
    parameter, buffer or constant of the program by a ``get_attr`` constant inside the body
    (dropping the top-level input if nothing else uses it); :func:`scan_xnnpack_partitioner`
    then hands the constant to the delegate with its op, XNNPACK packs it once at load, and
    an int8 weight there becomes a dynamically quantized op. Same outputs:
    only where the tensor lives changes.
    """
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult

    class InlineScanConstants(ExportedProgramPassBase):
        def call(self, program: Any) -> Any:
            inlined = _inline_scan_constants(program)
            if inlined:
                _drop_unused_inputs(program, inlined)
            return ExportedProgramPassResult(program, bool(inlined))

    return InlineScanConstants()


def _inline_scan_constants(program: Any) -> set[str]:
    """Replace, in every scan of ``program``, each loop input that is a parameter, buffer or constant
    by a ``get_attr`` constant inside the body; returns the names of the top-level inputs inlined."""
    import torch
    from torch.export.graph_signature import InputKind

    constant_kinds = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    graph_module = program.graph_module
    specs = {spec.arg.name: spec for spec in program.graph_signature.input_specs
             if spec.kind in constant_kinds and hasattr(spec.arg, "name")}
    inlined: set[str] = set()
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.higher_order.scan:
            continue
        combine, init, xs, additional = node.args
        body = getattr(graph_module, combine.target)
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        offset = len(init) + len(xs)
        kept = []
        for j, arg in enumerate(additional):
            spec = specs.get(getattr(arg, "name", None)) if getattr(arg, "op", None) == "placeholder" else None
            if spec is None:
                kept.append(arg)
                continue
            tensor = (program.state_dict[spec.target] if spec.target in program.state_dict
                      else program.constants[spec.target])
            placeholder = placeholders[offset + j]
            attr = f"_inlined_{placeholder.name}"
            body.register_buffer(attr, tensor)
            with body.graph.inserting_before(placeholder):
                constant = body.graph.get_attr(attr)
            constant.meta = dict(placeholder.meta)
            placeholder.replace_all_uses_with(constant)
            body.graph.erase_node(placeholder)
            inlined.add(arg.name)
        node.args = (combine, init, xs, tuple(kept))
        body.recompile()
    return inlined


def _drop_unused_inputs(program: Any, inlined: set[str]) -> None:
    """Remove the top-level inputs in ``inlined`` that nothing reads any more (placeholder, signature
    entry and stored tensor)."""
    from torch.export.graph_signature import ExportGraphSignature

    graph_module = program.graph_module
    placeholders = {n.name: n for n in graph_module.graph.nodes if n.op == "placeholder"}
    input_specs = []
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name in inlined and not placeholders[name].users:
            graph_module.graph.erase_node(placeholders[name])
            store = program._state_dict if spec.target in program.state_dict else program._constants
            del store[spec.target]
            continue
        input_specs.append(spec)
    program._graph_signature = ExportGraphSignature(
        input_specs=input_specs, output_specs=program.graph_signature.output_specs)
    graph_module.recompile()


def _loop_bodies(graph_module: Any) -> Any:
    """(name, submodule) of every loop body under `graph_module`, nested bodies included."""
    from executorch.exir.graph_module import get_control_flow_submodules

    pending = list(get_control_flow_submodules(graph_module))
    while pending:
        name, submodule, _ = pending.pop()
        yield name, submodule
        pending.extend(get_control_flow_submodules(submodule))


def undelegated_body_constants(graph_module: Any) -> list[str]:
    """Names of tensor constants (``get_attr``) left outside a delegate in any loop body."""
    import torch

    return [f"{name}.{node.target}" for name, submodule in _loop_bodies(graph_module) for node in submodule.graph.nodes
            if node.op == "get_attr" and isinstance(getattr(submodule, node.target, None), torch.Tensor)]


def scan_xnnpack_partitioner() -> Any:
    """An ``XnnpackPartitioner`` that also delegates the bodies of ``torch.scan`` loops.

    The stock partitioner tags nodes of the top-level graph only; ExecuTorch's ``to_backend``
    already lowers tagged nodes inside control-flow submodules (``get_control_flow_submodules``)
    and its emitter runs a scan as a loop, so the GRU step of :class:`edge_ser.converters.export_forms.ScanGRU`
    is lowered once and runs inside XNNPACK at every frame. Nodes in a body are matched with the
    same XNNPACK configs as the top level; constants inside a body (see
    :func:`inline_scan_constants_pass`) join the partition of the op that reads them.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
        generate_grouped_partitions_from_list_of_nodes,
    )

    class _BodyProgram:
        """The owning ExportedProgram seen through one submodule's graph (what the configs read)."""

        def __init__(self, program: Any, graph_module: Any) -> None:
            self._program = program
            self.graph_module = graph_module

        def __getattr__(self, name: str) -> Any:
            return getattr(self._program, name)

    class ScanXnnpackPartitioner(XnnpackPartitioner):
        def partition(self, exported_program: Any) -> Any:
            result = super().partition(exported_program)
            for name, submodule in _loop_bodies(exported_program.graph_module):
                matched = self.get_matched_nodes_from_configs(_BodyProgram(exported_program, submodule))
                for partition in generate_grouped_partitions_from_list_of_nodes(submodule, matched):
                    tag = f"{name}_tag{partition.id}"
                    for node in partition.nodes:
                        node.meta["delegation_tag"] = tag
                    for node in partition.nodes:
                        for arg in node.all_input_nodes:
                            if arg.op == "get_attr" and all(u.meta.get("delegation_tag") == tag for u in arg.users):
                                arg.meta["delegation_tag"] = tag
                    result.partition_tags[tag] = self.delegation_spec
            return result

    return ScanXnnpackPartitioner()


def delegation_summary(graph_module: Any) -> dict[str, Any]:
    """How much of a lowered graph runs inside XNNPACK and what stays in portable kernels.

    Returns ``{"delegated_subgraphs", "delegated_nodes", "portable_nodes", "delegated_share",
    "portable_ops": {op: count}, "delegated_ops": {op: count}}``, counted over the top-level
    graph and the bodies of its loops (a scan body counts once, however many frames it runs).
    """
    parts = [_summary_one(graph_module)] + [_summary_one(body) for _, body in _loop_bodies(graph_module)]
    portable: collections.Counter[str] = collections.Counter()
    delegated: collections.Counter[str] = collections.Counter()
    for part in parts:
        portable.update(part["portable_ops"])
        delegated.update(part["delegated_ops"])
    n_delegated = sum(p["delegated_nodes"] or 0 for p in parts)
    n_portable = sum(portable.values())
    total = n_delegated + n_portable
    return {
        "delegated_subgraphs": sum(p["delegated_subgraphs"] for p in parts),
        "delegated_nodes": n_delegated,
        "portable_nodes": n_portable,
        "delegated_share": round(n_delegated / total, 4) if total else 0.0,
        "portable_ops": dict(portable.most_common()),
        "delegated_ops": dict(delegated.most_common()),
    }


def _summary_one(graph_module: Any) -> dict[str, Any]:
    try:
        from executorch.devtools.backend_debug import get_delegation_info
    except ImportError:  # pragma: no cover - devtools ships with executorch 1.5.1
        return _count_delegation(graph_module)
    info = get_delegation_info(graph_module)
    # getitem only unpacks a delegate's output tuple; it is not a kernel that runs.
    portable = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
                if b.non_delegated and op != "getitem"}
    delegated = {op: b.delegated for op, b in info.delegation_by_operator.items() if b.delegated}
    n_portable = sum(portable.values())
    total = info.num_delegated_nodes + n_portable
    return {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": int(info.num_delegated_nodes),
        "portable_nodes": int(n_portable),
        "delegated_share": round(info.num_delegated_nodes / total, 4) if total else 0.0,
        "portable_ops": dict(sorted(portable.items(), key=lambda kv: -kv[1])),
        "delegated_ops": dict(sorted(delegated.items(), key=lambda kv: -kv[1])),
    }


def _count_delegation(graph_module: Any) -> dict[str, Any]:
    portable: collections.Counter[str] = collections.Counter()
    n_delegates = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "call_delegate" in name:
            n_delegates += 1
        elif name != "getitem":
            portable[name] += 1
    return {"delegated_subgraphs": n_delegates, "delegated_nodes": None, "portable_nodes": sum(portable.values()),
            "delegated_share": None, "portable_ops": dict(portable.most_common()), "delegated_ops": {}}

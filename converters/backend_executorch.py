"""ExecuTorch target: ``torch.export`` graph -> XNNPACK-delegated ``.pte`` program."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.converters.backend_base import Backend, Lowered, PrecisionSpec, Runner

PTE_FILE = "model.pte"


class ExecuTorchBackend(Backend):
    name = "executorch"
    artifact_file = PTE_FILE
    gru_form = "scan"  # one lowered GRU step run in a loop; the per-frame graph takes minutes to lower
    precisions = {
        "fp32": PrecisionSpec("fp32", "none", False, "float32 weights and activations, XNNPACK delegate"),
        "int8": PrecisionSpec(
            "int8", "pt2e-int8-dynamic-activations-xnnpack", True,
            "PT2E int8 (XNNPACKQuantizer): per-channel symmetric int8 weights of every linear layer and of the "
            "TC-GRU conv (run as height-1 Conv2d), int8 activations quantized per call (dynamic ranges); the "
            "STFT/mel front end and the foundation model's input convs stay float32. The GRU's hidden-to-hidden weights are stored int8 per column "
            "and dequantized once per call (the loop step runs float32). Prepared on training utterances.",
        ),
    }

    def versions(self) -> dict[str, str]:
        import executorch.version
        import torch

        return {"name": self.name, "version": executorch.version.__version__.split("+")[0],
                "torch": torch.__version__, "delegate": "xnnpack"}

    def lower(self, exported: Any, *, precision: PrecisionSpec, out_dir: Path) -> Lowered:
        from executorch.exir import to_edge_transform_and_lower

        if precision.calibrated:
            # Quantize/dequantize ops that XNNPACK does not take (seen on WavLM-large) stay in the
            # program; emitting them needs the quantized kernels' out variants registered.
            import executorch.kernels.quantized  # noqa: F401

        start = time.perf_counter()
        edge = to_edge_transform_and_lower(exported, partitioner=[scan_xnnpack_partitioner()])
        delegation = delegation_summary(edge.exported_program().graph_module)
        program = edge.to_executorch()
        path = Path(out_dir) / PTE_FILE
        path.write_bytes(program.buffer)
        return Lowered(files=(PTE_FILE,), info={"lowering_s": round(time.perf_counter() - start, 3),
                                                "delegation": delegation})



def scan_xnnpack_partitioner() -> Any:
    """An ``XnnpackPartitioner`` that also delegates the bodies of ``torch.scan`` loops.

    The stock partitioner tags nodes of the top-level graph only; ExecuTorch's ``to_backend``
    already lowers tagged nodes inside control-flow submodules (``get_control_flow_submodules``)
    and its emitter runs a scan as a loop, so the GRU step of :class:`edge_ser.train.model.ScanGRU`
    is lowered once and runs inside XNNPACK at every frame. Nodes in a body are matched with the
    same XNNPACK configs as the top level; the body's weights are loop inputs there, so only
    ops that take dynamic operands (``bmm``, elementwise, slices) are delegated.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
        generate_grouped_partitions_from_list_of_nodes,
    )
    from executorch.exir.graph_module import get_control_flow_submodules

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
            pending = list(get_control_flow_submodules(exported_program.graph_module))
            while pending:
                name, submodule, _ = pending.pop()
                matched = self.get_matched_nodes_from_configs(_BodyProgram(exported_program, submodule))
                for partition in generate_grouped_partitions_from_list_of_nodes(submodule, matched):
                    tag = f"{name}_tag{partition.id}"
                    for node in partition.nodes:
                        node.meta["delegation_tag"] = tag
                    result.partition_tags[tag] = self.delegation_spec
                pending.extend(get_control_flow_submodules(submodule))
            return result

    return ScanXnnpackPartitioner()


def delegation_summary(graph_module: Any) -> dict[str, Any]:
    """How much of a lowered graph runs inside XNNPACK and what stays in portable kernels.

    Returns ``{"delegated_subgraphs", "delegated_nodes", "portable_nodes", "delegated_share",
    "portable_ops": {op: count}, "delegated_ops": {op: count}}``, counted over the top-level
    graph and the bodies of its loops (a scan body counts once, however many frames it runs).
    """
    from executorch.exir.graph_module import get_control_flow_submodules

    parts = [_summary_one(graph_module)]
    pending = list(get_control_flow_submodules(graph_module))
    while pending:
        _, submodule, _ = pending.pop()
        parts.append(_summary_one(submodule))
        pending.extend(get_control_flow_submodules(submodule))
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

"""The target registry: name -> backend (see backend_base.Backend for what a backend does).

An unknown target name raises an error that lists the known ones; the CLI builds its
``click.Choice`` from :data:`TARGETS`.
"""

from __future__ import annotations

from edge_ser.converters.backend_base import Backend, Lowered, PrecisionSpec, Runner
from edge_ser.converters.backend_coreml import CoreMLBackend
from edge_ser.converters.backend_executorch import ExecuTorchBackend
from edge_ser.converters.backend_onnx import OnnxBackend

__all__ = ["Backend", "Lowered", "PrecisionSpec", "Runner", "TARGETS", "all_precisions", "get_backend"]

TARGETS: dict[str, Backend] = {b.name: b for b in (CoreMLBackend(), ExecuTorchBackend(), OnnxBackend())}
"""Target name -> backend. Known: coreml, executorch, onnx."""


def get_backend(target: str) -> Backend:
    """The backend registered for ``target``; an unknown name lists the known ones."""
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; known targets: {sorted(TARGETS)}.") from None


def all_precisions() -> list[str]:
    """Every precision any target offers (for CLI choices), in a stable order."""
    order = ("fp32", "fp16", "int8", "palette4")
    names = {p for b in TARGETS.values() for p in b.precisions}
    return [p for p in order if p in names] + sorted(names - set(order))

"""The converters' target registry: name -> backend (see backend_base.Backend for what a backend adds).

Each backend wraps its target's declaration in the runtime's target table
(:data:`edge_ser.runtime.targets.TARGETS`: model file, precisions, tolerances, runner); this
registry lists one backend per declared target (tests/test_converters.py checks that the two
name the same targets). An unknown target name raises an error that lists the known ones; the CLI builds its
``click.Choice`` from :data:`TARGETS` and :func:`all_precisions`.
"""

from __future__ import annotations

from edge_ser.converters.backend_base import Backend, Lowered, PrecisionSpec, Runner
from edge_ser.converters.backend_coreml import CoreMLBackend
from edge_ser.converters.backend_executorch import ExecuTorchBackend
from edge_ser.converters.backend_onnx import OnnxBackend
from edge_ser.runtime import targets as runtime_targets

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
    return runtime_targets.all_precisions()

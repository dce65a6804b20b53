"""The target table: name -> :class:`~edge_ser.runtime.target_spec.TargetSpec`, one module per target.

This is the one place where a target's model file, precisions, quantization scheme, parity
tolerances, runner and file check are declared. The runtime reads it to load an artifact
(:func:`edge_ser.runtime.load`), the parity check for its tolerances
(:func:`edge_ser.runtime.parity.tolerance_for`) and the converters for their backends
(``edge_ser.converters.backends``, which add lowering and quantization code to each entry).
Importing it loads no toolchain: each runner imports its runtime when it is constructed.

Adding a target: docs/architecture.md, "Adding a target".
"""

from __future__ import annotations

from pathlib import Path

from edge_ser.errors import EdgeSerError
from edge_ser.runtime import target_coreml, target_executorch, target_onnx
from edge_ser.runtime.artifact import ArtifactError
from edge_ser.runtime.target_spec import BackendUnavailableError, PrecisionSpec, Runner, TargetSpec

__all__ = ["BackendUnavailableError", "PrecisionSpec", "Runner", "TARGETS", "TargetSpec", "all_precisions",
           "get_runner", "get_target"]

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    target_coreml.TARGET, target_executorch.TARGET, target_onnx.TARGET)}
"""Target name (the manifest's ``target``) -> its declaration. Known: coreml, executorch, onnx."""

PRECISION_ORDER: tuple[str, ...] = ("fp32", "fp16", "int8", "palette4")
"""The order precisions are listed in (CLI choices, docs): widest first."""


def get_target(name: str) -> TargetSpec:
    """The declaration of target ``name``; an unknown name lists the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known targets: {sorted(TARGETS)}.") from None


def all_precisions() -> list[str]:
    """Every precision any target offers, in a stable order (:data:`PRECISION_ORDER`, then others sorted)."""
    names = {p for spec in TARGETS.values() for p in spec.precisions}
    return [p for p in PRECISION_ORDER if p in names] + sorted(names - set(PRECISION_ORDER))


def get_runner(target: str, model_path: Path, *, threads: int | None = None) -> Runner:
    """The runner of ``target`` on ``model_path``. An unknown target lists the known ones; a model
    file the target's runtime cannot load raises :class:`ArtifactError`; a runtime that cannot run
    here (Core ML off macOS) raises :class:`BackendUnavailableError`."""
    try:
        factory = TARGETS[target].runner
    except KeyError:
        raise ValueError(f"no runner for target {target!r}; known targets: {sorted(TARGETS)}.") from None
    try:
        return factory(model_path, threads=threads)
    except (EdgeSerError, ImportError):
        raise
    except Exception as exc:  # the backend's own parse/verify/load failure: a corrupted file
        raise ArtifactError(
            f"{model_path}: the {target} runtime could not load it ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            "expected the model written by `edge-ser convert`. The file is corrupted or from an incompatible "
            "exporter: copy the artifact again or re-convert it."
        ) from None

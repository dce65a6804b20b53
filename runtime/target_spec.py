"""What a target is, as one declaration that the converters and the runtime both read.

A target module (``target_executorch``, ``target_onnx``, ``target_coreml``) declares one
:class:`TargetSpec`: the model file it writes into an artifact folder, the precisions it offers
(each with its quantization scheme and parity tolerance), the runner that executes its model
file, and an optional structural check of that file. :mod:`edge_ser.runtime.targets` collects
them; the converters' backends (``edge_ser.converters.backend_*``) take their file and
precisions from it and add only the lowering and quantization code (which needs torch).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from edge_ser.errors import EdgeSerError
from edge_ser.runtime.tolerances import Tolerance


class BackendUnavailableError(EdgeSerError, RuntimeError):
    """The artifact's runtime cannot run on this machine (e.g. Core ML off macOS)."""


class Runner(Protocol):
    threads: int
    input_shape: tuple[int | None, ...] | None
    """The model's real input shape (None where the backend does not say; a dimension None when symbolic)."""
    output_shapes: tuple[tuple[int | None, ...], ...] | None
    """The model's real output shapes in ``OUTPUT_NAMES`` order, or None."""

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        """waveform: (1, window_samples) float32 -> {"probs", "avd", "embedding"}."""

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every input in graph order (a streaming artifact's hop and states) -> every output in graph order."""


@dataclasses.dataclass(frozen=True)
class PrecisionSpec:
    """One precision a target offers.

    ``scheme``: the quantization scheme's name, written to the manifest (``"none"`` for fp32).
    ``calibrated``: the converters quantize the graph with PT2E *before* lowering (int8 weights,
    activations quantized dynamically per call), running calibration utterances through the
    prepared graph. Otherwise any compression is weight-only or dynamic and the backend applies
    it while lowering (no calibration data involved).
    ``tolerance``: the parity row an artifact of this precision must meet.
    ``streaming``: whether a streaming artifact (``convert(..., hop_s=...)``) can be built at it.
    """

    name: str
    scheme: str
    calibrated: bool
    description: str
    tolerance: Tolerance
    streaming: bool = True


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One target, declared once (see the module docstring).

    ``name``: the manifest's ``target`` string (artifacts converted earlier carry it: never rename).
    ``model_file``: the model file (or package folder) inside an artifact folder.
    ``runner``: ``runner(model_path, threads=...)`` -> a :class:`Runner`; it imports the target's
    runtime (executorch, onnxruntime, coremltools) when called, not when declared.
    ``check_file``: a structural check of the model file run before the runner loads it (raises
    ``ArtifactError``), or None.
    """

    name: str
    model_file: str
    precisions: Mapping[str, PrecisionSpec]
    runner: Callable[..., Runner]
    check_file: Callable[[Path], None] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for key, spec in self.precisions.items():
            if key != spec.name:
                raise ValueError(f"target {self.name!r} lists precision {spec.name!r} under key {key!r}; "
                                 "expected each precision under its own name.")

    def precision(self, name: str) -> PrecisionSpec:
        """The precision called ``name``; an unknown one lists those this target offers."""
        try:
            return self.precisions[name]
        except KeyError:
            raise ValueError(
                f"precision {name!r} is not offered by target {self.name!r}; known precisions for {self.name}: "
                f"{sorted(self.precisions)}."
            ) from None

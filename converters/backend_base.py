"""What a conversion target is: each backend knows how to *lower* an exported graph and how
to *load/run* its artifact, nothing else (STYLE.md "One pipeline, thin backends").

Truncation, fusion, calibration, validation and the manifest live in
:mod:`edge_ser.converters.pipeline`. Backend modules import their heavy toolchains
(ExecuTorch, coremltools, onnxruntime) inside functions, so reading this registry (for
CLI choices, say) is cheap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES

IONames = tuple[tuple[str, ...], tuple[str, ...]]
DEFAULT_IO_NAMES: IONames = ((INPUT_NAME,), OUTPUT_NAMES)
"""The windowed artifact's (inputs, outputs); a streaming one's are STREAM_INPUT_NAMES / STREAM_OUTPUT_NAMES."""

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""(1, window_samples) float32 -> {"probs", "avd", "embedding"} (edge_ser.runtime.backends runners)."""
"""Runs one ``(1, window_samples)`` float32 waveform; returns ``(probs, avd, embedding)`` arrays."""


@dataclasses.dataclass(frozen=True)
class PrecisionSpec:
    """One precision a backend offers.

    ``calibrated``: the pipeline quantizes the graph with PT2E *before* lowering (int8 weights,
    activations quantized dynamically per call), running calibration utterances through the
    prepared graph. Otherwise any compression is weight-only or dynamic and the backend applies
    it while lowering (no calibration data involved).
    """

    name: str
    scheme: str
    calibrated: bool
    description: str


@dataclasses.dataclass(frozen=True)
class Lowered:
    """What a backend wrote into the artifact folder.

    ``files``: paths relative to the folder (a directory such as ``model.mlpackage`` counts as one).
    ``info``: JSON-ready backend details for the manifest (delegation, lowering time, ...).
    ``reference``: in-memory object the backend's :meth:`Backend.verify` may compare against
    (e.g. Core ML's uncompressed fp32 program); never serialised.
    """

    files: tuple[str, ...]
    info: Mapping[str, Any]
    reference: Any = dataclasses.field(default=None, compare=False, repr=False)


class Backend:
    """Base class of a conversion target. Subclasses set the class attributes and override
    :meth:`lower`, :meth:`runner` and, when useful, :meth:`verify`."""

    name: str = ""
    artifact_file: str = ""
    gru_form: str = "unrolled"
    """How the fused model's GRU is written for this target: ``"native"`` (``nn.GRU``),
    ``"unrolled"`` (per frame) or ``"scan"`` (one ``torch.scan`` per layer); see
    :mod:`edge_ser.train.model`."""
    precisions: Mapping[str, PrecisionSpec] = {}

    def versions(self) -> dict[str, str]:
        """Toolchain versions recorded in the manifest's ``backend`` block."""
        raise NotImplementedError

    def lower(self, exported: Any, *, precision: PrecisionSpec, out_dir: Path,
              io_names: IONames = DEFAULT_IO_NAMES) -> Lowered:
        """Lower a ``torch.export.ExportedProgram`` (already PT2E-quantized when the precision is
        ``calibrated``) into ``out_dir / artifact_file``. ``io_names``: the graph's (input names,
        output names) in order; a streaming model has its states after the usual ones."""
        raise NotImplementedError

    def runner(self, artifact_dir: Path, *, num_threads: int = 1) -> Runner | None:
        """A callable that runs the saved artifact with the runtime shim's runner for this target
        (the same code an app uses), or ``None`` when this platform cannot run it."""
        runner = self.load_runner(artifact_dir, num_threads=num_threads)
        return None if runner is None else runner.run

    def load_runner(self, artifact_dir: Path, *, num_threads: int = 1) -> Any:
        """The runtime shim's runner object for the saved artifact (``run``, ``run_all``), or ``None``
        when this platform cannot run it."""
        from edge_ser.runtime.backends import BackendUnavailableError, get_runner

        try:
            return get_runner(self.name, Path(artifact_dir) / self.artifact_file, threads=num_threads)
        except BackendUnavailableError:
            return None

    def kernel_path_runners(self, artifact_dir: Path, *, precision: PrecisionSpec,
                            num_threads: int = 1) -> dict[str, Runner]:
        """Runners that compute the artifact as *other* CPUs' kernels would (name -> runner), for
        precisions whose arithmetic depends on the instruction set; parity is checked under each.
        Default: none (the backend's kernels agree across CPUs, or cannot be emulated)."""
        return {}

    def verify(self, artifact_dir: Path, *, lowered: Lowered, precision: PrecisionSpec) -> dict[str, Any]:
        """Structural checks that do not need to run the model (default: none)."""
        return {}

    def precision(self, name: str) -> PrecisionSpec:
        try:
            return self.precisions[name]
        except KeyError:
            raise ValueError(
                f"precision {name!r} is not offered by target {self.name!r}; known precisions for {self.name}: "
                f"{sorted(self.precisions)}."
            ) from None



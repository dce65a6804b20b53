"""A conversion target, converter side: each backend adds to its target's declaration
(:class:`edge_ser.runtime.target_spec.TargetSpec`: model file, precisions with their scheme and
tolerance, runner) what needs torch: the GRU form to export, the quantization step before export,
the lowering, and optional structural checks (STYLE.md "One pipeline, thin backends").

Truncation, fusion, validation and the manifest live in :mod:`edge_ser.converters.pipeline`.
Backend modules import their heavy toolchains (ExecuTorch, coremltools, onnxruntime) inside
functions, so reading this registry (for CLI choices, say) is cheap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES
from edge_ser.runtime.target_spec import PrecisionSpec, TargetSpec
from edge_ser.runtime.targets import BackendUnavailableError, get_runner

__all__ = ["Backend", "DEFAULT_IO_NAMES", "IONames", "Lowered", "PrecisionSpec", "Runner"]

IONames = tuple[tuple[str, ...], tuple[str, ...]]
DEFAULT_IO_NAMES: IONames = ((INPUT_NAME,), OUTPUT_NAMES)
"""The windowed artifact's (inputs, outputs); a streaming one's are STREAM_INPUT_NAMES / STREAM_OUTPUT_NAMES."""

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""Runs one ``(1, window_samples)`` float32 waveform -> {"probs", "avd", "embedding"} (a runtime runner's ``run``)."""


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
    """Base class of a conversion target. Subclasses set :attr:`target` (the runtime's declaration)
    and :attr:`gru_form`, and override :meth:`lower` and, when useful, :meth:`quantize_before_export`
    and :meth:`verify`."""

    target: TargetSpec
    gru_form: str = "unrolled"
    """How the fused model's GRU is written for this target: ``"native"`` (``nn.GRU``),
    ``"unrolled"`` (per frame) or ``"scan"`` (one ``torch.scan`` per layer); see
    :mod:`edge_ser.converters.export_forms`."""
    whisper_front_form: str = "transformers"
    """How a windowed graph's Whisper front is written: ``"transformers"`` (the truncated
    ``WhisperEncoder`` as loaded) or ``"bmm"`` (:class:`~edge_ser.converters.whisper_export.WindowedWhisperFM`:
    the same features in ops a delegate takes, no attention-mask ops). Other families ignore it."""

    @property
    def name(self) -> str:
        """The target's name, as the manifest records it."""
        return self.target.name

    @property
    def artifact_file(self) -> str:
        """The model file (or package folder) the lowering writes into the artifact folder."""
        return self.target.model_file

    @property
    def precisions(self) -> Mapping[str, PrecisionSpec]:
        return self.target.precisions

    def precision(self, name: str) -> PrecisionSpec:
        """The precision called ``name``; an unknown one lists those this target offers."""
        return self.target.precision(name)

    def versions(self) -> dict[str, str]:
        """Toolchain versions recorded in the manifest's ``backend`` block."""
        raise NotImplementedError

    def quantize_before_export(self, module: Any, *, precision: PrecisionSpec, examples: tuple[Any, ...],
                               calibration_inputs: Sequence[tuple[Any, ...]]) -> Any:
        """This target's step between the fused model and ``torch.export``: quantize it (a
        ``calibrated`` precision, on ``calibration_inputs``: one tuple of the model's inputs per
        call, from real utterances, see :func:`edge_ser.converters.pipeline.calibration_inputs`) or
        rewrite it for the lowering. ``examples``: the model's example inputs (one waveform, or a
        streaming model's hop and states). Returns the module to export. Default: ``module``
        unchanged (targets whose compression happens while lowering, or none)."""
        if precision.calibrated:
            raise NotImplementedError(f"target {self.name!r} declares calibrated precision {precision.name!r} but "
                                      "its backend has no quantization step (quantize_before_export).")
        return module

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
        try:
            return get_runner(self.name, Path(artifact_dir) / self.artifact_file, threads=num_threads)
        except BackendUnavailableError:
            return None

    def kernel_path_runners(self, artifact_dir: Path, *, precision: PrecisionSpec,
                            num_threads: int = 1) -> dict[str, Any]:
        """Runner objects (``run``, ``run_all``, as the runtime's) that compute the artifact as *other*
        CPUs' kernels would (name -> runner), for precisions whose arithmetic depends on the
        instruction set; parity is checked under each (windowed and streaming artifacts alike).
        Default: none (the backend's kernels agree across CPUs, or cannot be emulated)."""
        return {}

    def verify(self, artifact_dir: Path, *, lowered: Lowered, precision: PrecisionSpec) -> dict[str, Any]:
        """Structural checks that do not need to run the model (default: none)."""
        return {}

"""The Core ML target (ML Program ``.mlpackage``): its declaration and its runner (macOS only).

The conversion, the weight compression and the structural check used off macOS live in
:mod:`edge_ser.converters.backend_coreml`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES
from edge_ser.runtime.target_spec import BackendUnavailableError, PrecisionSpec, TargetSpec
from edge_ser.runtime.tolerances import FLOAT16_COMPUTE, FLOAT32_LOWERING, QUANTIZED_8BIT


class CoreMLRunner:
    """Runs a ``.mlpackage`` with Core ML. Prediction exists only on macOS."""

    def __init__(self, model_path: Path, *, threads: int | None = None) -> None:
        if sys.platform != "darwin":
            raise BackendUnavailableError(
                f"Core ML prediction needs macOS; this is {sys.platform}. The artifact {model_path} was verified "
                "structurally when it was converted (see its parity.json). Run it on a Mac (Python or Swift, "
                "see examples/) or pick an ExecuTorch/ONNX artifact here."
            )
        import coremltools as ct  # pragma: no cover - macOS only

        self.threads = int(threads or 0)  # pragma: no cover
        self.input_shape, self.output_shapes = None, None  # pragma: no cover
        self._model = ct.models.MLModel(str(model_path))  # pragma: no cover

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - macOS only
        out = self._model.predict({INPUT_NAME: np.ascontiguousarray(waveform, dtype=np.float32)})
        return {name: np.asarray(out[name], dtype=np.float32) for name in OUTPUT_NAMES}

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - macOS only
        description = self._model.get_spec().description
        names = [i.name for i in description.input]
        out = self._model.predict({n: np.ascontiguousarray(x, dtype=np.float32) for n, x in zip(names, inputs)})
        return [np.asarray(out[o.name], dtype=np.float32) for o in description.output]


TARGET = TargetSpec(
    name="coreml",
    model_file="model.mlpackage",
    description="Core ML ML Program; prediction needs macOS, elsewhere it is verified structurally",
    runner=CoreMLRunner,
    precisions={
        "fp32": PrecisionSpec("fp32", "none", False, "float32 weights, float32 compute", tolerance=FLOAT32_LOWERING),
        "fp16": PrecisionSpec("fp16", "fp16", False, "float16 weights and compute", tolerance=FLOAT16_COMPUTE),
        "int8": PrecisionSpec(
            "int8", "coreml-linear-symmetric-int8-per-channel", False,
            "int8 weights (linear symmetric, per output channel), float16 compute", tolerance=QUANTIZED_8BIT,
        ),
        "palette4": PrecisionSpec(
            "palette4", "coreml-palettize-kmeans-4bit", False,
            "4-bit k-means palettized weights (16-entry table per tensor), float16 compute", tolerance=QUANTIZED_8BIT,
        ),
    },
)

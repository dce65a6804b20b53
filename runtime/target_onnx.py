"""The ONNX target (ONNX Runtime, CPU provider): its declaration, its model check and its runner.

The export and the dynamic int8 step live in :mod:`edge_ser.converters.backend_onnx`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_ser.runtime.artifact import OUTPUT_NAMES, ArtifactError
from edge_ser.runtime.target_spec import PrecisionSpec, TargetSpec
from edge_ser.runtime.tolerances import FLOAT32_LOWERING, QUANTIZED_8BIT


def check_onnx_file(path: Path) -> None:
    """Parse and check an ONNX model (``onnx.checker``) before ONNX Runtime loads it, where the
    ``onnx`` package is installed (an app that ships only onnxruntime skips this check)."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency of edge-ser itself
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: all mean "not a valid model"
        raise ArtifactError(
            f"{path} is not a valid ONNX model: {type(exc).__name__}: {str(exc).strip()[:300]}. Expected the .onnx "
            "written by `edge-ser convert`; the file is corrupted. Copy the artifact again or re-convert it."
        ) from None


def _default_threads() -> int:
    """torch's intra-op thread count where the process has already imported torch (it honours
    OMP_NUM_THREADS and what a test or app set), else OMP_NUM_THREADS, else the CPU count.

    torch is never imported here: importing it costs about 2 s, which an ONNX-only app (or a
    full install running an ONNX artifact) should not pay to pick a thread count."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


class OnnxRunner:
    """Runs a ``.onnx`` with ONNX Runtime's CPU provider.

    ``model_path`` may also be the serialized model as ``bytes`` (the converters run int8 models
    rewritten to another CPU's kernel arithmetic that way, :mod:`edge_ser.converters.int8_emulation`).
    """

    def __init__(self, model_path: Path | bytes, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = int(threads or _default_threads())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's own log (e.g. "Removing initializer ... not used") goes to stderr at
        # WARNING; its errors still raise as Python exceptions.
        options.log_severity_level = 3
        source = model_path if isinstance(model_path, bytes) else str(model_path)
        self._session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.input_shape = _static_shape(self._session.get_inputs()[0].shape)
        by_name = {o.name: _static_shape(o.shape) for o in self._session.get_outputs()}
        named = all(n in by_name for n in OUTPUT_NAMES)
        # The named outputs first, then any others (a streaming artifact's states) in graph order.
        self.output_shapes = (tuple(by_name[n] for n in OUTPUT_NAMES)
                              + tuple(v for n, v in by_name.items() if n not in OUTPUT_NAMES)
                              if named else tuple(by_name.values()))

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self._inputs):
            raise ValueError(f"got {len(inputs)} inputs; this model takes {len(self._inputs)} ({self._inputs}).")
        feeds = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self._inputs, inputs)}
        return [np.asarray(v, dtype=np.float32) for v in self._session.run(None, feeds)]

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(None, {self._input: np.ascontiguousarray(waveform, dtype=np.float32)})
        named = dict(zip(self._outputs, values))
        if all(name in named for name in OUTPUT_NAMES):
            return {name: np.asarray(named[name], dtype=np.float32) for name in OUTPUT_NAMES}
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(OUTPUT_NAMES, values)}


def _static_shape(shape: Sequence[object]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


TARGET = TargetSpec(
    name="onnx",
    model_file="model.onnx",
    description="ONNX model (dynamo exporter), run by ONNX Runtime",
    runner=OnnxRunner,
    check_file=check_onnx_file,
    precisions={
        "fp32": PrecisionSpec("fp32", "none", False, "float32 weights and activations", tolerance=FLOAT32_LOWERING),
        "int8": PrecisionSpec(
            "int8", "onnxruntime-dynamic-int8", False,
            "onnxruntime quantize_dynamic on MatMul/Gemm: per-channel 7-bit int8 weights (no int16 saturation on "
            "any CPU), activations quantized to uint8 at run time; convolutions (the STFT/mel front end) and the MatMuls fed by a GELU (feed-forward "
            "down-projections) stay float32",
            tolerance=QUANTIZED_8BIT,
        ),
    },
)

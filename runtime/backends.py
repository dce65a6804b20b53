"""Runners: execute an artifact's model file with its native runtime.

Each runner takes a float32 array (1, window_samples) and returns the outputs in
manifest order as a dict name -> np.ndarray. A registry maps the manifest's target
to its runner; an unknown target lists the known ones.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edge_ser.errors import EdgeSerError
from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES

log = logging.getLogger(__name__)


class BackendUnavailableError(EdgeSerError, RuntimeError):
    """The artifact's runtime cannot run on this machine (e.g. Core ML off macOS)."""


class Runner(Protocol):
    threads: int

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        """waveform: (1, window_samples) float32 -> {"probs", "avd", "embedding"}."""


_LIVE_EXECUTORCH_RUNNERS: "weakref.WeakSet[ExecuTorchRunner]" = weakref.WeakSet()


def _size_threadpool(threads: int) -> int:
    """Size ExecuTorch's process-wide thread pool; returns the size in effect.

    Resizing replaces the pool that loaded XNNPACK programs hold (the pybinding calls it
    ``_unsafe_reset_threadpool``): doing it while another program is loaded crashed the
    process (a segmentation fault in a benchmark that kept an fp32 and an int8 program open).
    So the pool is resized only while no other ExecuTorch runner is alive; otherwise the
    current size is kept, with a warning.
    """
    try:
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )
    except ImportError:  # pragma: no cover - older executorch
        return threads
    current = int(_threadpool_get_thread_count())
    if current == threads:
        return threads
    if len(_LIVE_EXECUTORCH_RUNNERS):
        log.warning("ExecuTorch's thread pool has %d threads and another program is loaded; keeping %d "
                    "instead of the %d asked for (resizing it under a loaded program is unsafe).",
                    current, current, threads)
        return current
    _unsafe_reset_threadpool(threads)
    return threads


class ExecuTorchRunner:
    """Runs a ``.pte`` through ``executorch.runtime`` (XNNPACK delegate built in)."""

    def __init__(self, model_path: Path, *, threads: int | None = None) -> None:
        import torch
        from executorch.runtime import Runtime

        self.threads = _size_threadpool(int(threads or torch.get_num_threads()))
        try:  # kernels for quantize/dequantize ops a program keeps outside XNNPACK (int8 WavLM does)
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:  # pragma: no cover - a runtime build without them fails at load_method instead
            pass
        program = Runtime.get().load_program(Path(model_path))
        self._method = program.load_method("forward")
        _LIVE_EXECUTORCH_RUNNERS.add(self)

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        outputs = self._method.execute((torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)),))
        return {name: np.asarray(out.detach().numpy() if hasattr(out, "detach") else out, dtype=np.float32)
                for name, out in zip(OUTPUT_NAMES, outputs)}


def _default_threads() -> int:
    """torch's intra-op thread count where torch is installed (it honours OMP_NUM_THREADS and
    what a test or app set), else the CPU count."""
    try:
        import torch
    except ImportError:
        return os.cpu_count() or 1
    return torch.get_num_threads()


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
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(None, {self._input: np.ascontiguousarray(waveform, dtype=np.float32)})
        named = dict(zip(self._outputs, values))
        if all(name in named for name in OUTPUT_NAMES):
            return {name: np.asarray(named[name], dtype=np.float32) for name in OUTPUT_NAMES}
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(OUTPUT_NAMES, values)}


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
        self._model = ct.models.MLModel(str(model_path))  # pragma: no cover

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - macOS only
        out = self._model.predict({INPUT_NAME: np.ascontiguousarray(waveform, dtype=np.float32)})
        return {name: np.asarray(out[name], dtype=np.float32) for name in OUTPUT_NAMES}


RUNNERS: dict[str, Callable[..., Runner]] = {
    "executorch": ExecuTorchRunner,
    "onnx": OnnxRunner,
    "coreml": CoreMLRunner,
}


def get_runner(target: str, model_path: Path, *, threads: int | None = None) -> Runner:
    try:
        factory = RUNNERS[target]
    except KeyError:
        raise ValueError(f"no runner for target {target!r}; known targets: {sorted(RUNNERS)}.") from None
    return factory(model_path, threads=threads)

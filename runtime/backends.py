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
from typing import Callable, Protocol, Sequence

import numpy as np

from edge_ser.errors import EdgeSerError
from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES, ArtifactError

log = logging.getLogger(__name__)


class BackendUnavailableError(EdgeSerError, RuntimeError):
    """The artifact's runtime cannot run on this machine (e.g. Core ML off macOS)."""


class Runner(Protocol):
    threads: int
    input_shape: tuple[int | None, ...] | None
    """The model's real input shape (None where the backend does not say; a dimension None when symbolic)."""
    output_shapes: tuple[tuple[int | None, ...], ...] | None
    """The model's real output shapes in :data:`OUTPUT_NAMES` order, or None."""

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        """waveform: (1, window_samples) float32 -> {"probs", "avd", "embedding"}."""

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every input in graph order (a streaming artifact's hop and states) -> every output in graph order."""


PTE_FILE_IDENTIFIERS: tuple[bytes, ...] = (b"ET12",)
"""Flatbuffer file identifiers of the ExecuTorch program schema this runtime reads."""
_PTE_HEADER_MAGIC = b"eh00"
_PTE_HEADER_MIN_LENGTH = 24


def check_pte_file(path: Path) -> None:
    """Check a ``.pte``'s framing before ExecuTorch parses it: flatbuffer identifier, extended header,
    and that the program and segment sizes it declares fit the file.

    ExecuTorch verifies the flatbuffer itself (``Verification.InternalConsistency``), but a wrong
    file identifier aborted the process (SIGABRT) instead of raising; this turns that and other
    framing damage into an ArtifactError.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(64)
    problem = None
    if len(head) < 8 + _PTE_HEADER_MIN_LENGTH:
        problem = f"it has {size} bytes, fewer than an ExecuTorch program's header"
    elif head[4:8] not in PTE_FILE_IDENTIFIERS:
        problem = (f"its flatbuffer identifier is {bytes(head[4:8])!r}; this runtime reads "
                   f"{[i.decode() for i in PTE_FILE_IDENTIFIERS]}")
    else:
        root_offset = int.from_bytes(head[0:4], "little")
        header = head[8:]
        length = int.from_bytes(header[4:8], "little")
        if header[0:4] == _PTE_HEADER_MAGIC:
            program_size = int.from_bytes(header[8:16], "little")
            segment_base = int.from_bytes(header[16:24], "little")
            segment_size = int.from_bytes(header[24:32], "little") if length > _PTE_HEADER_MIN_LENGTH else 0
            if length < _PTE_HEADER_MIN_LENGTH or 8 + length > len(head):
                problem = f"its extended header claims {length} bytes"
            elif not root_offset < program_size <= size:
                problem = (f"its header declares a {program_size}-byte program (root table at {root_offset}) in a "
                           f"{size}-byte file")
            elif segment_base and not (program_size <= segment_base <= size and segment_base + segment_size <= size):
                problem = (f"its header places {segment_size} bytes of segments at offset {segment_base} of a "
                           f"{size}-byte file")
        elif not 8 <= root_offset < size:
            problem = f"its root table offset {root_offset} lies outside the {size}-byte file"
    if problem:
        raise ArtifactError(f"{path} is not a readable ExecuTorch program: {problem}. Expected the .pte written by "
                            "`edge-ser convert`; the file is corrupted. Copy the artifact again or re-convert it.")


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


MODEL_FILE_CHECKS: dict[str, Callable[[Path], None]] = {"executorch": check_pte_file, "onnx": check_onnx_file}
"""Target -> a structural check of its model file, run by :func:`edge_ser.runtime.load` before the backend."""


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
        meta = self._method.metadata
        self.input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes()) if meta.num_inputs() else None
        self.output_shapes = tuple(tuple(int(d) for d in meta.output_tensor_meta(i).sizes())
                                   for i in range(meta.num_outputs()))

    def run(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        return dict(zip(OUTPUT_NAMES, self.run_all([waveform])))

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        outputs = self._method.execute(tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                                             for x in inputs))
        # Copies: an output tensor may share memory with the method's planned buffers, which the next call reuses.
        return [np.array(out.detach().numpy() if hasattr(out, "detach") else out, dtype=np.float32)
                for out in outputs]


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

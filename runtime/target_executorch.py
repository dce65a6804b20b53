"""The ExecuTorch target (XNNPACK delegate): its declaration, its ``.pte`` check and its runner.

The lowering and the PT2E int8 step live in :mod:`edge_ser.converters.backend_executorch`.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_ser.runtime.artifact import OUTPUT_NAMES, ArtifactError
from edge_ser.runtime.target_spec import PrecisionSpec, TargetSpec
from edge_ser.runtime.tolerances import FLOAT32_LOWERING, QUANTIZED_8BIT

log = logging.getLogger(__name__)

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
        return dict(zip(OUTPUT_NAMES, self.run_all([waveform])))

    def run_all(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        outputs = self._method.execute(tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                                             for x in inputs))
        # Copies: an output tensor may share memory with the method's planned buffers, which the next call reuses.
        return [np.array(out.detach().numpy() if hasattr(out, "detach") else out, dtype=np.float32)
                for out in outputs]


TARGET = TargetSpec(
    name="executorch",
    model_file="model.pte",
    description="ExecuTorch program, XNNPACK delegate",
    runner=ExecuTorchRunner,
    check_file=check_pte_file,
    precisions={
        "fp32": PrecisionSpec("fp32", "none", False, "float32 weights and activations, XNNPACK delegate",
                              tolerance=FLOAT32_LOWERING),
        "int8": PrecisionSpec(
            "int8", "pt2e-int8-dynamic-activations-xnnpack", True,
            "PT2E int8 (XNNPACKQuantizer): per-channel symmetric int8 weights of every linear layer, of the "
            "foundation model's convs (run as per-frame linears over stacked taps) and of the TC-GRU conv (run as "
            "height-1 Conv2d), int8 activations quantized per call (dynamic ranges); the STFT/mel front end stays "
            "float32. The GRU step's hidden-to-hidden "
            "product is int8 too (int8 weights per row, the state quantized per step). Prepared on training utterances.",
            tolerance=QUANTIZED_8BIT,
        ),
    },
)

"""Quantization shared by every target: calibration audio and the PT2E prepare/calibrate/convert
loop. Each target's own quantization step lives with its backend: XNNPACK's PT2E int8 in
:mod:`edge_ser.converters.quantize_xnnpack` (called by the ExecuTorch backend), ONNX Runtime's
dynamic int8 in :mod:`edge_ser.converters.backend_onnx`, Core ML's weight compression in
:mod:`edge_ser.converters.backend_coreml`.

Calibration always uses real utterances (a list of waveforms from the run's training
split), never one random tensor: activation ranges from noise are not the ranges of speech.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from edge_ser.errors import AudioError
from edge_ser.progress import progress_bar

MIN_CALIBRATION_UTTERANCES = 2


def calibration_tensors(waveforms: Sequence[np.ndarray | torch.Tensor], *, window_samples: int) -> list[torch.Tensor]:
    """Check and convert calibration/validation waveforms to ``(1, window_samples)`` float32 tensors.

    Each waveform must already be mono and exactly one window long (crop/pad with
    :func:`edge_ser.converters.fused.fit_to_window`).
    """
    tensors = []
    for i, wave in enumerate(waveforms):
        t = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1) if not isinstance(wave, torch.Tensor) \
            else wave.detach().to(torch.float32).reshape(1, -1)
        if t.shape[1] != window_samples:
            raise AudioError(
                f"waveform {i} has {t.shape[1]} samples; expected exactly {window_samples} (one window). "
                "Crop/pad with edge_ser.converters.fused.fit_to_window(wave, window_samples)."
            )
        if not torch.isfinite(t).all():
            raise AudioError(f"waveform {i} contains NaN or inf; expected finite audio samples.")
        tensors.append(t)
    return tensors


def calibration_set(waveforms: Sequence[np.ndarray | torch.Tensor], *, window_samples: int) -> list[torch.Tensor]:
    """:func:`calibration_tensors` of at least :data:`MIN_CALIBRATION_UTTERANCES` waveforms."""
    tensors = calibration_tensors(waveforms, window_samples=window_samples)
    if len(tensors) < MIN_CALIBRATION_UTTERANCES:
        raise ValueError(
            f"got {len(tensors)} calibration waveforms; expected at least {MIN_CALIBRATION_UTTERANCES} real "
            "utterances from the run's training split (e.g. --calibration-utterances 32)."
        )
    return tensors


def quantize_pt2e(graph: torch.fx.GraphModule, quantizer: Any,
                  calibration: Sequence[torch.Tensor | tuple[torch.Tensor, ...]]) -> torch.nn.Module:
    """PT2E: insert ``quantizer``'s observers into the exported ``graph``, run every calibration
    input through it (a tensor, or a tuple of all of a call's inputs: a streaming model's hop and
    states), and convert the observed graph into its quantize/dequantize form."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in progress_bar(calibration, desc="calibrating int8", unit="call", leave=False):
            prepared(*(inputs if isinstance(inputs, tuple) else (inputs,)))
    return convert_pt2e(prepared)

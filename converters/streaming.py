"""The streaming form of the fused model: one hop of audio in per call, the state carried out and in.

What one call does (``hop`` new samples, ``window`` samples of foundation-model context):

1. the window = the previous ``window - hop`` samples (state ``audio``) + the new hop;
2. the truncated foundation model runs on the whole window, as in the windowed artifact: the FM
   attends over the window and Whisper adds absolute positions, so it cannot be run incrementally.
   Of its frames only the newest ``hop_frames`` (the ones the new hop completes) feed the head;
3. the head (:class:`~edge_ser.converters.export_forms.TCGRUStreamingHead`) advances the GRU over
   those frames from state ``h`` and returns the running estimate.

The stream starts with ``window - hop`` samples of zeros in ``audio`` (every state starts at
zero), so every sample of the stream feeds the head exactly once and the first estimate comes after
one hop. The offline computation it equals (:func:`offline_stream_reference`): the same windows
run through the foundation model, their newest frames joined in time, and the training head
:class:`~edge_ser.train.model.TCGRU` run over all frames so far.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_ser.converters.export_forms import TCGRUStreamingHead
from edge_ser.converters.fused import FusedSER, frames_for_window
from edge_ser.errors import AudioError
from edge_ser.labels import SAMPLE_RATE
from edge_ser.runtime.artifact import STREAM_INPUT_NAMES, STREAM_OUTPUT_NAMES, STREAM_STATES

__all__ = ["StreamingSER", "StreamGeometry", "stream_geometry", "build_streaming_model", "offline_stream_reference",
           "stream_outputs", "streaming_calibration_inputs"]


@dataclasses.dataclass(frozen=True)
class StreamGeometry:
    """How a stream is cut: ``hop_samples`` new samples per call, ``window_samples`` FM context,
    ``hop_frames`` FM frames per hop (the newest ones of each window)."""

    window_samples: int
    hop_samples: int
    hop_frames: int
    window_frames: int

    @property
    def context_samples(self) -> int:
        return self.window_samples - self.hop_samples


def stream_geometry(front: nn.Module, *, window_samples: int, hop_samples: int) -> StreamGeometry:
    """Check that hops of ``hop_samples`` tile the front's frame grid and return the geometry.

    The newest frames of consecutive windows must join without gap or overlap: the front must give
    the same number of extra frames for each extra hop (so ``hop_samples`` is a multiple of its
    frame step, 320 samples = 20 ms for Whisper, WavLM and HuBERT), and a hop must hold at least two frames.
    """
    window_samples, hop_samples = int(window_samples), int(hop_samples)
    if not 0 < hop_samples <= window_samples // 2:
        raise ValueError(
            f"hop of {hop_samples} samples for a {window_samples}-sample window; expected 0 < hop <= window / 2 "
            f"(at least half the window is left context). Use a shorter hop_s or a longer window_s."
        )
    # The front may be built for the window (Whisper keeps only its positional rows): probe shorter inputs.
    shorter = [window_samples - d * hop_samples for d in (0, 1, 2) if window_samples - d * hop_samples >= hop_samples]
    frames = [frames_for_window(front, n) for n in shorter]
    added = [a - b for a, b in zip(frames, frames[1:])]
    hop_frames = added[0]
    if hop_frames < 2 or len(set(added)) != 1 or hop_samples % hop_frames:
        raise ValueError(
            f"a hop of {hop_samples} samples ({hop_samples / SAMPLE_RATE:g} s) adds {added} feature frames; expected "
            "the same whole number (>= 2) of frames per hop, each a whole number of samples. Pick hop_s as a "
            "multiple of the model's frame step (0.02 s for Whisper, WavLM and HuBERT), e.g. 0.5 or 1.0."
        )
    return StreamGeometry(window_samples=window_samples, hop_samples=hop_samples, hop_frames=hop_frames,
                          window_frames=frames[0])


class StreamingSER(nn.Module):
    """One hop in, the running estimate and the next state out (see the module docstring).

    ``forward(waveform (1, hop), audio_in (1, window - hop), h_in (L, 1, H), ctx_in (1, 2, N),
    pool_in (1, H), count_in (1, 1))`` -> ``(probs, avd, embedding, audio_out, h_out, ctx_out,
    pool_out, count_out)``, names in :data:`edge_ser.runtime.artifact.STREAM_INPUT_NAMES` /
    ``STREAM_OUTPUT_NAMES``.
    """

    def __init__(self, front: nn.Module, head: TCGRUStreamingHead, *, geometry: StreamGeometry) -> None:
        super().__init__()
        self.front = front
        self.head = head
        self.geometry = geometry
        self.window_samples = geometry.window_samples
        self.hop_samples = geometry.hop_samples
        self.source: dict[str, Any] = {}
        self.labels: tuple[str, ...] | None = None

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the carried states, by input name, in input order."""
        return {"audio_in": (1, self.geometry.context_samples), **self.head.state_shapes()}

    def initial_state(self) -> list[torch.Tensor]:
        return [torch.zeros(shape) for shape in self.state_shapes().values()]

    def forward(self, waveform: torch.Tensor, audio_in: torch.Tensor, h_in: torch.Tensor, ctx_in: torch.Tensor,
                pool_in: torch.Tensor, count_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if waveform.dim() != 2 or waveform.shape[0] != 1 or waveform.shape[1] != self.hop_samples:
            raise AudioError(
                f"waveform has shape {tuple(waveform.shape)}; expected one hop, (1, {self.hop_samples}) "
                f"({self.hop_samples / SAMPLE_RATE:g} s at {SAMPLE_RATE} Hz). Feed the stream through "
                "edge_ser.runtime's model.stream(), which cuts chunks of any length into hops."
            )
        window = torch.cat([audio_in, waveform], dim=1)
        features = self.front(window)
        avd, logits, embedding, h_out, ctx_out, pool_out, count_out = self.head(
            features, h_in, ctx_in, pool_in, count_in)
        audio_out = window[:, self.hop_samples:]
        return torch.softmax(logits, dim=-1), avd, embedding, audio_out, h_out, ctx_out, pool_out, count_out

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Deterministic inputs for tracing: a hop of noise and a mid-stream state (count 1)."""
        generator = torch.Generator().manual_seed(0)
        hop = 0.1 * torch.randn(1, self.hop_samples, generator=generator)
        state = [0.1 * torch.randn(shape, generator=generator) for shape in self.state_shapes().values()]
        state[-1] = torch.ones(1, 1)
        return (hop, *state)


def build_streaming_model(fused: FusedSER, *, hop_s: float, gru_form: str = "native") -> StreamingSER:
    """The streaming form of a fused model whose head is a trained :class:`~edge_ser.train.model.TCGRU`
    (``build_fused_model(..., gru_form="native")``): same front and head weights, ``hop_s`` seconds
    per call, the fused model's window as the FM context."""
    from edge_ser.train.model import TCGRU

    if not isinstance(fused.head, TCGRU):
        raise ValueError(
            f"the fused model's head is {type(fused.head).__name__}; expected the training TC-GRU (build the fused "
            "model with gru_form='native'): the streaming head is built from its weights."
        )
    if isinstance(hop_s, bool) or not isinstance(hop_s, (int, float)) or not np.isfinite(hop_s) or hop_s <= 0:
        raise ValueError(f"hop_s={hop_s!r}; expected a positive number of seconds such as 0.5 or 1.0.")
    hop_samples = int(round(hop_s * SAMPLE_RATE))
    geometry = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop_samples)
    head = TCGRUStreamingHead(fused.head, hop_frames=geometry.hop_frames, gru_form=gru_form)
    model = StreamingSER(fused.front, head, geometry=geometry).eval()
    model.source = dict(fused.source)
    model.labels = fused.labels
    return model


def stream_outputs(step: Any, waveform: np.ndarray, *, initial_state: Sequence[np.ndarray],
                   hop_samples: int) -> list[list[np.ndarray]]:
    """Run ``step(inputs) -> outputs`` (the artifact's runner, or a module) over the whole hops of a
    mono ``waveform``, feeding each call's state outputs back; returns each hop's
    ``[probs, avd, embedding]``. The state loop every app writes (edge_ser.runtime does the same)."""
    n_out = len(STREAM_OUTPUT_NAMES) - len(STREAM_STATES)
    state = [np.asarray(s, dtype=np.float32) for s in initial_state]
    results = []
    for start in range(0, len(waveform) - hop_samples + 1, hop_samples):
        hop = np.ascontiguousarray(waveform[start:start + hop_samples], dtype=np.float32).reshape(1, -1)
        outputs = step([hop, *state])
        results.append([np.asarray(o, dtype=np.float32) for o in outputs[:n_out]])
        state = [np.asarray(o, dtype=np.float32) for o in outputs[n_out:]]
    return results


def streaming_calibration_inputs(streaming: nn.Module, waveform: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The calls a stream of ``waveform`` (mono, 16 kHz) makes: for every whole hop, ``(hop, *states)``
    with the states the eager ``streaming`` model carried into it (zeros before the first hop).
    What int8 calibration runs, so observers see the states' real ranges."""
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    hop = streaming.hop_samples
    if len(wave) < 2 * hop:
        raise ValueError(f"calibration audio holds {len(wave)} samples; expected at least two hops ({2 * hop} "
                         "samples) so that calibration sees carried states.")
    state = streaming.initial_state()
    n_out = len(STREAM_OUTPUT_NAMES) - len(state)
    calls = []
    with torch.no_grad():
        for start in range(0, len(wave) - hop + 1, hop):
            inputs = (wave[start:start + hop].reshape(1, -1), *state)
            calls.append(inputs)
            state = list(streaming(*inputs)[n_out:])
    return calls


def offline_stream_reference(fused: FusedSER, waveform: np.ndarray, *, hop_samples: int) -> list[list[np.ndarray]]:
    """What a stream must return, computed without streaming: for every whole hop k of ``waveform``
    (mono, preceded by ``window - hop`` zeros), the foundation model on the window ending with hop
    k, the newest ``hop_frames`` frames of each window joined in time, and the training head
    (``fused.head``, a :class:`~edge_ser.train.model.TCGRU`) on frames 0..k -> ``[probs, avd, embedding]``."""
    geometry = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop_samples)
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(-1)
    padded = torch.cat([torch.zeros(geometry.context_samples), wave])
    frames, results = [], []
    with torch.no_grad():
        for k in range(len(wave) // hop_samples):
            window = padded[k * hop_samples:k * hop_samples + geometry.window_samples].reshape(1, -1)
            frames.append(fused.front(window)[:, -geometry.hop_frames:])
            out = fused.head(torch.cat(frames, dim=1))
            results.append([torch.softmax(out.logits, dim=-1).numpy(), out.avd.numpy(), out.embedding.numpy()])
    return results

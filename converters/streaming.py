"""The streaming form of the fused model: one hop of audio in per call, the state carried out and in.

What one call does (``hop`` new samples, ``window`` samples of foundation-model context), with the
foundation model in ``window`` mode (:class:`StreamingSER`, any family):

1. the window = the previous ``window - hop`` samples (state ``audio``) + the new hop;
2. the truncated foundation model runs on the whole window, as in the windowed artifact.
   Of its frames only the newest ``hop_frames`` (the ones the new hop completes) feed the head;
3. the head (:class:`~edge_ser.converters.export_forms.TCGRUStreamingHead`) advances the GRU over
   those frames from state ``h`` and returns the running estimate.

The stream starts with ``window - hop`` samples of zeros in ``audio`` (every state starts at
zero), so every sample of the stream feeds the head exactly once and the first estimate comes after
one hop. The offline computation it equals (:func:`offline_stream_reference`): the same windows
run through the foundation model, their newest frames joined in time, and the training head
:class:`~edge_ser.train.model.TCGRU` run over all frames so far.

In ``cached`` mode (:class:`CachedStreamingSER`, Whisper) step 2 runs the foundation model on the
hop's frames only, attending to cached keys/values of the ``window - hop`` before them, with
positions counted since the segment start and a running level and log-mel maximum
(:mod:`edge_ser.converters.stream_fm`); two more states carry the cache and the statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_ser.converters.export_forms import TCGRUStreamingHead
from edge_ser.converters.fused import FusedSER, frames_for_window
from edge_ser.converters.stream_fm import (
    FRONT_CONTEXT_SAMPLES,
    CachedWhisperFM,
    cached_reference_frames,
    check_fm_mode,
    resolve_fm_mode,
)
from edge_ser.errors import AudioError
from edge_ser.labels import SAMPLE_RATE
from edge_ser.runtime.artifact import OUTPUT_NAMES

__all__ = ["StreamingSER", "CachedStreamingSER", "StreamGeometry", "stream_geometry", "build_streaming_model",
           "offline_stream_reference",
           "stream_outputs", "streaming_calibration_inputs"]


@dataclasses.dataclass(frozen=True)
class StreamGeometry:
    """How a stream is cut: ``hop_samples`` new samples per call, ``window_samples`` FM context,
    ``hop_frames`` FM frames per hop (the newest ones of each window)."""

    window_samples: int
    hop_samples: int
    hop_frames: int
    window_frames: int
    fm_mode: str = "window"

    @property
    def context_samples(self) -> int:
        """Samples of FM context before the hop (the window's rest): audio in ``window`` mode, cached
        keys/values of ``context_frames`` frames in ``cached`` mode."""
        return self.window_samples - self.hop_samples

    @property
    def context_frames(self) -> int:
        return self.window_frames - self.hop_frames

    @property
    def audio_context_samples(self) -> int:
        """Length of the ``audio_in`` state: the whole context in ``window`` mode, the conv stem's
        receptive field (:data:`~edge_ser.converters.stream_fm.FRONT_CONTEXT_SAMPLES`) in ``cached`` mode."""
        return self.context_samples if self.fm_mode == "window" else FRONT_CONTEXT_SAMPLES


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
    ``STREAM_OUTPUT_NAMES`` (``fm_mode`` window).
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
        _check_hop(waveform, self.hop_samples)
        window = torch.cat([audio_in, waveform], dim=1)
        features = self.front(window)
        avd, logits, embedding, h_out, ctx_out, pool_out, count_out = self.head(
            features, h_in, ctx_in, pool_in, count_in)
        audio_out = window[:, self.hop_samples:]
        return torch.softmax(logits, dim=-1), avd, embedding, audio_out, h_out, ctx_out, pool_out, count_out

    fm_mode = "window"

    @property
    def max_segment_hops(self) -> int | None:
        """Hops one segment may hold (``cached`` mode: one positional row per frame), or None (no limit)."""
        return None

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Deterministic inputs for tracing: a hop of noise and a mid-stream state (count 1)."""
        generator = torch.Generator().manual_seed(0)
        hop = 0.1 * torch.randn(1, self.hop_samples, generator=generator)
        shapes = self.state_shapes()
        state = {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        state["count_in"] = torch.ones(1, 1)
        if "stats_in" in state:  # frames so far = a full cache, a plausible level and log-mel maximum
            state["stats_in"] = torch.tensor([[float(self.geometry.context_frames), 10.0, 16000.0, 0.5]])
        return (hop, *state.values())


class CachedStreamingSER(StreamingSER):
    """:class:`StreamingSER` whose foundation model runs on the hop's frames only, with a key/value
    cache (:class:`~edge_ser.converters.stream_fm.CachedWhisperFM`, ``fm_mode="cached"``).

    ``forward(waveform (1, hop), audio_in (1, 640), h_in, ctx_in, pool_in, count_in, kv_in (k, 2, C, D),
    stats_in (1, 4))`` -> ``(probs, avd, embedding, audio_out, h_out, ctx_out, pool_out, count_out, kv_out,
    stats_out)``, names from :func:`edge_ser.runtime.artifact.stream_io_names` (``"cached"``).
    """

    fm_mode = "cached"

    def __init__(self, front: CachedWhisperFM, head: TCGRUStreamingHead, *, geometry: StreamGeometry) -> None:
        super().__init__(front, head, geometry=geometry)

    @property
    def max_segment_hops(self) -> int:
        return self.front.max_segment_frames // self.geometry.hop_frames

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        fm = self.front.state_shapes()
        return {"audio_in": fm["audio_in"], **self.head.state_shapes(), "kv_in": fm["kv_in"],
                "stats_in": fm["stats_in"]}

    def forward(self, waveform: torch.Tensor, audio_in: torch.Tensor, h_in: torch.Tensor, ctx_in: torch.Tensor,
                pool_in: torch.Tensor, count_in: torch.Tensor, kv_in: torch.Tensor,
                stats_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_hop(waveform, self.hop_samples)
        features, audio_out, kv_out, stats_out = self.front(waveform, audio_in, kv_in, stats_in)
        avd, logits, embedding, h_out, ctx_out, pool_out, count_out = self.head(
            features, h_in, ctx_in, pool_in, count_in)
        return (torch.softmax(logits, dim=-1), avd, embedding, audio_out, h_out, ctx_out, pool_out, count_out,
                kv_out, stats_out)


def _check_hop(waveform: torch.Tensor, hop_samples: int) -> None:
    if waveform.dim() != 2 or waveform.shape[0] != 1 or waveform.shape[1] != hop_samples:
        raise AudioError(
            f"waveform has shape {tuple(waveform.shape)}; expected one hop, (1, {hop_samples}) "
            f"({hop_samples / SAMPLE_RATE:g} s at {SAMPLE_RATE} Hz). Feed the stream through "
            "edge_ser.runtime's model.stream(), which cuts chunks of any length into hops."
        )


def build_streaming_model(fused: FusedSER, *, hop_s: float, gru_form: str = "native",
                          fm_mode: str = "window") -> StreamingSER:
    """The streaming form of a fused model whose head is a trained :class:`~edge_ser.train.model.TCGRU`
    (``build_fused_model(..., gru_form="native")``): same front and head weights, ``hop_s`` seconds
    per call, the fused model's window as the FM context.

    ``fm_mode``: ``"window"`` runs the FM on the whole window every hop (any family);
    ``"cached"`` runs it on the hop's frames with the previous ``window - hop`` as cached keys and
    values, positions counted since the segment start (Whisper; :mod:`edge_ser.converters.stream_fm`);
    ``"auto"``: cached for Whisper, window for the others."""
    from edge_ser.train.ensemble import EnsembleTCGRU
    from edge_ser.train.model import TCGRU

    if isinstance(fused.head, EnsembleTCGRU):
        raise ValueError(
            f"the run is an ensemble of {fused.head.n_members} heads; streaming artifacts are built for one head "
            "(its carried states are one GRU's). Convert the ensemble without --stream-hop (windowed), or stream "
            "one of its member runs.")
    if not isinstance(fused.head, TCGRU):
        raise ValueError(
            f"the fused model's head is {type(fused.head).__name__}; expected the training TC-GRU (build the fused "
            "model with gru_form='native'): the streaming head is built from its weights."
        )
    if isinstance(hop_s, bool) or not isinstance(hop_s, (int, float)) or not np.isfinite(hop_s) or hop_s <= 0:
        raise ValueError(f"hop_s={hop_s!r}; expected a positive number of seconds such as 0.5 or 1.0.")
    spec = getattr(fused.front, "spec", None)
    fm_mode = resolve_fm_mode(fm_mode, feature_model=fused.source.get("feature_model") or type(fused.front).__name__,
                              family=getattr(spec, "family", None))
    hop_samples = int(round(hop_s * SAMPLE_RATE))
    geometry = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop_samples)
    geometry = dataclasses.replace(geometry, fm_mode=fm_mode)
    head = TCGRUStreamingHead(fused.head, hop_frames=geometry.hop_frames, gru_form=gru_form)
    if fm_mode == "cached":
        front = CachedWhisperFM(fused.front, hop_samples=hop_samples, context_frames=geometry.context_frames)
        model: StreamingSER = CachedStreamingSER(front.eval(), head, geometry=geometry).eval()
    else:
        model = StreamingSER(fused.front, head, geometry=geometry).eval()
    model.source = dict(fused.source)
    model.labels = fused.labels
    return model


def stream_outputs(step: Any, waveform: np.ndarray, *, initial_state: Sequence[np.ndarray],
                   hop_samples: int) -> list[list[np.ndarray]]:
    """Run ``step(inputs) -> outputs`` (the artifact's runner, or a module) over the whole hops of a
    mono ``waveform``, feeding each call's state outputs back; returns each hop's
    ``[probs, avd, embedding]``. The state loop every app writes (edge_ser.runtime does the same)."""
    n_out = len(OUTPUT_NAMES)
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
    n_out = len(OUTPUT_NAMES)
    segment = streaming.max_segment_hops
    calls = []
    with torch.no_grad():
        for k, start in enumerate(range(0, len(wave) - hop + 1, hop)):
            if segment and k and k % segment == 0:  # the runtime's segment reset: all but audio_in restart
                state = [state[0], *streaming.initial_state()[1:]]
            inputs = (wave[start:start + hop].reshape(1, -1), *state)
            calls.append(inputs)
            state = list(streaming(*inputs)[n_out:])
    return calls


def offline_stream_reference(fused: FusedSER, waveform: np.ndarray, *, hop_samples: int,
                             fm_mode: str = "window") -> list[list[np.ndarray]]:
    """What a stream must return, computed without streaming: for every whole hop k of ``waveform``
    (mono, preceded by zeros, one segment) the FM frames the stream feeds the head, joined in time,
    and the training head (``fused.head``, a :class:`~edge_ser.train.model.TCGRU`) on frames 0..k
    -> ``[probs, avd, embedding]``.

    The frames: ``window`` mode, the foundation model on the window ending with hop k (preceded by
    ``window - hop`` zeros), its newest ``hop_frames`` frames; ``cached`` mode,
    :func:`edge_ser.converters.stream_fm.cached_reference_frames` (running level and log-mel maximum,
    the encoder's blocks over all frames with positions since the start and a block mask)."""
    geometry = stream_geometry(fused.front, window_samples=fused.window_samples, hop_samples=hop_samples)
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(-1)
    padded = torch.cat([torch.zeros(geometry.context_samples), wave])
    frames, results = [], []
    m = geometry.hop_frames
    cached = None
    if check_fm_mode(fm_mode, family=getattr(getattr(fused.front, "spec", None), "family", None)) == "cached":
        cached = cached_reference_frames(fused.front, wave.numpy(), hop_samples=hop_samples,
                                         context_frames=geometry.context_frames)
    with torch.no_grad():
        for k in range(len(wave) // hop_samples):
            if cached is not None:
                frames = [cached[:, :(k + 1) * m]]
            else:
                window = padded[k * hop_samples:k * hop_samples + geometry.window_samples].reshape(1, -1)
                frames.append(fused.front(window)[:, -m:])
            out = fused.head(torch.cat(frames, dim=1))
            results.append([torch.softmax(out.logits, dim=-1).numpy(), out.avd.numpy(), out.embedding.numpy()])
    return results

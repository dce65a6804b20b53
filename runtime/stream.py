"""``model.stream()``: audio chunks in as they arrive, one emotion estimate per hop out.

Runs a *streaming* artifact (``edge-ser convert --stream-hop S``; manifest block ``streaming``):
each call of its graph takes one hop of samples plus the carried states and returns the running
estimate plus the next states (docs/streaming.md). This module keeps the states and cuts chunks of
any length into hops; it knows the states only by the manifest's names and shapes.

What an estimate means: the TC-GRU's output over every frame since the start of the segment (the
stream's start, the last :meth:`EmotionStream.reset`, or the last automatic reset every
``segment_s``). It equals the offline computation over the same samples: the same windows through
the foundation model, their newest frames joined, and the training head over them. A segment
reset restarts the head's states; the foundation model keeps its window of real audio.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from edge_ser.errors import AudioError
from edge_ser.runtime.artifact import OUTPUT_NAMES, STREAM_STATES

AUDIO_STATE = STREAM_STATES[0][0]
"""The state holding the FM's left context of audio: kept across segment resets."""

if TYPE_CHECKING:  # pragma: no cover
    from edge_ser.runtime.model import EmotionModel, TimelinePoint

__all__ = ["EmotionStream"]


class EmotionStream:
    """The state loop of a streaming artifact. Create with :meth:`EmotionModel.stream`.

    >>> stream = model.stream(sample_rate=48_000)            # doctest: +SKIP
    >>> for chunk in microphone_chunks():                      # doctest: +SKIP
    ...     for point in stream.push(chunk):
    ...         print(point.end_s, point.prediction.label)
    """

    def __init__(self, model: "EmotionModel", *, sample_rate: int | None = None,
                 segment_s: float | None = None) -> None:
        from edge_ser.audio import check_sample_rate

        manifest = model.manifest
        block = manifest.streaming
        if block is None:
            raise ValueError(
                f"{manifest.root} is a windowed artifact (one {manifest.window_s:g} s window per call, no carried "
                "state); expected a streaming one. Convert with `edge-ser convert ... --stream-hop 1.0`, or use "
                "model.timeline()/timeline_file() for windows every hop_s seconds."
            )
        self._model = model
        self.hop_samples = int(block["hop_samples"])
        self.sample_rate = manifest.sample_rate
        self._state_shapes = [tuple(st["shape"]) for st in block["state"]]
        self._state_names = [st["input"] for st in block["state"]]
        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate, name="stream")
        if rate != self.sample_rate and (not model.resample or model.strict):
            raise AudioError(f"the stream is at {rate} Hz; this artifact takes {self.sample_rate} Hz and resampling is "
                             f"off. Resample to {self.sample_rate} Hz or load the model with resample=True.")
        self.input_rate = rate
        self._resampler = None
        if rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        # fm_mode "cached": the FM counts positions since the segment start, so a segment holds at most
        # max_segment_hops hops (Whisper's 1500 positions, 30 s); without segment_s it restarts there.
        max_hops = block.get("max_segment_hops")
        self.segment_hops = None if max_hops is None else int(max_hops)
        if segment_s is not None:
            hops = float(segment_s) * self.sample_rate / self.hop_samples
            if isinstance(segment_s, bool) or not math.isfinite(hops) or hops < 1 or abs(hops - round(hops)) > 1e-9:
                raise ValueError(f"segment_s={segment_s!r}; expected a positive whole number of hops "
                                 f"({self.hop_samples / self.sample_rate:g} s each), e.g. "
                                 f"{10 * self.hop_samples / self.sample_rate:g}.")
            if max_hops is not None and round(hops) > max_hops:
                raise ValueError(f"segment_s={segment_s!r} is longer than this artifact's segments can be "
                                 f"({max_hops * self.hop_s:g} s: its foundation model counts positions since the "
                                 f"segment start, fm_mode {block.get('fm_mode')!r}). Pass segment_s <= "
                                 f"{max_hops * self.hop_s:g}, or leave it out to restart every "
                                 f"{max_hops * self.hop_s:g} s.")
            self.segment_hops = int(round(hops))
        self._pending = np.zeros(0, np.float32)
        self._hops = 0
        self.reset()

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate

    def reset(self) -> None:
        """Start a new segment of the same, continuous audio: every state but ``audio_in`` back to zeros
        (the head's, so the next estimate pools only what follows; with ``fm_mode`` cached also the
        foundation model's key/value cache, positions and running statistics) while the foundation
        model keeps its left context of real audio (``audio_in``). Samples pushed but not yet a whole
        hop stay pending. For unrelated audio, start a new :meth:`EmotionModel.stream` instead (its
        context starts as zeros)."""
        previous = getattr(self, "_state", None)
        self._state = [previous[i] if previous is not None and name == AUDIO_STATE else np.zeros(shape, np.float32)
                       for i, (name, shape) in enumerate(zip(self._state_names, self._state_shapes))]
        self._segment_start = self._hops

    def push(self, chunk: np.ndarray) -> list["TimelinePoint"]:
        """Add samples (``(samples,)`` or ``(samples, channels)`` float in [-1, 1] at the stream's rate);
        returns one point per hop completed by them (often none or one), in order."""
        samples = self._check_chunk(chunk)
        if self._resampler is not None:
            samples = np.clip(self._resampler.resample_chunk(samples, last=False), -1.0, 1.0).astype(np.float32)
        self._pending = np.concatenate([self._pending, samples])
        points = []
        while len(self._pending) >= self.hop_samples:
            hop, self._pending = self._pending[:self.hop_samples], self._pending[self.hop_samples:]
            points.append(self._run_hop(hop, real_samples=self.hop_samples))
        return points

    def flush(self) -> list["TimelinePoint"]:
        """End of the stream: a last partial hop (if any samples are pending) padded with zeros and run;
        its point ends at the last real sample."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._pending = np.concatenate([self._pending, np.clip(tail, -1.0, 1.0).astype(np.float32)])
        points = []
        while len(self._pending) >= self.hop_samples:
            hop, self._pending = self._pending[:self.hop_samples], self._pending[self.hop_samples:]
            points.append(self._run_hop(hop, real_samples=self.hop_samples))
        if len(self._pending):
            real = len(self._pending)
            hop = np.concatenate([self._pending, np.zeros(self.hop_samples - real, np.float32)])
            self._pending = np.zeros(0, np.float32)
            points.append(self._run_hop(hop, real_samples=real))
        return points

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator["TimelinePoint"]:
        """Push every chunk, then flush: the whole stream's points, as they become available."""
        for chunk in chunks:
            yield from self.push(chunk)
        yield from self.flush()

    # -- internals --------------------------------------------------------------------------
    def _check_chunk(self, chunk: np.ndarray) -> np.ndarray:
        array = np.asarray(chunk)
        where = f"chunk after {self._hops * self.hop_s + len(self._pending) / self.sample_rate:.2f} s of stream"
        if array.dtype.kind in "iu":
            raise AudioError(f"{where} has integer dtype {array.dtype}; expected float samples in [-1, 1]. Convert "
                             "with chunk.astype(np.float32) / 32768 for 16-bit PCM.")
        if array.dtype.kind != "f":
            raise AudioError(f"{where} has dtype {array.dtype}; expected a float32 array of samples.")
        if array.ndim == 2:
            if self._model.strict and array.shape[1] != 1:
                raise AudioError(f"{where} has {array.shape[1]} channels; expected mono with strict=True. Downmix "
                                 "with chunk.mean(axis=1).")
            array = array.mean(axis=1)
        elif array.ndim != 1:
            raise AudioError(f"{where} has shape {array.shape}; expected (samples,) or (samples, channels).")
        if array.size and not np.all(np.isfinite(array)):
            raise AudioError(f"{where} holds NaN or inf; expected finite samples in [-1, 1]. Check the capture "
                             "callback's buffer.")
        if array.size and float(np.max(np.abs(array))) > 1.0:
            raise AudioError(f"{where} has samples up to {float(np.max(np.abs(array))):.3g}; expected floats in "
                             "[-1, 1]. Scale the audio (e.g. divide 16-bit PCM by 32768).")
        return array.astype(np.float32, copy=False)

    def _run_hop(self, hop: np.ndarray, *, real_samples: int) -> "TimelinePoint":
        from edge_ser.runtime.model import TimelinePoint

        if self.segment_hops is not None and self._hops - self._segment_start == self.segment_hops:
            self.reset()
        outputs = self._model.run_stream_hop(hop, self._state)
        n_out = len(outputs) - len(self._state)
        self._state = outputs[n_out:]
        start = self._hops * self.hop_samples
        self._hops += 1
        prediction = self._model._to_prediction(dict(zip(OUTPUT_NAMES, outputs[:n_out])))
        return TimelinePoint(start / self.sample_rate, (start + real_samples) / self.sample_rate, prediction,
                             segment_start_s=self._segment_start * self.hop_samples / self.sample_rate)

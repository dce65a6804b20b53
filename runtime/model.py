"""`edge_ser.runtime.load(artifact_dir)`: the object an app prototype embeds.

Input handling (documented contract, checked against the manifest):

- sample rate: resampled to the artifact's rate (``resample=True``, default) or refused;
- channels: (samples,), (samples, channels) or (channels, samples); multi-channel audio is
  downmixed with a logged note, or refused with ``strict=True``;
- dtype: any real numeric array; integer PCM is refused (convert to float in [-1, 1]);
- NaN/inf, empty and all-zero input: refused with an error that says so;
- length: the graph takes exactly ``window_samples``. A shorter clip is filled by
  repeating it (``pad="repeat"``, default: keeps the clip's statistics, which the
  model pools over time) or with zeros (``pad="zeros"``); clips under
  ``min_duration_s`` are refused. A longer clip is cut into windows, each window is
  run, and the probabilities / A/V/D / embeddings are averaged weighted by the
  number of real samples in each window; :meth:`EmotionModel.timeline` returns the
  per-window results instead.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_ser.errors import AudioError
from edge_ser.runtime.artifact import ArtifactManifest, read_manifest
from edge_ser.runtime.backends import Runner, get_runner

from edge_ser.audio import MIN_DURATION_S

PadMode = Literal["repeat", "zeros"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One clip's emotions: class probabilities by name, A/V/D, embedding."""

    probabilities: dict[str, float]
    arousal: float
    valence: float
    dominance: float
    embedding: np.ndarray
    windows: int = 1

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels, best first."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]

    @property
    def label(self) -> str:
        return self.top_k(1)[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "top_3": self.top_k(3),
            "arousal": self.arousal,
            "valence": self.valence,
            "dominance": self.dominance,
            "embedding_dim": int(self.embedding.shape[-1]),
            "windows": self.windows,
        }


@dataclasses.dataclass(frozen=True)
class TimelinePoint:
    start_s: float
    end_s: float
    prediction: Prediction


class EmotionModel:
    """A loaded artifact. Create with :func:`load`."""

    def __init__(self, manifest: ArtifactManifest, runner: Runner, *, resample: bool, strict: bool,
                 pad: PadMode, min_duration_s: float) -> None:
        if pad not in ("repeat", "zeros"):
            raise ValueError(f"pad={pad!r}; expected 'repeat' or 'zeros'.")
        self.manifest = manifest
        self.runner = runner
        self.resample = resample
        self.strict = strict
        self.pad = pad
        self.min_duration_s = min_duration_s

    # -- input handling -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def window_samples(self) -> int:
        return self.manifest.window_samples

    def prepare(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Validate and convert to 1-D float32 at the artifact's rate (see module docstring)."""
        from edge_ser.audio import validate_waveform

        array = np.asarray(waveform)
        if array.dtype.kind in "iu":
            raise AudioError(
                f"waveform has integer dtype {array.dtype}; expected float samples in [-1, 1]. "
                "Convert with x.astype(np.float32) / 32768 for 16-bit PCM."
            )
        if array.dtype.kind not in "f":
            raise AudioError(f"waveform has dtype {array.dtype}; expected a float32 array of samples.")
        if int(sample_rate) != self.sample_rate and not self.resample:
            raise AudioError(
                f"audio is at {sample_rate} Hz; this artifact expects {self.sample_rate} Hz and resampling is off. "
                f"Resample to {self.sample_rate} Hz or load the model with resample=True."
            )
        return validate_waveform(array, sample_rate=int(sample_rate), target_sr=self.sample_rate, strict=self.strict,
                                 min_duration_s=self.min_duration_s, name="waveform")

    def fit_window(self, clip: np.ndarray) -> np.ndarray:
        """One window from a clip: cut to `window_samples`, or filled by the pad policy."""
        n = self.window_samples
        if len(clip) >= n:
            return clip[:n]
        if self.pad == "repeat":
            reps = int(np.ceil(n / len(clip)))
            return np.tile(clip, reps)[:n]
        return np.pad(clip, (0, n - len(clip)))

    def windows(self, clip: np.ndarray, *, hop: int | None = None) -> list[tuple[int, int]]:
        """(start, end) sample ranges covering the clip with windows of `window_samples`."""
        n = self.window_samples
        hop = hop or n
        if len(clip) <= n:
            return [(0, len(clip))]
        starts = list(range(0, len(clip) - n + 1, hop))
        if starts[-1] + n < len(clip):
            starts.append(len(clip) - n)  # last window ends at the clip's end: no padding needed
        return [(s, s + n) for s in starts]

    # -- running ----------------------------------------------------------------------
    def run_window(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """Run exactly one window (window_samples,) -> raw outputs (no validation)."""
        return self.runner.run(window.reshape(1, -1).astype(np.float32, copy=False))

    def _to_prediction(self, outputs: dict[str, np.ndarray], *, windows: int = 1) -> Prediction:
        probs = outputs["probs"].reshape(-1)
        avd = outputs["avd"].reshape(-1)
        return Prediction(
            probabilities={name: float(p) for name, p in zip(self.manifest.labels, probs)},
            arousal=float(avd[0]), valence=float(avd[1]), dominance=float(avd[2]),
            embedding=outputs["embedding"].reshape(-1).astype(np.float32), windows=windows,
        )

    def predict(self, waveform: np.ndarray, sample_rate: int) -> Prediction:
        """Emotions of one clip. waveform: (samples,) or (samples, channels) float, any rate."""
        clip = self.prepare(waveform, sample_rate)
        spans = self.windows(clip)
        results = [self.run_window(self.fit_window(clip[s:e])) for s, e in spans]
        weights = np.array([e - s for s, e in spans], dtype=np.float64)
        weights /= weights.sum()
        merged = {name: sum(w * r[name] for w, r in zip(weights, results)) for name in results[0]}
        return self._to_prediction(merged, windows=len(spans))

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """Read an audio file (any format libsndfile reads) and predict."""
        from edge_ser.audio import load_audio

        clip = load_audio(path, target_sr=self.sample_rate, strict=self.strict, min_duration_s=self.min_duration_s)
        return self.predict(clip, self.sample_rate)

    def timeline(self, waveform: np.ndarray, sample_rate: int, *, hop_s: float = 1.0) -> list[TimelinePoint]:
        """An emotion timeline: one prediction per window, windows every `hop_s` seconds."""
        if hop_s <= 0:
            raise ValueError(f"hop_s={hop_s}; expected a positive number of seconds.")
        hop = max(1, int(round(hop_s * self.sample_rate)))
        if hop > self.window_samples:
            raise ValueError(
                f"hop_s={hop_s} is longer than the {self.manifest.window_s:g} s window, so audio between windows "
                f"would be skipped; use hop_s <= {self.manifest.window_s:g}."
            )
        clip = self.prepare(waveform, sample_rate)
        points = []
        for start, end in self.windows(clip, hop=hop):
            out = self.run_window(self.fit_window(clip[start:end]))
            points.append(TimelinePoint(start / self.sample_rate, end / self.sample_rate, self._to_prediction(out)))
        return points


def load(artifact_dir: str | os.PathLike, *, threads: int | None = None, resample: bool = True,
         strict: bool = False, pad: PadMode = "repeat", min_duration_s: float = MIN_DURATION_S,
         verify: bool = True) -> EmotionModel:
    """Load an artifact folder: check its manifest and files, pick the backend from it.

    >>> model = load("artifacts/whisper-base-int8")          # doctest: +SKIP
    >>> model.predict_file("clip.wav").top_k(3)               # doctest: +SKIP
    [('angry', 0.71), ('disgust', 0.12), ('neutral', 0.06)]
    """
    manifest = read_manifest(Path(artifact_dir), verify=verify)
    runner = get_runner(manifest.target, manifest.model_path, threads=threads)
    return EmotionModel(manifest, runner, resample=resample, strict=strict, pad=pad, min_duration_s=min_duration_s)

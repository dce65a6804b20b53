"""`edge_ser.runtime.load(artifact_dir)`: the object an app prototype embeds.

Input handling (documented contract, checked against the manifest):

- sample rate: resampled to the artifact's rate (``resample=True``, default) or refused;
- channels: (samples,), (samples, channels) or (channels, samples); multi-channel audio is
  downmixed with a logged note, or refused with ``strict=True``;
- dtype: any real numeric array; integer PCM is refused (convert to float in [-1, 1]);
- NaN/inf, empty and all-zero input: refused with an error that says so;
- sample rate argument: a whole number of Hz in :data:`edge_ser.audio.SAMPLE_RATE_RANGE`
  (``16000.5`` and ``True`` are refused, not read as 16000 and 1 Hz);
- duration: at most ``max_duration_s`` per call (:data:`edge_ser.audio.MAX_DURATION_S`,
  10 min, by default; None lifts it); :meth:`EmotionModel.timeline_file` reads a file of any
  length block by block instead;
- length: the graph takes exactly ``window_samples``. A shorter clip is filled by
  repeating it (``pad="repeat"``, default: keeps the clip's statistics, which the
  model pools over time) or with zeros (``pad="zeros"``); clips under
  ``min_duration_s`` are refused. A longer clip is cut into windows, each window is
  run, and the probabilities / A/V/D / embeddings are averaged weighted by the
  number of real samples in each window; :meth:`EmotionModel.timeline` returns the
  per-window results instead.

Outputs: class probabilities named by the manifest's labels (checked against the model's
real output width at load); arousal, valence and dominance as the model computes them. They
were trained against targets on a [0, 1] scale, but the A/V/D head is linear (nothing squashes
its output), so a prediction can leave that scale slightly, e.g. -0.06 or 1.04. They are
reported unclipped, as the C++ and Swift starters and the parity checks see them; clip with
``np.clip(x, 0, 1)`` where a display needs the scale.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np

from edge_ser.errors import AudioError, EdgeSerError
from edge_ser.runtime.artifact import OUTPUT_NAMES, ArtifactError, ArtifactManifest, read_manifest
from edge_ser.runtime.targets import Runner, get_runner, get_target

from edge_ser.audio import MAX_DURATION_S, MIN_DURATION_S
from edge_ser.windowing import PadMode, fit_window, span_weights, window_spans

if TYPE_CHECKING:  # pragma: no cover
    from edge_ser.runtime.stream import EmotionStream


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One clip's emotions: class probabilities by name, A/V/D, embedding.

    ``arousal``, ``valence``, ``dominance``: on the [0, 1] scale of the training targets, from a
    linear head, so a value may overshoot it slightly (e.g. -0.06); not clipped (module docstring).
    """

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
    """One prediction of a timeline: the window ``[start_s, end_s)``, or for a stream
    (:meth:`EmotionModel.stream`) the hop just completed, whose estimate pools every frame since
    ``segment_start_s``."""

    start_s: float
    end_s: float
    prediction: Prediction
    segment_start_s: float | None = None


class EmotionModel:
    """A loaded artifact. Create with :func:`load`."""

    def __init__(self, manifest: ArtifactManifest, runner: Runner, *, resample: bool, strict: bool,
                 pad: PadMode, min_duration_s: float, max_duration_s: float | None = MAX_DURATION_S) -> None:
        if pad not in ("repeat", "zeros"):
            raise ValueError(f"pad={pad!r}; expected 'repeat' or 'zeros'.")
        self.manifest = manifest
        self.runner = runner
        self.resample = resample
        self.strict = strict
        self.pad = pad
        self.min_duration_s = min_duration_s
        self.max_duration_s = max_duration_s

    # -- input handling -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def window_samples(self) -> int:
        return self.manifest.window_samples

    def prepare(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Validate and convert to 1-D float32 at the artifact's rate (see module docstring)."""
        from edge_ser.audio import check_sample_rate, validate_waveform

        array = np.asarray(waveform)
        if array.dtype.kind in "iu":
            raise AudioError(
                f"waveform has integer dtype {array.dtype}; expected float samples in [-1, 1]. "
                "Convert with x.astype(np.float32) / 32768 for 16-bit PCM."
            )
        if array.dtype.kind not in "f":
            raise AudioError(f"waveform has dtype {array.dtype}; expected a float32 array of samples.")
        rate = check_sample_rate(sample_rate, name="waveform")
        if rate != self.sample_rate and not self.resample:
            raise AudioError(
                f"audio is at {rate} Hz; this artifact expects {self.sample_rate} Hz and resampling is off. "
                f"Resample to {self.sample_rate} Hz or load the model with resample=True."
            )
        return validate_waveform(array, sample_rate=rate, target_sr=self.sample_rate, strict=self.strict,
                                 min_duration_s=self.min_duration_s, name="waveform",
                                 max_duration_s=self.max_duration_s)

    def fit_window(self, clip: np.ndarray) -> np.ndarray:
        """One window from a clip: cut to `window_samples`, or filled by the pad policy."""
        return fit_window(clip, self.window_samples, pad=self.pad)

    def windows(self, clip: np.ndarray, *, hop: int | None = None) -> list[tuple[int, int]]:
        """(start, end) sample ranges covering the clip with windows of `window_samples`."""
        return window_spans(len(clip), self.window_samples, hop=hop)

    # -- running ----------------------------------------------------------------------
    def run_window(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """Run exactly one window (window_samples,) -> raw outputs (no validation)."""
        if self.manifest.streaming is not None:
            raise ValueError(
                f"{self.manifest.root} is a streaming artifact (one {self.manifest.hop_samples}-sample hop per call "
                "with carried state); predict/timeline run windowed artifacts. Use model.stream() (or "
                "`edge-ser predict --stream`), or convert without --stream-hop for a windowed artifact."
            )
        try:
            return self.runner.run(window.reshape(1, -1).astype(np.float32, copy=False))
        except RuntimeError as exc:  # a backend failure on a valid window: the model file is at fault
            if isinstance(exc, EdgeSerError):
                raise
            raise ArtifactError(
                f"{self.manifest.model_path}: the {self.manifest.target} runtime failed on a valid "
                f"{self.window_samples}-sample window ({type(exc).__name__}: {str(exc).strip()[:300]}); expected the "
                "model written by `edge-ser convert`. Copy the artifact again or re-convert it."
            ) from None

    def stream(self, *, sample_rate: int | None = None, segment_s: float | None = None) -> "EmotionStream":
        """A stream for a streaming artifact: push chunks of any length as they arrive, get one
        :class:`TimelinePoint` per completed hop (:class:`edge_ser.runtime.stream.EmotionStream`).

        ``sample_rate``: the chunks' rate (default: the artifact's; others are resampled as they
        stream). ``segment_s``: start a new segment (states back to zero) every so many seconds, a
        whole number of hops; default None: one segment, every estimate pools the whole stream so far.
        """
        from edge_ser.runtime.stream import EmotionStream

        return EmotionStream(self, sample_rate=sample_rate, segment_s=segment_s)

    def stream_file(self, path: str | os.PathLike, *, chunk_s: float = 0.1,
                    segment_s: float | None = None) -> Iterator[TimelinePoint]:
        """Stream an audio file through :meth:`stream` in chunks of ``chunk_s`` seconds (as a live
        capture would deliver them); yields one point per hop, the last partial hop zero-padded."""

        path = Path(path)
        handle = _open_sound_file(path)
        if isinstance(chunk_s, bool) or not isinstance(chunk_s, (int, float)) or not (
                np.isfinite(chunk_s) and chunk_s > 0):
            raise ValueError(f"chunk_s={chunk_s!r}; expected a positive number of seconds such as 0.1.")
        with handle:
            stream = self.stream(sample_rate=handle.samplerate, segment_s=segment_s)
            block = max(1, int(round(chunk_s * handle.samplerate)))
            yield from stream.run(handle.blocks(blocksize=block, dtype="float32", always_2d=True))

    def run_stream_hop(self, hop: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """One call of a streaming artifact: ``hop`` (hop_samples,) and the states in manifest order ->
        every output (probs, avd, embedding, then the next states). No validation: use :meth:`stream`."""
        try:
            return self.runner.run_all([hop.reshape(1, -1).astype(np.float32, copy=False), *state])
        except RuntimeError as exc:
            if isinstance(exc, EdgeSerError):
                raise
            raise ArtifactError(
                f"{self.manifest.model_path}: the {self.manifest.target} runtime failed on a valid "
                f"{self.manifest.hop_samples}-sample hop ({type(exc).__name__}: {str(exc).strip()[:300]}); expected "
                "the model written by `edge-ser convert --stream-hop`. Copy the artifact again or re-convert it."
            ) from None

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
        weights = span_weights(spans)
        merged = {name: sum(w * r[name] for w, r in zip(weights, results)) for name in results[0]}
        return self._to_prediction(merged, windows=len(spans))

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """Read an audio file (any format libsndfile reads) and predict."""
        from edge_ser.audio import load_audio

        clip = load_audio(path, target_sr=self.sample_rate, strict=self.strict, min_duration_s=self.min_duration_s,
                          max_duration_s=self.max_duration_s)
        return self.predict(clip, self.sample_rate)

    def _hop(self, hop_s: float) -> int:
        if isinstance(hop_s, bool) or not isinstance(hop_s, (int, float, np.integer, np.floating)) or not (
                np.isfinite(hop_s) and hop_s > 0):
            raise ValueError(f"hop_s={hop_s!r}; expected a positive, finite number of seconds such as 1.0.")
        hop = max(1, int(round(hop_s * self.sample_rate)))
        if hop > self.window_samples:
            raise ValueError(
                f"hop_s={hop_s} is longer than the {self.manifest.window_s:g} s window, so audio between windows "
                f"would be skipped; use hop_s <= {self.manifest.window_s:g}."
            )
        return hop

    def timeline(self, waveform: np.ndarray, sample_rate: int, *, hop_s: float = 1.0) -> list[TimelinePoint]:
        """An emotion timeline: one prediction per window, windows every `hop_s` seconds."""
        hop = self._hop(hop_s)
        clip = self.prepare(waveform, sample_rate)
        points = []
        for start, end in self.windows(clip, hop=hop):
            out = self.run_window(self.fit_window(clip[start:end]))
            points.append(TimelinePoint(start / self.sample_rate, end / self.sample_rate, self._to_prediction(out)))
        return points

    def timeline_file(self, path: str | os.PathLike, *, hop_s: float = 1.0,
                      block_s: float = 10.0) -> Iterator[TimelinePoint]:
        """An emotion timeline of an audio file of any length, read `block_s` seconds at a time.

        Yields the same windows as :meth:`timeline` on the whole file (windows every `hop_s`
        seconds, the last one aligned to the file's end), but holds only about one block and
        one window in memory, so there is no duration limit. The header's sample rate is checked
        first; a block with NaN/inf or samples outside [-1, 1] raises AudioError when it is
        reached, and a file that is digital silence throughout raises once it has been read.
        Other rates are resampled as they stream (soxr), several channels averaged (both
        refused with ``strict``).
        """
        from edge_ser.audio import validate_waveform

        hop, n = self._hop(hop_s), self.window_samples
        path = Path(path)
        buffer, buffer_start, next_start, last_start = np.zeros(0, np.float32), 0, 0, None
        for chunk in self._file_chunks(path, block_s=block_s):
            buffer = np.concatenate([buffer, chunk])
            while next_start + n <= buffer_start + len(buffer):
                yield self._timeline_point(buffer, buffer_start, next_start)
                last_start, next_start = next_start, next_start + hop
            end = buffer_start + len(buffer)
            keep_from = min(next_start, max(end - n, 0))  # the last n samples may make the final window
            if keep_from > buffer_start:
                buffer, buffer_start = buffer[keep_from - buffer_start:], keep_from
        end = buffer_start + len(buffer)
        if last_start is None:  # shorter than one window: the whole clip, checked and padded as timeline() does
            clip = validate_waveform(buffer, sample_rate=self.sample_rate, target_sr=self.sample_rate,
                                     min_duration_s=self.min_duration_s, name=str(path))
            yield TimelinePoint(0.0, len(clip) / self.sample_rate, self._to_prediction(self.run_window(
                self.fit_window(clip))))
        elif last_start + n < end:
            yield self._timeline_point(buffer, buffer_start, end - n)

    def _file_chunks(self, path: Path, *, block_s: float) -> Iterator[np.ndarray]:
        """The audio of ``path`` read ``block_s`` seconds at a time, as mono float32 chunks at the
        artifact's rate (resampled as they stream), clipped to [-1, 1]; the last chunk flushes the
        resampler. Checks the header's rate and format first, each block when it is read, and, once
        the file is exhausted, that it is not digital silence (AudioError, see :meth:`timeline_file`)."""
        import soxr

        from edge_ser.audio import SILENCE_PEAK, check_sample_rate

        handle = _open_sound_file(path)
        with handle:
            rate = check_sample_rate(handle.samplerate, name=str(path))
            if self.strict and (handle.channels > 1 or rate != self.sample_rate):
                raise AudioError(f"{path} has {handle.channels} channel(s) at {rate} Hz; expected mono at "
                                 f"{self.sample_rate} Hz with strict=True. Convert it (`sox in out -c 1 -r "
                                 f"{self.sample_rate}`) or load the model without strict.")
            if rate != self.sample_rate and not self.resample:
                raise AudioError(f"{path} is at {rate} Hz; this artifact expects {self.sample_rate} Hz and resampling "
                                 f"is off. Resample it or load the model with resample=True.")
            stream = (soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
                      if rate != self.sample_rate else None)
            peak, read = 0.0, 0
            blocks = handle.blocks(blocksize=max(1, int(block_s * rate)), dtype="float32", always_2d=True)
            for block in (*blocks, None):
                if block is None:  # end of file: flush the resampler
                    chunk = stream.resample_chunk(np.zeros(0, np.float32), last=True) if stream else np.zeros(0)
                else:
                    mono = block.mean(axis=1, dtype=np.float32)
                    if not np.all(np.isfinite(mono)) or (mono.size and float(np.max(np.abs(mono))) > 1.0):
                        raise AudioError(
                            f"{path}: the block at {read / rate:.1f} s holds NaN/inf or samples outside [-1, 1]; "
                            "expected finite samples in [-1, 1]. Re-export the audio (normalised) and try again."
                        )
                    read += len(mono)
                    peak = max(peak, float(np.max(np.abs(mono))) if mono.size else 0.0)
                    chunk = stream.resample_chunk(mono, last=False) if stream else mono
                yield np.clip(chunk, -1.0, 1.0).astype(np.float32)
        if peak < SILENCE_PEAK:
            raise AudioError(f"{path} is digital silence (peak {peak:.2e}); expected speech. Remove the file or "
                             "check the recording/export.")

    def _timeline_point(self, buffer: np.ndarray, buffer_start: int, start: int) -> TimelinePoint:
        n = self.window_samples
        window = buffer[start - buffer_start:start - buffer_start + n]
        return TimelinePoint(start / self.sample_rate, (start + n) / self.sample_rate,
                             self._to_prediction(self.run_window(window)))


def load(artifact_dir: str | os.PathLike, *, threads: int | None = None, resample: bool = True,
         strict: bool = False, pad: PadMode = "repeat", min_duration_s: float = MIN_DURATION_S,
         verify: bool = True, max_duration_s: float | None = MAX_DURATION_S) -> EmotionModel:
    """Load an artifact folder: check its manifest and files, pick the backend from it.

    Raises ArtifactError (edge_ser.runtime) for an artifact that is not what its manifest says:
    an edited manifest, a modified, corrupted or unlisted file, a path outside the folder, a
    manifest that does not describe the model's real input and outputs. `verify=False` skips
    only the sha256 of the files (the manifest and the model file's structure are still checked).

    >>> model = load("artifacts/whisper-base-int8")          # doctest: +SKIP
    >>> model.predict_file("clip.wav").top_k(3)               # doctest: +SKIP
    [('angry', 0.71), ('disgust', 0.12), ('neutral', 0.06)]
    """
    manifest = read_manifest(Path(artifact_dir), verify=verify)
    check_file = get_target(manifest.target).check_file
    if check_file is not None:
        check_file(manifest.model_path)
    runner = get_runner(manifest.target, manifest.model_path, threads=threads)
    check_model_io(manifest, runner)
    return EmotionModel(manifest, runner, resample=resample, strict=strict, pad=pad, min_duration_s=min_duration_s,
                        max_duration_s=max_duration_s)


def check_model_io(manifest: ArtifactManifest, runner: Runner) -> None:
    """The manifest's window, labels and dimensions against the model's real input and outputs
    (where the backend reports them). Raises ArtifactError on any disagreement."""
    problems = []
    if runner.input_shape is not None and not manifest.streaming and runner.input_shape[-1] not in (
            None, manifest.window_samples):
        problems.append(f"the model takes {runner.input_shape[-1]} samples, the manifest's window_samples is "
                        f"{manifest.window_samples}")
    expected_outputs = [spec["name"] for spec in manifest.outputs] if manifest.streaming else list(OUTPUT_NAMES)
    if runner.input_shape is not None and manifest.streaming and runner.input_shape[-1] not in (
            None, manifest.hop_samples):
        problems.append(f"the model takes {runner.input_shape[-1]} samples per call, the manifest's hop_samples is "
                        f"{manifest.hop_samples}")
    if runner.output_shapes is not None:
        if len(runner.output_shapes) != len(expected_outputs):
            problems.append(f"the model has {len(runner.output_shapes)} outputs; expected {expected_outputs}")
        else:
            for name, shape, names in (("probs", runner.output_shapes[0], manifest.labels),
                                       ("avd", runner.output_shapes[1], manifest.dimensions)):
                if shape and shape[-1] not in (None, len(names)):
                    problems.append(f"the model's {name!r} output has {shape[-1]} values, the manifest names "
                                    f"{len(names)} ({list(names)})")
    if problems:
        raise ArtifactError(
            f"{manifest.root}: the manifest does not describe its model: {'; '.join(problems)}. Expected the manifest "
            "written with this model by `edge-ser convert`; copy the artifact folder again or re-convert it."
        )


def _open_sound_file(path: Path) -> Any:
    """``soundfile.SoundFile(path)``; an unreadable file raises AudioError saying what to do."""
    import soundfile as sf

    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(f"cannot read audio file {path}: {str(exc).strip()!r}. Expected a WAV/FLAC/OGG file "
                         "libsndfile can decode; re-encode it (e.g. `sox in.xyz -c 1 -r 16000 out.flac`).") from exc

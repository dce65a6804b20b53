"""Audio in and out: every waveform inside edge-ser is 1-D float32 mono at 16 kHz.

Files are read with libsndfile (``soundfile``) and resampled with ``soxr``. Anything
that can be fixed without guessing (stereo, another sample rate, int16 PCM) is fixed
with a logged note, unless ``strict=True`` asks for an error instead; anything that
cannot (NaN, silence, too short, unreadable) raises :class:`~edge_ser.errors.AudioError`
with what was received, what was expected and how to fix it.

>>> import numpy as np
>>> x = validate_waveform(np.ones((2, 1600), dtype=np.float32) * 0.1, sample_rate=16_000)
>>> x.shape, x.dtype
((1600,), dtype('float32'))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edge_ser.errors import AudioError
from edge_ser.io import atomic_path
from edge_ser.labels import SAMPLE_RATE

logger = logging.getLogger(__name__)

MIN_DURATION_S: float = 0.25
"""Shortest input (seconds) the models accept: the TC-GRU's kernel-3 conv and the FM
front ends need a handful of 20 ms frames; shorter clips carry no usable emotion cue."""

MAX_CHANNELS: int = 8
"""A 2-D array axis this short or shorter is taken to be the channel axis."""

CLIP_LEVEL: float = 0.999
"""|x| at or above this counts as a clipped sample."""

CLIP_WARN_FRACTION: float = 0.001
"""Warn when at least this fraction of samples is clipped (0.1 %)."""

SILENCE_PEAK: float = 0.5 / 32768.0
"""A peak below half an int16 step is digital silence: nothing survives 16-bit storage."""

SAMPLE_RATE_RANGE: tuple[int, int] = (4_000, 384_000)
"""Sample rates (Hz, inclusive) audio may have. Below 4 kHz nothing of speech above 2 kHz is left;
384 kHz is the highest rate audio interfaces record. The bounds also cap the resampling factor:
a file whose header claimed 1 Hz would otherwise be resampled 16,000-fold (a 48 KB WAV grew
past 3.7 GB)."""

MAX_DURATION_S: float = 600.0
"""Longest audio (seconds) :func:`load_audio` decodes, and the runtime takes, in one call: 10 min
is about 38 MB at 16 kHz, 230 MB as 48 kHz stereo float while it is decoded. Pass
``max_duration_s=None`` to lift it, or read longer recordings block by block with
:meth:`edge_ser.runtime.EmotionModel.timeline_file`."""

_WRITE_FORMATS = {".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "FLOAT")}


CLIP_WARNINGS_SHOWN: int = 3
"""Clipping warnings shown per process at WARNING level; later ones go to DEBUG. A corpus copy made
louder on purpose (``edge-ser data conditions``, gain +20 dB) clips in hundreds of files and
records it in its manifest; one line per file would bury everything else in the log."""
_clip_warnings = {"count": 0}


def _warn_clipping(name: str, clipped: int, size: int) -> None:
    _clip_warnings["count"] += 1
    count = _clip_warnings["count"]
    level = logging.WARNING if count <= CLIP_WARNINGS_SHOWN else logging.DEBUG
    more = (" (further clipping warnings in this process are logged at DEBUG level, -vv)"
            if count == CLIP_WARNINGS_SHOWN else "")
    logger.log(level, "%s: %d of %d samples (%.2f%%) are clipped at |x| >= %.3f; emotion cues may be distorted%s",
               name, clipped, size, 100.0 * clipped / size, CLIP_LEVEL, more)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _channel_axis(shape: tuple[int, int], *, name: str) -> int:
    """Which axis of a 2-D waveform holds channels: 0 (channels, samples) or 1 (samples, channels)."""
    rows, cols = shape
    rows_small, cols_small = rows <= MAX_CHANNELS, cols <= MAX_CHANNELS
    if cols_small and not rows_small:
        return 1
    if rows_small and not cols_small:
        return 0
    if rows == 1 or cols == 1:  # (1, n) / (n, 1) with n tiny: mono either way
        return 1 if cols == 1 else 0
    raise AudioError(
        f"{name} has shape {shape}: cannot tell which axis holds channels. Expected (samples,), "
        f"(samples, channels) or (channels, samples) with at most {MAX_CHANNELS} channels and more "
        f"samples than channels. Pass a 1-D mono array, e.g. x.mean(axis=<channel axis>)."
    )


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels of (samples,), (samples, channels) or (channels, samples) -> (samples,) float32.

    >>> to_mono(np.array([[0.2, 0.4], [0.0, 1.0]] * 8, dtype=np.float32))[:2].tolist()
    [0.30000001192092896, 0.5]
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise AudioError(
            f"to_mono received an array with {arr.ndim} dimensions (shape {arr.shape}); expected 1-D "
            "(samples,) or 2-D (samples, channels). Remove batch/extra axes first."
        )
    axis = _channel_axis(arr.shape, name="waveform")
    return np.ascontiguousarray(arr.astype(np.float32).mean(axis=axis), dtype=np.float32)


def check_sample_rate(sample_rate: object, *, name: str = "audio") -> int:
    """`sample_rate` as an int when it is a whole number of Hz within :data:`SAMPLE_RATE_RANGE`.

    Refuses booleans, fractional rates (16000.5 is not 16000) and implausible ones with an
    AudioError; a float holding a whole number (16000.0) is accepted.

    >>> check_sample_rate(16000.0)
    16000
    >>> check_sample_rate(True)
    Traceback (most recent call last):
    ...
    edge_ser.errors.AudioError: audio: sample_rate=True is not a sample rate; expected an integer number of Hz from 4000 to 384000, e.g. 16000.
    """
    low, high = SAMPLE_RATE_RANGE
    expected = f"expected an integer number of Hz from {low} to {high}, e.g. 16000"
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"{name}: sample_rate={sample_rate!r} is not a sample rate; {expected}.")
    rate = float(sample_rate)
    if not np.isfinite(rate) or rate != int(rate):
        raise AudioError(f"{name}: sample_rate={sample_rate!r} is not a whole number of Hz; {expected}. "
                         "Pass the rate the audio was recorded at, as an int.")
    if not low <= rate <= high:
        raise AudioError(
            f"{name}: sample_rate={sample_rate!r} Hz is outside the range edge-ser accepts; {expected}. A header "
            "claiming such a rate is broken (resampling from it would multiply the data thousands of times): "
            "re-encode the file at its true rate (e.g. `sox in.wav -r 16000 out.flac`)."
        )
    return int(rate)


def check_duration(n_samples: int, sample_rate: int, *, max_duration_s: float | None, name: str = "audio") -> None:
    """Refuse audio longer than `max_duration_s` seconds (no limit when None) before it is decoded or resampled."""
    if max_duration_s is None:
        return
    duration = n_samples / float(sample_rate)
    if duration > max_duration_s:
        raise AudioError(
            f"{name} is {duration:.1f} s long ({n_samples} samples at {sample_rate} Hz); expected at most "
            f"{max_duration_s:g} s per call. Read longer recordings block by block with "
            "EmotionModel.timeline_file(path) (edge_ser.runtime), cut them into parts, or pass max_duration_s=None "
            "if the memory is there."
        )


def resample(x: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample (samples,) or (samples, channels) from `orig_sr` to `target_sr` Hz with soxr (HQ).

    Returns float32; the output has round(samples * target_sr / orig_sr) samples.
    """
    for label, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
            raise AudioError(f"{label}={rate!r} is not a positive integer sample rate in Hz; e.g. 16000.")
        check_sample_rate(rate, name=label)
    arr = np.asarray(x, dtype=np.float32)
    if orig_sr == target_sr:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(soxr.resample(arr, int(orig_sr), int(target_sr), quality="HQ"), dtype=np.float32)


def validate_waveform(
    x: np.ndarray,
    *,
    sample_rate: int,
    target_sr: int = SAMPLE_RATE,
    strict: bool = False,
    min_duration_s: float | None = None,
    name: str = "waveform",
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Check a waveform and return it as contiguous (samples,) float32 mono at `target_sr` Hz.

    Accepts (samples,), (samples, channels) or (channels, samples) with at most 8 channels;
    float input must lie in [-1, 1]; integer input (int16/int32/uint8 PCM) is scaled to it.
    Fixed with a logged note unless `strict`: several channels (averaged), another sample
    rate (soxr), float input holding int16-range whole numbers (divided by 32768).
    Always an error: non-numeric, empty, >2 dims, NaN/inf, digital silence, other values
    outside [-1, 1], shorter than `min_duration_s` seconds (no check when None; pass
    :data:`MIN_DURATION_S` for model input), longer than `max_duration_s` (no check when None),
    a sample rate that is not a whole number of Hz in :data:`SAMPLE_RATE_RANGE`. Many clipped
    samples only log a warning.
    """
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise AudioError(
            f"{name} has dtype {arr.dtype} ({type(x).__name__}); expected a numeric array of samples "
            "(float32 in [-1, 1] or int16 PCM). Load files with edge_ser.audio.load_audio."
        )
    if arr.size == 0:
        raise AudioError(f"{name} is empty (shape {arr.shape}); expected at least one sample. "
                         "Check the file or the slicing that produced it.")
    if arr.ndim == 0 or arr.ndim > 2:
        raise AudioError(
            f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected (samples,), (samples, channels) "
            "or (channels, samples). Pass one utterance at a time; squeeze batch axes."
        )
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise AudioError(f"{name}: sample_rate={sample_rate!r} is not a positive integer in Hz; e.g. 16000.")
    check_sample_rate(sample_rate, name=name)
    n_samples = arr.shape[0] if arr.ndim == 1 else max(arr.shape)
    check_duration(int(n_samples), int(sample_rate), max_duration_s=max_duration_s, name=name)

    if arr.dtype.kind in "iu":
        arr = _pcm_to_float(arr)
    else:
        arr = arr.astype(np.float32, copy=False)

    if arr.ndim == 2:
        axis = _channel_axis(arr.shape, name=name)
        channels = arr.shape[axis]
        if channels > 1:
            if strict:
                raise AudioError(
                    f"{name} has {channels} channels (shape {arr.shape}); expected mono. Downmix with "
                    "edge_ser.audio.to_mono(x) or call without strict=True to average the channels."
                )
            logger.info("%s: %d channels averaged to mono", name, channels)
        arr = arr.mean(axis=axis, dtype=np.float32)

    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise AudioError(
            f"{name} contains {bad} NaN/inf sample(s) out of {arr.size}; expected finite samples. "
            "The file or an upstream computation is broken: re-export the audio or fix the producer."
        )
    peak = float(np.max(np.abs(arr)))
    if peak > 1.0:
        arr = _rescale_out_of_range(arr, peak=peak, strict=strict, name=name)
        peak = float(np.max(np.abs(arr)))
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"{name} is digital silence (all {arr.size} samples are zero or below one int16 step, peak "
            f"{peak:.2e}); expected speech. Remove the file or check the recording/export."
        )
    clipped = int(np.count_nonzero(np.abs(arr) >= CLIP_LEVEL))
    if clipped and clipped >= CLIP_WARN_FRACTION * arr.size:
        _warn_clipping(name, clipped, arr.size)

    if sample_rate != target_sr:
        if strict:
            raise AudioError(
                f"{name} is sampled at {sample_rate} Hz; expected {target_sr} Hz. Resample with "
                f"edge_ser.audio.resample(x, orig_sr={sample_rate}, target_sr={target_sr}) or call without strict=True."
            )
        logger.info("%s: resampled %d Hz -> %d Hz", name, sample_rate, target_sr)
        arr = resample(arr, orig_sr=int(sample_rate), target_sr=int(target_sr))
        # soxr's band-limited interpolation can overshoot full scale by a few percent near clipped peaks.
        np.clip(arr, -1.0, 1.0, out=arr)

    if min_duration_s is not None:
        duration = arr.size / float(target_sr)
        if duration < min_duration_s:
            needed = int(np.ceil(min_duration_s * target_sr))
            raise AudioError(
                f"{name} is {_fmt_s(duration)} long ({arr.size} samples at {target_sr} Hz); expected at least "
                f"{_fmt_s(min_duration_s)} ({needed} samples). Pad it, e.g. np.pad(x, (0, {needed - arr.size})), "
                "or drop the utterance."
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _pcm_to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:  # 8-bit PCM is unsigned with 128 as zero
        return (arr.astype(np.float32) - 128.0) / 128.0
    scale = float(np.iinfo(arr.dtype).max) + 1.0
    return (arr.astype(np.float64) / scale).astype(np.float32)


def _rescale_out_of_range(arr: np.ndarray, *, peak: float, strict: bool, name: str) -> np.ndarray:
    looks_int16 = peak <= 32768.0 and bool(np.all(arr == np.round(arr)))
    if looks_int16 and not strict:
        logger.warning("%s: float samples are whole numbers up to %g, which looks like int16 PCM; "
                       "divided by 32768", name, peak)
        return arr / np.float32(32768.0)
    hint = (
        "It looks like int16 PCM stored as float: divide by 32768 (or call without strict=True)."
        if looks_int16
        else "Normalise it, e.g. x / np.abs(x).max(), or read files with edge_ser.audio.load_audio."
    )
    raise AudioError(
        f"{name} is not normalised: peak |x| = {peak:g}; expected float samples in [-1, 1]. {hint}"
    )


def load_audio(
    path: str | os.PathLike,
    *,
    target_sr: int = SAMPLE_RATE,
    strict: bool = False,
    min_duration_s: float | None = None,
    max_duration_s: float | None = MAX_DURATION_S,
) -> np.ndarray:
    """Read an audio file as (samples,) float32 mono at `target_sr` Hz, then :func:`validate_waveform` it.

    Stereo files are averaged and other rates resampled (logged at INFO); with `strict`
    both raise AudioError instead. Missing or unreadable files raise AudioError with
    libsndfile's reason. The header is checked before anything is decoded: a sample rate
    outside :data:`SAMPLE_RATE_RANGE` or a duration over `max_duration_s` seconds
    (:data:`MAX_DURATION_S` by default; None lifts it) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(
            f"audio file {path} does not exist (or is not a file); expected a readable WAV/FLAC file. "
            "Check the path, or the corpus's audio_root in its manifest.json."
        )
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(
            f"cannot read audio file {path}: libsndfile says {str(exc).strip()!r}. Expected a WAV/FLAC/OGG file "
            "libsndfile can decode; re-encode it (e.g. `sox in.xyz -c 1 -r 16000 out.flac`) or drop it from the corpus."
        ) from exc
    check_sample_rate(info.samplerate, name=str(path))
    check_duration(int(info.frames), int(info.samplerate), max_duration_s=max_duration_s, name=str(path))
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(
            f"cannot read audio file {path}: libsndfile says {str(exc).strip()!r}. Expected a WAV/FLAC/OGG file "
            "libsndfile can decode; re-encode it (e.g. `sox in.xyz -c 1 -r 16000 out.flac`) or drop it from the corpus."
        ) from exc
    channels = data.shape[1]
    if channels > 1:
        if strict:
            raise AudioError(
                f"{path} has {channels} channels; expected mono. Downmix it (`sox in out -c 1`) or "
                "load without strict to average the channels."
            )
        logger.info("%s: %d channels averaged to mono", path, channels)
    # (frames, channels) from libsndfile is unambiguous, so downmix here rather than guess the axis.
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    return validate_waveform(mono, sample_rate=int(rate), target_sr=target_sr, strict=strict,
                             min_duration_s=min_duration_s, name=str(path))


def write_audio(
    path: str | os.PathLike,
    x: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    subtype: str | None = None,
) -> Path:
    """Write (samples,) or (samples, channels) float audio in [-1, 1] atomically.

    The format follows the suffix: ``.flac`` (PCM_16) or ``.wav`` (32-bit float, lossless
    for float32 input); `subtype` overrides the sample encoding (e.g. ``"PCM_16"``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_FORMATS:
        raise AudioError(f"cannot write {path}: suffix {path.suffix!r} is not supported; expected one of "
                         f"{sorted(_WRITE_FORMATS)}. Rename the output file.")
    fmt, default_subtype = _WRITE_FORMATS[suffix]
    subtype = subtype or default_subtype
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2) or arr.size == 0:
        raise AudioError(f"cannot write {path}: received dtype {arr.dtype}, shape {arr.shape}; expected a "
                         "non-empty numeric (samples,) or (samples, channels) array.")
    arr = _pcm_to_float(arr) if arr.dtype.kind in "iu" else arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise AudioError(f"cannot write {path}: the waveform contains NaN/inf; expected finite samples.")
    if subtype.startswith("PCM") and np.max(np.abs(arr)) > 1.0:
        raise AudioError(
            f"cannot write {path} as {subtype}: peak |x| = {np.max(np.abs(arr)):g} exceeds 1 and would clip. "
            "Normalise the waveform to [-1, 1] first."
        )
    with atomic_path(path, suffix=suffix) as tmp:
        sf.write(tmp, arr, int(sample_rate), format=fmt, subtype=subtype)
    return path


def audio_duration_s(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header (no decoding)."""
    path = Path(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(
            f"cannot read the header of {path}: {str(exc).strip()!r}. Expected an existing WAV/FLAC file; "
            "check the path or re-encode the file."
        ) from exc
    return float(info.frames) / float(check_sample_rate(info.samplerate, name=str(path)))

"""Noisy test sets: additive noise at a whole-signal SNR (SPEC.md section 7 item 14).

The SNR is 10 log10(P_clean / P_noise) with P the mean square over the whole utterance
(silences included), the noise looped or cropped to the utterance's length. Noise comes
from a registry (:data:`NOISE_SOURCES`): ``white``, ``pink`` (1/f power), ``babble``
(3-5 other speakers of the same corpus talking at once, never the target's speaker), or
the path of a folder of the user's noise files (any rate or channel count).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> clean = 0.1 * np.sin(np.linspace(0, 400 * np.pi, 16000))
>>> noisy = mix_at_snr(clean, white_noise(8000, rng=rng), snr_db=10.0)
>>> round(measure_snr_db(clean, noisy), 3)
10.0
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edge_ser.audio import load_audio, write_audio
from edge_ser.data.table import Corpus, claim_corpus_folder, load_corpus, rows_of_split, save_corpus
from edge_ser.errors import AudioError, CorpusError
from edge_ser.progress import progress_bar

AUDIO_DIR = "audio"
NOISE_FILE_SUFFIXES = (".wav", ".flac", ".ogg", ".aif", ".aiff")
PEAK_LIMIT = 0.99
"""Mixtures whose peak exceeds 1 are scaled (clean and noise together) to this peak."""

SNR_RANGE_DB = (-30.0, 60.0)
"""SNRs a noisy corpus may be made at (dB, inclusive). Below -30 dB the speech is gone under the
noise; above 60 dB the noise of quiet speech falls under one 16-bit step of the stored FLAC, so
the file would be the clean one and its measured SNR infinite."""

BABBLE_TALKERS = (3, 5)
"""Babble sums between 3 and 5 (inclusive) utterances of distinct other speakers."""

NOISE_SOURCES: dict[str, str] = {
    "white": "Gaussian white noise (flat spectrum)",
    "pink": "Gaussian 1/f noise (equal power per octave), generated in the frequency domain",
    "babble": "sum of 3-5 utterances of other speakers of the same corpus, each at equal RMS",
}
"""Built-in noise names; any other value must be a folder of noise audio files."""


class NoiseSource(Protocol):
    """Makes a noise signal for one utterance."""

    def __call__(self, n_samples: int, *, rng: np.random.Generator, speaker: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Return (noise (n_samples,) float64 with non-zero power, details to record)."""
        ...


def scale_noise_to_snr(clean: np.ndarray, noise: np.ndarray, *, snr_db: float) -> np.ndarray:
    """Loop/crop `noise` to len(clean) and scale it so 10 log10(P_clean / P_noise) = `snr_db`.

    clean, noise: (samples,) at the same rate. Returns float64 (len(clean),).
    """
    clean = _check_signal(clean, name="clean signal")
    noise = _check_signal(noise, name="noise signal")
    if not math.isfinite(float(snr_db)):
        raise AudioError(f"snr_db={snr_db!r}; expected a finite number of dB, e.g. 15 or 5.")
    fitted = _fit_length(noise, len(clean), offset=0)
    p_clean, p_noise = _power(clean), _power(fitted)
    if p_clean == 0.0:
        raise AudioError("the clean signal is all zeros; an SNR is undefined for it. Drop the utterance.")
    if p_noise == 0.0:
        raise AudioError(
            f"the noise signal ({len(noise)} samples) is all zeros over the utterance; expected noise with "
            "non-zero power. Check the noise file or source."
        )
    return fitted * math.sqrt(p_clean / (p_noise * 10.0 ** (float(snr_db) / 10.0)))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, *, snr_db: float) -> np.ndarray:
    """Add `noise` to `clean` at a whole-signal SNR of `snr_db` dB.

    clean: (samples,) float; noise: (any length,) float, looped or cropped to len(clean).
    Returns the mixture, (samples,) float32. If the mixture's peak would exceed 1, clean
    and noise are scaled down *together* to a peak of :data:`PEAK_LIMIT`; that changes the
    level, not the SNR (to measure such a mixture, compare it with the clean scaled by the
    same factor, ``mixture.max() / (clean + noise).max()``).
    """
    scaled = scale_noise_to_snr(clean, noise, snr_db=snr_db)
    mixture, _ = _limit_peak(np.asarray(clean, dtype=np.float64) + scaled)
    return mixture.astype(np.float32)


def measure_snr_db(clean: np.ndarray, mixture: np.ndarray) -> float:
    """Whole-signal SNR in dB of `mixture` against `clean`, taking the noise as mixture - clean.

    Both (samples,) at the same rate and level. Returns inf when they are identical.
    """
    clean = _check_signal(clean, name="clean signal")
    mixture = _check_signal(mixture, name="mixture")
    if clean.shape != mixture.shape:
        raise AudioError(
            f"clean has {clean.shape[0]} samples, the mixture {mixture.shape[0]}; expected equal lengths. "
            "Measure the SNR on the same span of both signals."
        )
    p_clean, p_noise = _power(clean), _power(mixture - clean)
    if p_clean == 0.0:
        raise AudioError("the clean signal is all zeros; an SNR is undefined for it.")
    return math.inf if p_noise == 0.0 else 10.0 * math.log10(p_clean / p_noise)


def white_noise(n_samples: int, *, rng: np.random.Generator) -> np.ndarray:
    """(n_samples,) float64 Gaussian white noise with unit RMS."""
    x = rng.standard_normal(int(n_samples))
    return x / (math.sqrt(_power(x)) + 1e-30)


def pink_noise(n_samples: int, *, rng: np.random.Generator) -> np.ndarray:
    """(n_samples,) float64 Gaussian noise with a 1/f power spectrum and unit RMS (DC removed)."""
    n = int(n_samples)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(freqs[1:])  # amplitude 1/sqrt(f) -> power 1/f
    x = np.fft.irfft(spectrum, n=n)
    return x / (math.sqrt(_power(x)) + 1e-30)


@dataclasses.dataclass(frozen=True)
class GeneratedNoise:
    """A noise source that synthesises its signal (white, pink)."""

    name: str
    generate: Callable[..., np.ndarray]

    def __call__(self, n_samples: int, *, rng: np.random.Generator, speaker: str) -> tuple[np.ndarray, dict[str, Any]]:
        return self.generate(n_samples, rng=rng), {"kind": self.name}


class _AudioCache:
    """A small LRU of decoded files: babble and noise folders reuse the same few files a lot."""

    def __init__(self, size: int = 128) -> None:
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._size = size

    def get(self, path: Path) -> np.ndarray:
        key = os.fspath(path)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        audio = load_audio(path, max_duration_s=None).astype(np.float64)  # a long noise recording is fine
        self._items[key] = audio
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return audio


class BabbleNoise:
    """3-5 utterances of distinct other speakers of `corpus`, each at unit RMS, summed.

    Each talker's utterance starts at a random point and loops, so the babble covers the
    whole target utterance. The target's own speaker is never used.
    """

    def __init__(self, corpus: Corpus, *, talkers: tuple[int, int] = BABBLE_TALKERS) -> None:
        self.corpus = corpus
        self.talkers = talkers
        table = corpus.table
        self._rows_by_speaker = {
            spk: list(group.index) for spk, group in table.groupby(table["speaker"].astype(str), sort=True)
        }
        self._cache = _AudioCache()

    def __call__(self, n_samples: int, *, rng: np.random.Generator, speaker: str) -> tuple[np.ndarray, dict[str, Any]]:
        others = [spk for spk in self._rows_by_speaker if spk != str(speaker)]
        if not others:
            raise CorpusError(
                f"babble noise needs utterances of speakers other than {speaker!r}, but corpus "
                f"{self.corpus.name!r} has no other speaker. Use --noise white/pink or a noise folder."
            )
        want = int(rng.integers(self.talkers[0], self.talkers[1] + 1))
        chosen = [others[i] for i in rng.choice(len(others), size=min(want, len(others)), replace=False)]
        babble = np.zeros(int(n_samples), dtype=np.float64)
        used = []
        for spk in chosen:
            rows = self._rows_by_speaker[spk]
            row = self.corpus.table.loc[rows[int(rng.integers(len(rows)))]]
            talker = self._cache.get(self.corpus.audio_path(row))
            rms = math.sqrt(_power(talker))
            if rms == 0.0:
                continue
            babble += _fit_length(talker / rms, len(babble), offset=int(rng.integers(len(talker))))
            used.append(str(row["utt_id"]))
        if not used:
            raise AudioError(
                f"every babble utterance chosen for speaker {speaker!r} was silent; check the corpus audio."
            )
        return babble, {"kind": "babble", "utterances": used}


class FolderNoise:
    """Noise files from a folder (searched recursively); one random file and offset per utterance."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = sorted(
            p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in NOISE_FILE_SUFFIXES
        )
        if not self.files:
            raise AudioError(
                f"noise folder {self.folder} holds no audio files; expected at least one of "
                f"{list(NOISE_FILE_SUFFIXES)} (searched recursively). Add noise recordings (e.g. MUSAN noise/) "
                f"or use one of the built-in noises {sorted(NOISE_SOURCES)}."
            )
        self._cache = _AudioCache()

    def __call__(self, n_samples: int, *, rng: np.random.Generator, speaker: str) -> tuple[np.ndarray, dict[str, Any]]:
        path = self.files[int(rng.integers(len(self.files)))]
        audio = self._cache.get(path)
        return _fit_length(audio, int(n_samples), offset=int(rng.integers(len(audio)))), {
            "kind": "folder", "file": path.relative_to(self.folder).as_posix(),
        }


def resolve_noise(noise: str | os.PathLike, *, corpus: Corpus | None = None) -> NoiseSource:
    """Look up a noise source by name (:data:`NOISE_SOURCES`) or folder path.

    ``babble`` needs the `corpus` whose other speakers make the babble.
    """
    name = os.fspath(noise)
    if name == "white":
        return GeneratedNoise("white", white_noise)
    if name == "pink":
        return GeneratedNoise("pink", pink_noise)
    if name == "babble":
        if corpus is None:
            raise CorpusError("babble noise is made from a corpus's other speakers; pass corpus=<Corpus>.")
        return BabbleNoise(corpus)
    if Path(name).is_dir():
        return FolderNoise(Path(name))
    raise CorpusError(
        f"unknown noise {name!r}: not a built-in noise and not an existing folder. Expected one of "
        f"{sorted(NOISE_SOURCES)} or the path of a folder of noise audio files."
    )


def check_snr_db(snr_db: float) -> float:
    """`snr_db` as a float when it is a finite number of dB in :data:`SNR_RANGE_DB`; else CorpusError.

    >>> check_snr_db(200)
    Traceback (most recent call last):
    ...
    edge_ser.errors.CorpusError: snr_db=200; expected a finite SNR between -30 and 60 dB (e.g. 15 or 5): above 60 dB the noise vanishes under 16-bit storage, below -30 dB the speech does.
    """
    low, high = SNR_RANGE_DB
    try:
        value = float(snr_db)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(snr_db, bool) or not math.isfinite(value) or not low <= value <= high:
        raise CorpusError(
            f"snr_db={snr_db!r}; expected a finite SNR between {low:g} and {high:g} dB (e.g. 15 or 5): above "
            f"{high:g} dB the noise vanishes under 16-bit storage, below {low:g} dB the speech does."
        )
    return value


def make_noisy_corpus(
    *,
    corpus_dir: Path,
    snr_db: float,
    out: Path,
    noise: str = "babble",
    split: str = "test",
    seed: int = 0,
    overwrite: bool = False,
) -> Corpus:
    """Copy one split of a prepared corpus with noise added at `snr_db` dB into `out`.

    Writes ``out/audio/<utt_id>.flac`` (16 kHz, 16-bit), ``utterances.csv`` (the split's rows,
    labels unchanged; ``extras.noisy`` holds the requested and measured SNR, the noise used
    and any joint gain applied against clipping) and ``manifest.json`` (extra ``noisy``:
    snr_db, noise, seed, base corpus name and table sha256). `split` is train/valid/test or
    ``all``. The noise for an utterance depends only on (seed, utt_id), so the same seed
    gives the same noise at every SNR and the same files on every run. The measured SNR is
    taken on the decoded 16-bit file, so it includes quantisation. `snr_db` must lie in
    :data:`SNR_RANGE_DB`. A corpus already in `out` is replaced only with `overwrite`.
    """
    check_snr_db(snr_db)
    claim_corpus_folder(out, overwrite=overwrite)
    base = load_corpus(corpus_dir)
    rows = rows_of_split(base, split)
    source = resolve_noise(noise, corpus=base)
    noise_label = os.fspath(noise) if os.fspath(noise) in NOISE_SOURCES else f"folder:{Path(noise).name}"
    out = Path(out)
    audio_dir = out / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)

    new_rows = []
    measured = []
    used_names: set[str] = set()
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc=f"noisy {float(snr_db):g} dB", unit="utt",
                               leave=False):
        utt_id = str(row["utt_id"])
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _stable_int(utt_id)]))
        clean = load_audio(base.audio_path(row)).astype(np.float64)
        noise_signal, detail = source(len(clean), rng=rng, speaker=str(row["speaker"]))
        scaled = scale_noise_to_snr(clean, noise_signal, snr_db=snr_db)
        mixture, gain = _limit_peak(clean + scaled)
        rel = _file_name(utt_id, used_names)
        write_audio(audio_dir / rel, mixture.astype(np.float32))
        snr_measured = measure_snr_db(clean * gain, load_audio(audio_dir / rel).astype(np.float64))
        measured.append(snr_measured)
        extras = _parse_extras(row["extras"])
        extras["noisy"] = {
            "snr_db": float(snr_db), "snr_db_measured": _json_number(round(snr_measured, 4)), "noise": noise_label,
            "noise_detail": detail, "gain": round(gain, 6), "clean_path": str(row["path"]),
        }
        new_row = row.to_dict()
        new_row.update(path=rel, extras=json.dumps(extras, sort_keys=True))
        new_rows.append(new_row)

    noisy_info = {
        "snr_db": float(snr_db), "noise": noise_label, "noise_description": NOISE_SOURCES.get(noise_label, noise_label),
        "seed": int(seed), "split": split, "base_corpus": base.name, "base_corpus_dir": os.fspath(base.root),
        "base_table_sha256": base.manifest.get("table_sha256"),
        "snr_definition": "whole-signal 10 log10(P_clean / P_noise), noise looped/cropped to the utterance",
        "snr_db_measured": {"mean": _json_number(np.mean(measured)), "min": _json_number(np.min(measured)),
                            "max": _json_number(np.max(measured))},
    }
    return save_corpus(
        new_rows, out, corpus=f"{base.name}-{noise_label.replace('folder:', '')}-snr{float(snr_db):g}dB",
        audio_root=AUDIO_DIR, label_mapping=base.manifest.get("label_mapping", {}),
        soft_target_rule=str(base.manifest.get("soft_target_rule", "")), extra={"noisy": noisy_info},
    )


def _check_signal(x: np.ndarray, *, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise AudioError(
            f"{name} has shape {arr.shape} and dtype {arr.dtype}; expected a non-empty 1-D float array "
            "(samples,). Downmix with edge_ser.audio.to_mono first."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise AudioError(f"{name} contains NaN/inf samples; expected finite samples.")
    return arr


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _fit_length(x: np.ndarray, n: int, *, offset: int) -> np.ndarray:
    """Loop `x` (starting at `offset`) or crop it to exactly `n` samples."""
    return np.take(x, (int(offset) + np.arange(n)) % len(x))


def _limit_peak(mixture: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(mixture)))
    if peak <= 1.0:
        return mixture, 1.0
    gain = PEAK_LIMIT / peak
    return mixture * gain, gain


def _json_number(value: float) -> float | None:
    # Strict JSON has no Infinity/NaN: an SNR that could not be measured (noise lost in storage) is null.
    value = float(value)
    return value if math.isfinite(value) else None


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _file_name(utt_id: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", utt_id).strip("._") or "utt"
    name, k = f"{stem}.flac", 1
    while name.lower() in used:  # ids that differ only in odd characters or case
        k += 1
        name = f"{stem}_{k}.flac"
    used.add(name.lower())
    return name


def _parse_extras(cell: Any) -> dict[str, Any]:
    try:
        value = json.loads(cell) if isinstance(cell, str) and cell else {}
    except json.JSONDecodeError:
        value = {"original_extras": cell}
    return value if isinstance(value, dict) else {"original_extras": value}


__all__ = [
    "NOISE_SOURCES", "SNR_RANGE_DB", "BabbleNoise", "FolderNoise", "GeneratedNoise", "NoiseSource", "check_snr_db",
    "make_noisy_corpus", "measure_snr_db", "mix_at_snr", "pink_noise", "resolve_noise", "scale_noise_to_snr",
    "white_noise",
]

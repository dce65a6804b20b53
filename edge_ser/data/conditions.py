"""Recording conditions for robustness tests: level (gain) and channel (telephone band).

A user's audio does not come at the training corpus's level through its microphones: a phone
held close or a peak-normalised recording is 10-20 dB louder than RAVDESS (median RMS about
-39 dBFS), a call is band-limited. A *condition* is a deterministic transform of a 16 kHz
waveform; :func:`make_condition_corpus` writes a copy of a corpus split under one condition
(like :func:`edge_ser.data.noise.make_noisy_corpus` does for additive noise), so evaluation,
k-fold pooling and reports treat it as one more test set, and
:func:`edge_ser.converters.verify.verify_artifact` applies the same transform on the fly.

Conditions are named ``gain+10dB`` / ``gain-20dB`` (any gain; samples beyond full scale are
clipped, as a recorder would, and counted) and ``telephone`` (300-3400 Hz band, through an 8 kHz
round trip: the narrowband telephone channel).

>>> import numpy as np
>>> wave = 0.5 * np.sin(np.linspace(0, 200 * np.pi, 16000))
>>> louder, info = apply_condition(wave, "gain+6dB")
>>> info["clipped_fraction"] > 0
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.audio import load_audio, write_audio
from edge_ser.data.table import Corpus, load_corpus, rows_of_split, save_corpus
from edge_ser.labels import SAMPLE_RATE

AUDIO_DIR = "audio"
FULL_SCALE = 1.0 - 2.0 ** -15
"""Largest sample a 16-bit file holds; louder samples are clipped to it."""
TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_RATE = 8000
STANDARD_CONDITIONS = ("gain-20dB", "gain-10dB", "gain+10dB", "gain+20dB", "telephone")
"""The robustness report's sweep besides clean (0 dB) and the 15/5 dB noisy copies."""
_GAIN = re.compile(r"^gain([+-]\d+(?:\.\d+)?)dB$")


@dataclasses.dataclass(frozen=True)
class Condition:
    """A parsed condition name."""

    name: str
    kind: str  # "gain" or "telephone"
    gain_db: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_condition(name: str) -> Condition:
    """``"gain+10dB"`` / ``"gain-20dB"`` / ``"telephone"`` -> :class:`Condition`."""
    text = str(name).strip()
    if text == "telephone":
        return Condition(name="telephone", kind="telephone")
    match = _GAIN.match(text)
    if match:
        gain = float(match.group(1))
        if not math.isfinite(gain) or abs(gain) > 60:
            raise ValueError(f"condition {name!r}: gain {gain} dB; expected a finite gain within +/-60 dB.")
        return Condition(name=f"gain{gain:+g}dB", kind="gain", gain_db=gain)
    raise ValueError(
        f"unknown condition {name!r}; expected 'gain+<dB>dB' or 'gain-<dB>dB' (e.g. gain+10dB, gain-20dB) or "
        f"'telephone'. The standard sweep is {', '.join(STANDARD_CONDITIONS)}."
    )


def telephone_band(wave: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """300-3400 Hz band through an 8 kHz round trip (resample down, band-pass, resample up)."""
    import soxr

    narrow = soxr.resample(np.asarray(wave, dtype=np.float64), sample_rate, TELEPHONE_RATE, quality="HQ")
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(len(narrow), d=1.0 / TELEPHONE_RATE)
    low, high = TELEPHONE_BAND_HZ
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    band = np.fft.irfft(spectrum, n=len(narrow))
    wide = soxr.resample(band, TELEPHONE_RATE, sample_rate, quality="HQ")
    out = np.zeros(len(wave), dtype=np.float64)
    n = min(len(out), len(wide))
    out[:n] = wide[:n]
    return out


def apply_condition(wave: np.ndarray, condition: str | Condition) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply one condition to a mono waveform in [-1, 1]; returns (float32 waveform, details).

    Details: ``clipped_fraction`` (samples that hit full scale), ``gain_db``, ``rms_dbfs`` after."""
    cond = condition if isinstance(condition, Condition) else parse_condition(condition)
    x = np.asarray(wave, dtype=np.float64)
    if cond.kind == "gain":
        y = x * 10.0 ** (cond.gain_db / 20.0)
    else:
        y = telephone_band(x)
    clipped = np.abs(y) > FULL_SCALE
    y = np.clip(y, -FULL_SCALE, FULL_SCALE)
    rms = float(np.sqrt(np.mean(y * y))) if y.size else 0.0
    return y.astype(np.float32), {"condition": cond.name, "gain_db": cond.gain_db,
                                  "clipped_fraction": float(clipped.mean()) if y.size else 0.0,
                                  "rms_dbfs": 20 * math.log10(rms) if rms > 0 else -math.inf}


def make_condition_corpus(*, corpus_dir: Path, condition: str, out: Path, split: str = "test",
                          overwrite: bool = False) -> Corpus:
    """Copy one split (or ``all``) of a prepared corpus under ``condition`` into ``out``.

    Labels are unchanged; each row's ``extras.condition`` records what was done, the manifest's
    ``condition`` block the base corpus, its table sha256 and the share of clipped samples. A
    corpus already in ``out`` is replaced only with ``overwrite`` (its own files only)."""
    from edge_ser.data.noise import _file_name, _parse_extras
    from edge_ser.data.table import claim_corpus_folder

    cond = parse_condition(condition)
    claim_corpus_folder(out, overwrite=overwrite)
    base = load_corpus(corpus_dir)
    rows = rows_of_split(base, split)
    out = Path(out)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    new_rows, clipped, used = [], [], set()
    for _, row in rows.iterrows():
        wave, info = apply_condition(load_audio(base.audio_path(row)), cond)
        rel = _file_name(str(row["utt_id"]), used)
        write_audio(out / AUDIO_DIR / rel, wave)
        clipped.append(info["clipped_fraction"])
        extras = _parse_extras(row["extras"])
        extras["condition"] = {**info, "clean_path": str(row["path"])}
        new_row = row.to_dict()
        new_row.update(path=rel, extras=json.dumps(extras, sort_keys=True))
        new_rows.append(new_row)
    block = {**cond.to_dict(), "split": split, "base_corpus": base.name, "base_corpus_dir": os.fspath(base.root),
             "base_table_sha256": base.manifest.get("table_sha256"),
             "clipped_fraction": {"mean": float(np.mean(clipped)), "max": float(np.max(clipped)),
                                  "utterances_clipped": int(np.sum(np.asarray(clipped) > 0))}}
    return save_corpus(
        new_rows, out, corpus=f"{base.name}-{cond.name}", audio_root=AUDIO_DIR,
        label_mapping=base.manifest.get("label_mapping", {}),
        soft_target_rule=str(base.manifest.get("soft_target_rule", "")), extra={"condition": block},
    )


__all__ = ["STANDARD_CONDITIONS", "Condition", "apply_condition", "make_condition_corpus", "parse_condition",
           "telephone_band"]

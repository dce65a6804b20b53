"""The built-in synthetic emotional-speech corpus: deterministic, offline, learnable.

Audio is made by source-filter synthesis at 16 kHz: a Rosenberg-style glottal pulse train
(with per-cycle jitter and shimmer) following an F0 contour, aspiration ("breath") noise,
a spectral-tilt low-pass, a cascade of 4 formant resonators whose vowel targets change from
syllable to syllable, fricative bursts at syllable onsets and a syllable-rate amplitude
envelope. Each of the 9 categories has an :class:`EmotionProfile` that moves F0 level and
range, loudness, speaking rate, tilt, breathiness, jitter/shimmer and formant placement;
speakers move F0, formants, loudness and rate on top, so a model must find the emotion
through the speaker.

Labels imitate a graded corpus: a true category drawn from a neutral-heavy prior
(:data:`CATEGORY_PRIOR`), 5-7 simulated graders who mostly agree but confuse similar
classes (:data:`CONFUSIONS`), soft targets from their primary votes, and grader-averaged
arousal/valence/dominance on the 1..7 scale mapped to [0, 1].

Every utterance has its own random stream derived from ``(seed, speaker, utterance)``,
so the same seed gives byte-identical audio and table whatever the generation order.

>>> from edge_ser.data.synthetic import EMOTION_PROFILES
>>> EMOTION_PROFILES["angry"].loudness_db > EMOTION_PROFILES["sad"].loudness_db
True
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.signal import lfilter, sosfilt

from edge_ser.audio import write_audio
from edge_ser.data import soft_labels
from edge_ser.data.splits import speaker_split
from edge_ser.data.table import (
    Corpus, claim_corpus_folder, empty_row, format_votes, normalise_table, save_corpus,
)
from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES, DIMENSIONS, SAMPLE_RATE, category_index
from edge_ser.progress import progress_bar

GENERATOR_NAME = "edge-ser-synthetic"
GENERATOR_VERSION = 1
AUDIO_DIR = "audio"
SPLIT_FRACTIONS = (4 / 6, 1 / 6, 1 / 6)
"""Speaker shares of train/valid/test: 8/2/2 for the default 12 speakers."""

CATEGORY_PRIOR: Mapping[str, float] = {
    "neutral": 0.30, "happy": 0.13, "sad": 0.13, "angry": 0.13, "surprise": 0.07,
    "fear": 0.06, "disgust": 0.05, "contempt": 0.07, "other": 0.06,
}
"""Probability of each true category; neutral-heavy like podcast speech. Sums to 1."""

CONFUSIONS: Mapping[str, tuple[str, ...]] = {
    "neutral": ("sad", "contempt", "happy"),
    "happy": ("surprise", "neutral"),
    "sad": ("neutral", "fear"),
    "angry": ("disgust", "contempt"),
    "surprise": ("happy", "fear"),
    "fear": ("surprise", "sad"),
    "disgust": ("contempt", "angry"),
    "contempt": ("disgust", "neutral", "angry"),
    "other": ("neutral",),
}
"""Classes a grader picks by mistake for each true category (uniformly among them)."""

# Male-voice vowel formants F1..F4 in Hz (a, e, i, o, u): the vowel targets that change
# from syllable to syllable. Female speakers scale them up by their formant factor.
_VOWEL_FORMANTS_HZ = np.array([
    [730.0, 1090.0, 2440.0, 3400.0],
    [530.0, 1840.0, 2480.0, 3500.0],
    [270.0, 2290.0, 3010.0, 3700.0],
    [570.0, 840.0, 2410.0, 3300.0],
    [300.0, 870.0, 2240.0, 3300.0],
])
_BASE_BANDWIDTHS_HZ = np.array([70.0, 100.0, 140.0, 180.0])
_BASE_LEVEL_DBFS = -28.0  # leaves headroom: flat-tilt (angry) pulses have a high crest factor
_PEAK_LIMIT = 0.95


@dataclasses.dataclass(frozen=True)
class EmotionProfile:
    """How one category shapes the voice (relative to the speaker's neutral voice).

    f0_factor: multiplies the speaker's mean F0. f0_range_st: pitch excursion of syllable
    accents in semitones. loudness_db: RMS level change in dB. syllables_per_s: speaking rate.
    tilt: pole of the one-pole low-pass on the source (0 = flat spectrum, 0.9 = steep).
    breathiness: aspiration noise relative to the pulses. jitter, shimmer: per-cycle relative
    standard deviation of period and amplitude. formant_factor, bandwidth_factor: scale the
    vowel formant frequencies and bandwidths. final_slope_st: pitch change over the
    utterance in semitones (negative = falling). avd: arousal, valence, dominance in [0, 1].
    """

    f0_factor: float
    f0_range_st: float
    loudness_db: float
    syllables_per_s: float
    tilt: float
    breathiness: float
    jitter: float
    shimmer: float
    formant_factor: float
    bandwidth_factor: float
    final_slope_st: float
    avd: tuple[float, float, float]

    def blend(self, other: "EmotionProfile", weight: float) -> "EmotionProfile":
        """(1 - weight) * self + weight * other, field by field."""
        values = {}
        for field in dataclasses.fields(self):
            a, b = getattr(self, field.name), getattr(other, field.name)
            if isinstance(a, tuple):
                values[field.name] = tuple((1 - weight) * x + weight * y for x, y in zip(a, b))
            else:
                values[field.name] = (1 - weight) * a + weight * b
        return EmotionProfile(**values)


EMOTION_PROFILES: Mapping[str, EmotionProfile] = {
    "neutral": EmotionProfile(1.00, 2.5, 0.0, 4.0, 0.60, 0.05, 0.005, 0.03, 1.00, 1.0, -2.0, (0.45, 0.50, 0.50)),
    "happy": EmotionProfile(1.30, 7.0, 4.0, 5.0, 0.40, 0.05, 0.008, 0.04, 1.07, 1.0, -1.0, (0.72, 0.85, 0.62)),
    "sad": EmotionProfile(0.84, 1.2, -8.0, 2.6, 0.88, 0.25, 0.012, 0.07, 0.95, 1.5, -3.0, (0.20, 0.18, 0.25)),
    "angry": EmotionProfile(1.35, 6.0, 9.0, 5.6, 0.10, 0.03, 0.010, 0.05, 1.04, 0.75, -3.0, (0.85, 0.15, 0.85)),
    "surprise": EmotionProfile(1.55, 10.0, 3.0, 4.4, 0.45, 0.08, 0.008, 0.04, 1.08, 1.0, 6.0, (0.75, 0.60, 0.50)),
    "fear": EmotionProfile(1.45, 3.0, -3.0, 6.2, 0.65, 0.30, 0.025, 0.08, 1.02, 1.2, 1.0, (0.70, 0.20, 0.20)),
    "disgust": EmotionProfile(0.90, 4.0, 1.0, 3.0, 0.50, 0.12, 0.010, 0.06, 0.93, 1.1, -4.0, (0.55, 0.15, 0.60)),
    "contempt": EmotionProfile(0.95, 3.5, -1.0, 3.4, 0.30, 0.08, 0.006, 0.03, 0.98, 0.9, -1.5, (0.40, 0.25, 0.70)),
}
"""Acoustic profile per category; "other" is a per-utterance blend of two of these."""


@dataclasses.dataclass(frozen=True)
class SpeakerProfile:
    """A synthetic speaker's voice: mean F0 (Hz), formant scale, level offset (dB), rate factor."""

    speaker: str
    gender: str
    f0_hz: float
    formant_factor: float
    level_db: float
    rate_factor: float


@dataclasses.dataclass(frozen=True)
class UtteranceParams:
    """The acoustic parameters one utterance was rendered with (stored in the table's extras)."""

    category: str
    intensity: float
    duration_s: float
    f0_mean_hz: float
    f0_range_st: float
    level_dbfs: float
    syllables_per_s: float
    n_syllables: int
    tilt: float
    breathiness: float
    jitter: float
    shimmer: float
    formant_factor: float
    bandwidth_factor: float
    blend: tuple[str, str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def speaker_profiles(*, n_speakers: int, seed: int = 0) -> list[SpeakerProfile]:
    """Speakers ``syn_f01..`` (ceil(n/2) female) and ``syn_m01..``, each from its own stream."""
    if n_speakers < 1:
        raise CorpusError(f"n_speakers={n_speakers}; expected at least 1 (3 or more to fill train/valid/test).")
    n_female = (n_speakers + 1) // 2
    speakers = []
    for index in range(n_speakers):
        female = index < n_female
        number = index + 1 if female else index - n_female + 1
        rng = _rng(seed, 0, index)
        speakers.append(SpeakerProfile(
            speaker=f"syn_{'f' if female else 'm'}{number:02d}",
            gender="female" if female else "male",
            f0_hz=float(rng.uniform(180.0, 235.0) if female else rng.uniform(95.0, 135.0)),
            formant_factor=float(rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05)),
            level_db=float(rng.uniform(-2.5, 2.5)),
            rate_factor=float(rng.uniform(0.88, 1.12)),
        ))
    return speakers


def synthesize_utterance(
    *, category: str, speaker: SpeakerProfile, rng: np.random.Generator
) -> tuple[np.ndarray, UtteranceParams]:
    """Render one utterance of `category` in `speaker`'s voice.

    Returns (audio, params): audio is float32 mono, shape (samples,), 16 kHz, 1.5-4 s long
    with 0.1-0.25 s of near-silence at each end and peak below 0.95.
    """
    category_index(category)  # fail early on an unknown name
    intensity = float(rng.uniform(0.6, 1.2))
    blend = None
    if category == "other":
        pool = [c for c in EMOTION_PROFILES if c != "neutral"]
        first, second = rng.choice(len(pool), size=2, replace=False)
        weight = float(rng.uniform(0.3, 0.7))
        profile = EMOTION_PROFILES[pool[first]].blend(EMOTION_PROFILES[pool[second]], weight)
        blend = (pool[first], pool[second], round(weight, 4))
    else:
        profile = EMOTION_PROFILES[category]
    # Intensity scales the distance from neutral: mild and strong renditions of one emotion.
    profile = EMOTION_PROFILES["neutral"].blend(profile, intensity)

    sr = SAMPLE_RATE
    duration = float(rng.uniform(1.5, 4.0))
    n = int(round(duration * sr))
    lead = int(rng.uniform(0.10, 0.25) * sr)
    tail = int(rng.uniform(0.10, 0.25) * sr)
    speech = n - lead - tail
    rate = max(1.5, profile.syllables_per_s * speaker.rate_factor * rng.uniform(0.93, 1.07))

    # Syllable grid over the speech region; a few become pauses (phrase breaks).
    mean_len = sr / rate
    lengths = np.maximum(mean_len * rng.uniform(0.7, 1.3, size=int(speech / mean_len * 1.6) + 4), 0.06 * sr)
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    keep = starts < speech
    starts, lengths = starts[keep], lengths[keep]
    n_syll = len(starts)
    pause = rng.random(n_syll) < 0.08
    pause[0] = False
    t = np.arange(speech, dtype=np.float64)
    idx = np.searchsorted(starts, t, side="right") - 1
    pos = (t - starts[idx]) / lengths[idx]
    stress_db = rng.normal(0.0, 2.0, size=n_syll)
    syll_amp = np.where(pause, 0.0, 10.0 ** (stress_db / 20.0))
    nucleus = np.clip((pos - 0.15) / 0.7, 0.0, 1.0)
    voiced_env = np.sin(np.pi * nucleus) ** 0.7 * syll_amp[idx]
    has_consonant = (rng.random(n_syll) < 0.6) & ~pause
    cons_env = np.where(pos < 0.15, np.sin(np.pi * np.minimum(pos / 0.15, 1.0)), 0.0) * has_consonant[idx]

    # F0 contour in semitones: accents per syllable, declination or final rise, slow drift.
    f0_mean = speaker.f0_hz * profile.f0_factor * rng.uniform(0.96, 1.04)
    accents = rng.uniform(-0.5, 0.5, size=n_syll) * profile.f0_range_st
    centres = starts + 0.5 * lengths
    st = np.interp(t, centres, accents) + profile.final_slope_st * (t / speech - 0.5)
    st += 0.3 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t / sr + rng.uniform(0, 2 * np.pi))
    f0 = f0_mean * np.exp2(st / 12.0)
    # Per-cycle jitter/shimmer: cycles counted on the smooth contour, then perturbed.
    cycle = np.floor(np.cumsum(f0) / sr).astype(np.int64)
    n_cycles = int(cycle[-1]) + 1
    f0 = f0 * (1.0 + profile.jitter * rng.standard_normal(n_cycles)[cycle])
    phase = np.cumsum(f0) / sr
    frac = phase - np.floor(phase)
    cycle = np.floor(phase).astype(np.int64)
    shimmer = np.maximum(1.0 + profile.shimmer * rng.standard_normal(int(cycle[-1]) + 1), 0.2)
    flow = _rosenberg_flow(frac, open_frac=0.4, close_frac=0.16)
    pulses = np.diff(flow, prepend=flow[0]) * shimmer[cycle]
    pulses /= np.sqrt(np.mean(pulses ** 2)) + 1e-12
    source = voiced_env * (pulses + profile.breathiness * 1.5 * rng.standard_normal(speech))
    tilt = float(np.clip(profile.tilt, 0.0, 0.95))
    source = lfilter([1.0 - tilt], [1.0, -tilt], source)

    formant_factor = speaker.formant_factor * profile.formant_factor
    vowels = rng.integers(0, len(_VOWEL_FORMANTS_HZ), size=n_syll)
    voiced = _formant_filter(source, starts=starts.astype(np.int64), vowels=vowels,
                             formant_factor=formant_factor, bandwidth_factor=profile.bandwidth_factor)
    active = voiced_env > 0.1
    # Unit-RMS vowels before the consonants go in, so the tilt changes the vowel spectrum
    # and not the vowel-to-fricative balance.
    voiced /= np.sqrt(np.mean(voiced[active] ** 2)) + 1e-12 if active.any() else 1.0
    fricative = np.diff(rng.standard_normal(speech + 1)) * cons_env * 0.25
    speech_audio = voiced + fricative

    level = _BASE_LEVEL_DBFS + profile.loudness_db + speaker.level_db + rng.uniform(-1.5, 1.5)
    rms = np.sqrt(np.mean(speech_audio[active] ** 2)) if active.any() else 1.0
    speech_audio *= 10.0 ** (level / 20.0) / (rms + 1e-12)
    audio = np.zeros(n, dtype=np.float64)
    audio[lead:lead + speech] = speech_audio
    audio += 10.0 ** (-75.0 / 20.0) * rng.standard_normal(n)  # room-noise floor
    peak = np.max(np.abs(audio))
    if peak > _PEAK_LIMIT:
        audio *= _PEAK_LIMIT / peak
    params = UtteranceParams(
        category=category, intensity=intensity, duration_s=n / sr, f0_mean_hz=float(np.mean(f0)),
        f0_range_st=float(profile.f0_range_st), level_dbfs=float(level), syllables_per_s=float(rate),
        n_syllables=int(n_syll), tilt=tilt, breathiness=float(profile.breathiness), jitter=float(profile.jitter),
        shimmer=float(profile.shimmer), formant_factor=float(formant_factor),
        bandwidth_factor=float(profile.bandwidth_factor), blend=blend,
    )
    return audio.astype(np.float32), params


def simulate_graders(
    *, category: str, intensity: float, avd: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Votes of 5-7 simulated graders and their averaged dimension scores.

    Returns (votes, avd): votes (9,) int64 primary-vote counts in CATEGORIES order; avd (3,)
    the graders' mean 1..7 integer ratings mapped to [0, 1]. Clearer (more intense) renditions
    get more agreement; misses go to a confusable class, or to "other".
    """
    n_graders = int(rng.integers(5, 8))
    agreement = float(np.clip(0.35 + 0.4 * intensity, 0.45, 0.85))
    votes = np.zeros(len(CATEGORIES), dtype=np.int64)
    for _ in range(n_graders):
        draw = rng.random()
        if draw < agreement:
            choice = category
        elif draw < agreement + 0.75 * (1.0 - agreement):
            options = CONFUSIONS[category]
            choice = options[int(rng.integers(len(options)))]
        else:
            choice = "other" if category != "other" else "neutral"
        votes[category_index(choice)] += 1
    true_avd = np.clip(np.asarray(avd) + rng.normal(0.0, 0.04, size=3), 0.0, 1.0)
    ratings = np.clip(np.rint(1.0 + 6.0 * (true_avd + rng.normal(0.0, 0.1, size=(n_graders, 3)))), 1, 7)
    return votes, (ratings.mean(axis=0) - 1.0) / 6.0


def synthesize_corpus(
    *, out: Path, n_speakers: int = 12, utterances_per_speaker: int = 40, seed: int = 0, overwrite: bool = False
) -> Corpus:
    """Write the synthetic corpus into `out` (``audio/*.flac``, ``utterances.csv``, ``manifest.json``).

    Speakers are split speaker-disjoint and gender-balanced into train/valid/test with
    :func:`edge_ser.data.splits.speaker_split` (8/2/2 for 12 speakers; at least 3 needed).
    Same arguments = byte-identical audio and table (only the manifest's ``created_utc`` differs).
    A finished corpus already in `out` is replaced only with `overwrite` (its audio folder is
    emptied first, so no file of the old corpus is left behind); otherwise OutputExistsError.
    Returns the saved :class:`~edge_ser.data.table.Corpus`.
    """
    if n_speakers < 3:
        raise CorpusError(
            f"n_speakers={n_speakers}; expected at least 3 so train, valid and test each get a speaker. "
            "Pass --speakers 3 or more."
        )
    if utterances_per_speaker < 1:
        raise CorpusError(f"utterances_per_speaker={utterances_per_speaker}; expected at least 1.")
    out = claim_corpus_folder(out, overwrite=overwrite)
    audio_dir = out / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)
    speakers = speaker_profiles(n_speakers=n_speakers, seed=seed)
    names = list(CATEGORY_PRIOR)
    prior = np.array([CATEGORY_PRIOR[c] for c in names])

    rows = []
    progress = progress_bar(total=n_speakers * utterances_per_speaker, desc="synthesising", unit="utt", leave=False)
    for s_index, speaker in enumerate(speakers):
        for u_index in range(utterances_per_speaker):
            rng = _rng(seed, 1, s_index, u_index)
            category = names[int(rng.choice(len(names), p=prior))]
            audio, params = synthesize_utterance(category=category, speaker=speaker, rng=rng)
            avd = _target_avd(params)
            votes, graded_avd = simulate_graders(category=category, intensity=params.intensity, avd=avd, rng=rng)
            utt_id = f"{speaker.speaker}_u{u_index:03d}"
            rel = f"{utt_id}.flac"
            write_audio(audio_dir / rel, audio)
            row = empty_row()
            row.update(
                utt_id=utt_id, path=rel, speaker=speaker.speaker, gender=speaker.gender,
                duration_s=len(audio) / SAMPLE_RATE,
                votes=format_votes(votes), label=soft_labels.consensus_label(votes) or "",
                source_label=category,
                extras=json.dumps({"true_category": category, "acoustic": params.to_json(),
                                   "speaker_f0_hz": round(speaker.f0_hz, 2)}, sort_keys=True),
            )
            row.update({f"p_{c}": float(p) for c, p in zip(CATEGORIES, soft_labels.grader_vote_distribution(votes))})
            row.update({d: float(v) for d, v in zip(DIMENSIONS, graded_avd)})
            rows.append(row)
            progress.update(1)
    progress.close()
    table = speaker_split(normalise_table(rows), fractions=SPLIT_FRACTIONS, seed=seed)

    generator = {
        "name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed, "n_speakers": n_speakers,
        "utterances_per_speaker": utterances_per_speaker, "sample_rate": SAMPLE_RATE,
        "category_prior": dict(CATEGORY_PRIOR), "confusions": {k: list(v) for k, v in CONFUSIONS.items()},
        "emotion_profiles": {k: dataclasses.asdict(v) for k, v in EMOTION_PROFILES.items()},
        "speakers": [dataclasses.asdict(s) for s in speakers],
        "split_fractions": list(SPLIT_FRACTIONS),
    }
    return save_corpus(
        table, out, corpus="synthetic", audio_root=AUDIO_DIR, label_mapping={c: c for c in CATEGORIES},
        soft_target_rule=soft_labels.SOFT_TARGET_RULE_VOTES, extra={"generator": generator},
    )


def _target_avd(params: UtteranceParams) -> tuple[float, float, float]:
    """Arousal/valence/dominance the graders aim at: the category's, scaled by intensity."""
    if params.blend is None:
        target = EMOTION_PROFILES[params.category].avd
    else:
        first, second, weight = params.blend
        target = EMOTION_PROFILES[first].blend(EMOTION_PROFILES[second], weight).avd
    neutral = np.asarray(EMOTION_PROFILES["neutral"].avd)
    return tuple(np.clip(neutral + params.intensity * (np.asarray(target) - neutral), 0.0, 1.0).tolist())


def _rosenberg_flow(frac: np.ndarray, *, open_frac: float, close_frac: float) -> np.ndarray:
    """Glottal flow over one period as a function of the phase fraction in [0, 1)."""
    rising = 0.5 * (1.0 - np.cos(np.pi * frac / open_frac))
    falling = np.cos(0.5 * np.pi * (frac - open_frac) / close_frac)
    return np.where(frac < open_frac, rising, np.where(frac < open_frac + close_frac, falling, 0.0))


def _formant_filter(
    source: np.ndarray, *, starts: np.ndarray, vowels: np.ndarray, formant_factor: float, bandwidth_factor: float
) -> np.ndarray:
    """Cascade of 4 two-pole resonators; targets change per half-syllable (a glide, then the vowel)."""
    sr = SAMPLE_RATE
    targets = _VOWEL_FORMANTS_HZ[vowels] * formant_factor
    previous = np.vstack([targets[:1], targets[:-1]])
    bounds = list(starts) + [len(source)]
    out = np.empty_like(source)
    state = np.zeros((4, 2))
    for i in range(len(starts)):
        begin, end = int(bounds[i]), int(bounds[i + 1])
        middle = (begin + end) // 2
        for lo, hi, freqs in ((begin, middle, 0.5 * (previous[i] + targets[i])), (middle, end, targets[i])):
            if hi <= lo:
                continue
            freqs = np.minimum(freqs, 0.45 * sr)
            radius = np.exp(-np.pi * _BASE_BANDWIDTHS_HZ * bandwidth_factor / sr)
            theta = 2 * np.pi * freqs / sr
            a1, a2 = -2 * radius * np.cos(theta), radius ** 2
            sos = np.column_stack([1 + a1 + a2, np.zeros(4), np.zeros(4), np.ones(4), a1, a2])  # unit DC gain
            out[lo:hi], state = sosfilt(sos, source[lo:hi], zi=state)
    return out


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, purpose, indices): results don't depend on loop order."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key)))


__all__ = [
    "CATEGORY_PRIOR", "CONFUSIONS", "EMOTION_PROFILES", "EmotionProfile", "SpeakerProfile", "UtteranceParams",
    "simulate_graders", "speaker_profiles", "synthesize_corpus", "synthesize_utterance",
]

"""Training-time augmentation as cached corpus copies: random level, channel and noise per utterance.

``make_augmented_corpus`` copies a prepared corpus with every utterance passed through a random
chain drawn from :class:`AugmentRecipe`: optionally a speed change first (off by default: tempo
and pitch scaled together by resampling, as Kaldi's speed perturbation), babble (or white) noise
at a random SNR, a telephone band (300-3400 Hz through 8 kHz), then a random gain with clipping
as it happens. The chain of
an utterance depends only on ``(seed, utt_id)``, so a seed gives the same copy on every run.
Features are extracted from the copy like from any corpus, and ``edge-ser train --augment``
adds them to training only: a copy trains where its original is in the train split of the
fold, never in validation or test (``edge_ser.train.dataset.AugmentedFeatureSource``).

Babble talkers come from the utterance's own speaker fold (or own split when the corpus has no
folds), never from the utterance's speaker: under k-fold training a held-out speaker's voice
cannot reach training as background babble.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.audio import load_audio, write_audio
from edge_ser.data.conditions import FULL_SCALE, telephone_band
from edge_ser.data.table import Corpus, load_corpus, rows_of_split, save_corpus
from edge_ser.progress import progress_bar

AUDIO_DIR = "audio"


@dataclasses.dataclass(frozen=True)
class AugmentRecipe:
    """Probabilities and ranges of the random chain (defaults: what the robustness work used)."""

    noise_probability: float = 0.6
    noise_kinds: tuple[str, ...] = ("babble", "white")
    snr_db: tuple[float, float] = (0.0, 20.0)
    telephone_probability: float = 0.6
    gain_db: tuple[float, float] = (-20.0, 20.0)
    speed_probability: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.1)

    def __post_init__(self) -> None:
        for name in ("noise_probability", "telephone_probability", "speed_probability"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentRecipe {name}={value}; expected a probability in [0, 1].")
        for name in ("snr_db", "gain_db"):
            low, high = (float(v) for v in getattr(self, name))
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"AugmentRecipe {name}={getattr(self, name)}; expected a finite (low, high) range.")
        factors = tuple(float(f) for f in self.speed_factors)
        if not factors or not all(math.isfinite(f) and 0.5 <= f <= 2.0 for f in factors):
            raise ValueError(f"AugmentRecipe speed_factors={self.speed_factors}; expected one or more factors in "
                             "[0.5, 2.0] (0.9 makes speech 10 % slower and lower, 1.1 faster and higher).")
        unknown = [k for k in self.noise_kinds if k not in ("babble", "white")]
        if unknown or not self.noise_kinds:
            raise ValueError(f"AugmentRecipe noise_kinds={self.noise_kinds}; expected a non-empty subset of "
                             "('babble', 'white').")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def draw_chain(recipe: AugmentRecipe, rng: np.random.Generator) -> dict[str, Any]:
    """One utterance's random chain: ``noise`` (kind or None), ``snr_db``, ``telephone``, ``gain_db``,
    ``speed`` (1.0: unchanged). The speed is drawn last and only when ``speed_probability > 0``, so a
    recipe without it draws exactly the chains it drew before speed perturbation existed."""
    noise = None
    snr = None
    if rng.random() < recipe.noise_probability:
        noise = str(recipe.noise_kinds[int(rng.integers(len(recipe.noise_kinds)))])
        snr = float(rng.uniform(*recipe.snr_db))
    telephone = bool(rng.random() < recipe.telephone_probability)
    gain = float(rng.uniform(*recipe.gain_db))
    speed = 1.0
    if recipe.speed_probability > 0 and rng.random() < recipe.speed_probability:
        speed = float(recipe.speed_factors[int(rng.integers(len(recipe.speed_factors)))])
    return {"noise": noise, "snr_db": snr, "telephone": telephone, "gain_db": gain, "speed": speed}


def _speed_ratio(factor: float) -> tuple[int, int]:
    """``(up, down)`` of a resampling that plays audio ``factor`` times faster (1.1 -> 10/11)."""
    from fractions import Fraction

    ratio = Fraction(float(factor)).limit_denominator(100)
    return ratio.denominator, ratio.numerator


def speed_length(n_samples: int, factor: float) -> int:
    """Samples of a ``n_samples``-long signal after :func:`speed_perturb` by ``factor``."""
    up, down = _speed_ratio(factor)
    return -(-int(n_samples) * up // down)


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times faster at the same sample rate: duration / factor, every
    frequency (pitch, formants) x factor, by polyphase resampling (Kaldi's speed perturbation).
    ``factor`` 1.0 returns the input unchanged."""
    if float(factor) == 1.0:
        return np.asarray(wave)
    from scipy.signal import resample_poly

    up, down = _speed_ratio(factor)
    return resample_poly(np.asarray(wave, dtype=np.float64), up, down)


def apply_chain(wave: np.ndarray, chain: dict[str, Any], *, noise: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Apply a drawn chain (noise must be given when the chain has one, of the length after the speed
    change: :func:`speed_length`); returns (waveform, clipped share)."""
    from edge_ser.data.noise import scale_noise_to_snr

    y = speed_perturb(np.asarray(wave, dtype=np.float64), chain.get("speed", 1.0))
    if chain["noise"] is not None:
        if noise is None:
            raise ValueError("the chain adds noise but no noise signal was given.")
        y = y + scale_noise_to_snr(y, noise, snr_db=chain["snr_db"])
    if chain["telephone"]:
        y = telephone_band(y)
    y = y * 10.0 ** (chain["gain_db"] / 20.0)
    clipped = float(np.mean(np.abs(y) > FULL_SCALE)) if y.size else 0.0
    return np.clip(y, -FULL_SCALE, FULL_SCALE).astype(np.float32), clipped


def _babble_pools(corpus: Corpus) -> dict[Any, Any]:
    """One babble source per speaker fold (or per split when the corpus has no folds)."""
    from edge_ser.data.noise import BabbleNoise

    table = corpus.table
    use_folds = "fold" in table.columns and (table["fold"] >= 0).all()
    key = table["fold"] if use_folds else table["split"].astype(str)
    pools = {}
    for value, rows in table.groupby(key, sort=True):
        if rows["speaker"].astype(str).nunique() >= 2:
            pools[value] = BabbleNoise(dataclasses.replace(corpus, table=rows))
    return {"by": "fold" if use_folds else "split", "pools": pools}


def make_augmented_corpus(*, corpus_dir: str | os.PathLike, out: str | os.PathLike, split: str = "all",
                          seed: int = 0, recipe: AugmentRecipe = AugmentRecipe(), overwrite: bool = False,
                          progress: bool = True) -> Corpus:
    """Write one augmented copy of `split` (default every row; training picks the train rows per fold).

    Labels, speakers, folds and splits are the original's; ``extras.augment`` records each
    utterance's chain; the manifest's ``augment`` block the recipe, seed and base corpus.
    """
    from edge_ser.data.noise import _file_name, _parse_extras, _stable_int, white_noise
    from edge_ser.data.table import claim_corpus_folder

    claim_corpus_folder(Path(out), overwrite=overwrite)
    base = load_corpus(corpus_dir)
    rows = rows_of_split(base, split)
    babble = _babble_pools(base)
    out = Path(out)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    new_rows, used, clipped = [], set(), []
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc="augment", unit="utt", enabled=progress,
                               leave=False):
        utt_id = str(row["utt_id"])
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _stable_int(utt_id)]))
        chain = draw_chain(recipe, rng)
        clean = load_audio(base.audio_path(row)).astype(np.float64)
        n = speed_length(len(clean), chain["speed"])
        noise = None
        if chain["noise"] == "babble":
            pool = babble["pools"].get(row["fold"] if babble["by"] == "fold" else str(row["split"]))
            if pool is None:  # a fold of one speaker has no other talker: white noise instead
                chain["noise"] = "white"
            else:
                noise, _ = pool(n, rng=rng, speaker=str(row["speaker"]))
        if chain["noise"] == "white":
            noise = white_noise(n, rng=rng)
        wave, share = apply_chain(clean, chain, noise=noise)
        clipped.append(share)
        rel = _file_name(utt_id, used)
        write_audio(out / AUDIO_DIR / rel, wave)
        extras = _parse_extras(row["extras"])
        extras["augment"] = {**chain, "clipped_fraction": share, "clean_path": str(row["path"])}
        new_row = row.to_dict()
        new_row.update(path=rel, extras=json.dumps(extras, sort_keys=True))
        new_rows.append(new_row)
    block = {"recipe": recipe.to_dict(), "seed": int(seed), "split": split, "base_corpus": base.name,
             "base_corpus_dir": os.fspath(base.root), "base_table_sha256": base.manifest.get("table_sha256"),
             "babble_talkers_from": f"the utterance's own {babble['by']}, other speakers",
             "clipped_fraction": {"mean": float(np.mean(clipped)), "utterances_clipped": int(np.sum(np.asarray(clipped) > 0))}}
    return save_corpus(new_rows, out, corpus=f"{base.name}-augmented-seed{int(seed)}", audio_root=AUDIO_DIR,
                       label_mapping=base.manifest.get("label_mapping", {}),
                       soft_target_rule=str(base.manifest.get("soft_target_rule", "")), extra={"augment": block})


__all__ = ["AugmentRecipe", "apply_chain", "draw_chain", "make_augmented_corpus", "speed_length", "speed_perturb"]

"""Speaker-disjoint splits and speaker folds of an utterance table.

Every function works on speakers, never on single utterances, so no speaker is ever in
two sets. Speakers are sorted before shuffling, so results depend only on the speakers
present and the seed, not on row order. Gender balance is by speaker count.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from edge_ser.errors import CorpusError

_SPLIT_NAMES = ("train", "valid", "test")


def _speaker_genders(table: pd.DataFrame) -> pd.Series:
    """One gender per speaker (sorted by speaker id); a speaker with mixed rows counts as 'unknown'."""
    for column in ("speaker", "gender"):
        if column not in table.columns:
            raise CorpusError(f"table lacks column {column!r}; has {list(table.columns)}. "
                              "Build tables with edge_ser.data.table.normalise_table.")
    if len(table) == 0:
        raise CorpusError("the utterance table is empty; expected at least one utterance to split.")
    speakers = table["speaker"].astype(str)
    if (speakers == "").any():
        raise CorpusError(f"{int((speakers == '').sum())} utterance(s) have an empty speaker id; "
                          "speaker-disjoint splits need a speaker for every utterance.")
    genders = table.groupby(speakers)["gender"].agg(lambda g: g.iloc[0] if g.nunique() == 1 else "unknown")
    return genders.sort_index()


def _stratified_order(genders: pd.Series, rng: np.random.Generator) -> list[str]:
    """Speakers shuffled within each gender, then interleaved so every prefix has each gender's share."""
    keyed: list[tuple[float, str, str]] = []
    for gender in sorted(set(genders)):
        members = list(genders.index[genders == gender])
        members = [members[i] for i in rng.permutation(len(members))]
        # Position (i + 0.5) / n spreads each gender evenly along the sequence.
        keyed.extend(((i + 0.5) / len(members), gender, spk) for i, spk in enumerate(members))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [spk for _, _, spk in keyed]


def speaker_split(
    table: pd.DataFrame,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> pd.DataFrame:
    """Return a copy of `table` with ``split`` set to train/valid/test by speaker.

    `fractions` (train, valid, test) are shares of speakers; each non-zero share gets
    at least one speaker. Within each set, genders keep their overall proportions as
    closely as whole speakers allow. Deterministic for a given seed.
    """
    fr = np.asarray(list(fractions), dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0:
        raise CorpusError(
            f"fractions={tuple(fractions)}; expected three non-negative shares (train, valid, test) summing "
            "to 1 with train > 0, e.g. (0.8, 0.1, 0.1)."
        )
    genders = _speaker_genders(table)
    n = len(genders)
    needed = int(np.count_nonzero(fr))
    if n < needed:
        raise CorpusError(
            f"the table has {n} speaker(s); a speaker-disjoint split with fractions {tuple(fractions)} needs at "
            f"least {needed}. Add speakers or set the valid/test fraction to 0."
        )
    counts = [0, 0, 0]
    for i in (1, 2):
        if fr[i] > 0:
            counts[i] = max(1, int(round(fr[i] * n)))
    while n - counts[1] - counts[2] < 1:  # train keeps at least one speaker
        j = 1 if counts[1] >= counts[2] else 2
        counts[j] -= 1
    rng = np.random.default_rng(seed)
    order = _stratified_order(genders, rng)
    assignment: dict[str, str] = {}
    # test first, then valid: both take a stratified prefix, so each is gender-balanced.
    cursor = 0
    for split, count in (("test", counts[2]), ("valid", counts[1])):
        for spk in order[cursor:cursor + count]:
            assignment[spk] = split
        cursor += count
    for spk in order[cursor:]:
        assignment[spk] = "train"
    out = table.copy()
    out["split"] = out["speaker"].astype(str).map(assignment)
    return out


def speaker_folds(table: pd.DataFrame, *, k: int, seed: int = 0) -> pd.DataFrame:
    """Return a copy of `table` with ``fold`` (0..k-1) set so each speaker is in exactly one fold.

    Each gender is shuffled and dealt to the fold with the fewest speakers of that gender
    (ties: fewest speakers overall, then lowest index), so folds differ by at most one
    speaker per gender. 24 RAVDESS actors (12 F, 12 M) with k=6 give 2 F + 2 M per fold.
    """
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise CorpusError(f"k={k!r} folds; expected an integer >= 2 (e.g. 6 for RAVDESS).")
    genders = _speaker_genders(table)
    if k > len(genders):
        raise CorpusError(
            f"k={k} folds but the table has only {len(genders)} speaker(s); every fold needs at least one "
            f"speaker. Use k <= {len(genders)}."
        )
    rng = np.random.default_rng(seed)
    total = np.zeros(k, dtype=int)
    fold_of: dict[str, int] = {}
    for gender in sorted(set(genders)):
        members = list(genders.index[genders == gender])
        per_gender = np.zeros(k, dtype=int)
        for idx in rng.permutation(len(members)):
            fold = min(range(k), key=lambda f: (per_gender[f], total[f], f))
            fold_of[members[idx]] = fold
            per_gender[fold] += 1
            total[fold] += 1
    out = table.copy()
    out["fold"] = out["speaker"].astype(str).map(fold_of).astype(int)
    return out


def fold_assignment(table: pd.DataFrame, *, fold: int) -> pd.DataFrame:
    """Return a copy of `table` with ``split`` for fold `fold` of a k-fold table.

    test = fold f, valid = fold (f + 1) % k, train = every other fold (needs k >= 3).
    """
    if "fold" not in table.columns:
        raise CorpusError("table has no 'fold' column; assign folds first with edge_ser.data.splits.speaker_folds.")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any():
        raise CorpusError(
            f"{int((folds.isna() | (folds < 0)).sum())} utterance(s) have no fold (fold < 0); expected every "
            "utterance in a fold. Assign folds with edge_ser.data.splits.speaker_folds(table, k=...)."
        )
    k = int(folds.max()) + 1
    if k < 3:
        raise CorpusError(f"the table has {k} fold(s); fold_assignment needs at least 3 (test, valid, train). "
                          "Re-create the folds with k >= 3.")
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
        raise CorpusError(f"fold={fold!r}; expected an integer in 0..{k - 1} for this {k}-fold table.")
    valid_fold = (fold + 1) % k
    out = table.copy()
    out["split"] = np.where(folds == fold, "test", np.where(folds == valid_fold, "valid", "train"))
    return out

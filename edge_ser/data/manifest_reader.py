"""Reader for your own corpus: a CSV or JSONL list of audio files with labels.

Format (one row / one JSON object per utterance; ``.csv`` or ``.jsonl`` suffix):

=====================  ========  ==============================================================
column                 needed    meaning
=====================  ========  ==============================================================
``path``               yes       audio file, relative to the manifest file's folder, or absolute
``speaker``            yes       speaker id (used for speaker-disjoint splits and per-speaker scores)
``utt_id``             no        unique id; default: the file name without suffix
``gender``             no        ``female``/``male`` (also ``f``/``m``, any case); else ``unknown``
``label``              see (*)   one of ``neutral happy sad angry surprise fear disgust contempt
                                 other``, or a name listed in the reader's ``label_mapping``
``votes``              see (*)   JSON list of 9 primary-vote counts in the order above
``p_<category>``       see (*)   all 9 columns ``p_neutral`` ... ``p_other``: a distribution
``arousal`` ``valence``  see (*)   scores in [0, 1], or on the 1..7 grader scale (``dimension_scale``)
``dominance``
``split``              no        ``train``/``valid``/``test`` or empty; without any, a seeded
                                 80/10/10 speaker split is made
=====================  ========  ==============================================================

(*) Every row needs a target: a ``label``, ``votes``, ``p_*`` columns or at least one
dimension. The categorical target comes from ``votes`` (normalised counts) if given,
else ``p_*``, else ``label`` (one-hot). The ``label`` column is the plurality of the
votes/distribution when those are given (empty on ties), else the label itself.

``dimension_scale``: ``"unit"`` (values already in [0, 1]), ``"1-7"`` (mapped with
(s - 1) / 6) or ``"auto"`` (default: ``unit`` when every value is in [0, 1], ``1-7``
when every value is in [1, 7] and some exceed 1; otherwise an error).

Example CSV::

    path,speaker,gender,label,arousal,valence,dominance,split
    audio/a1.wav,spk1,female,happy,0.7,0.8,0.6,train
    audio/b1.wav,spk2,male,sad,0.2,0.1,0.3,test
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from edge_ser.data.prepare import CorpusReading
from edge_ser.data.soft_labels import (
    SOFT_TARGET_RULE_SINGLE,
    SOFT_TARGET_RULE_VOTES,
    consensus_label,
    grader_vote_distribution,
    vote_counts,
)
from edge_ser.data.table import PROB_COLUMNS, SPLITS, empty_row, format_votes
from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES, DIMENSIONS, normalize_dimension

logger = logging.getLogger(__name__)

CORPUS_NAME = "manifest"
REQUIRED = ("path", "speaker")
TARGET_COLUMNS = ("label", "votes", *PROB_COLUMNS, *DIMENSIONS)
MAX_VOTES = 1_000_000
"""Most votes one category may get for one utterance: far above any grading campaign, and far
below where counts stop being exact integers."""
DIMENSION_SCALES = ("auto", "unit", "1-7")
_GENDERS = {"female": "female", "f": "female", "male": "male", "m": "male"}
SOFT_TARGET_RULE_GIVEN = "p_<category> columns given by the user manifest, used as they are."


def _read_rows(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson"):
            records = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path} line {number} is not valid JSON ({exc.msg}); expected one JSON "
                                      "object per line.") from exc
                if not isinstance(record, dict):
                    raise CorpusError(f"{path} line {number} is a JSON {type(record).__name__}; expected an object.")
                records.append({k: ("" if v is None else (json.dumps(v) if isinstance(v, list) else str(v)))
                                for k, v in record.items()})
            return pd.DataFrame(records, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path} could not be parsed ({exc}); expected a UTF-8 CSV with a header row.") from exc
    raise CorpusError(f"{path} has suffix {path.suffix!r}; expected a .csv or .jsonl manifest.")


def _resolve_scale(frame: pd.DataFrame, scale: str, path: Path) -> str:
    if scale not in DIMENSION_SCALES:
        raise CorpusError(f"dimension_scale={scale!r}; expected one of {list(DIMENSION_SCALES)}.")
    present = [d for d in DIMENSIONS if d in frame.columns]
    values = np.concatenate([pd.to_numeric(frame[d].replace("", np.nan), errors="coerce").to_numpy(float)
                             for d in present]) if present else np.array([])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "unit"
    lo, hi = float(values.min()), float(values.max())
    if scale == "auto":
        if lo >= 0.0 and hi <= 1.0:
            return "unit"
        if lo >= 1.0 and hi <= 7.0:
            logger.info("%s: dimension values lie in [%g, %g]; read as the 1..7 grader scale", path, lo, hi)
            return "1-7"
    expected = {"unit": (0.0, 1.0), "1-7": (1.0, 7.0), "auto": (0.0, 7.0)}[scale]
    if lo < expected[0] or hi > expected[1] or scale == "auto":
        raise CorpusError(
            f"{path}: dimension values range over [{lo:g}, {hi:g}]; expected [0, 1] (dimension_scale='unit') or "
            f"[1, 7] (dimension_scale='1-7'), got dimension_scale={scale!r}. Rescale the columns or pass the "
            "matching dimension_scale."
        )
    return scale


def read_manifest(
    root: str | Path,
    *,
    strict: bool = False,
    label_mapping: Mapping[str, str] | None = None,
    dimension_scale: str = "auto",
) -> CorpusReading:
    """Rows from a user manifest file `root` (.csv or .jsonl; format in the module docstring).

    `label_mapping` maps your own label names onto CATEGORIES (e.g. ``{"joy": "happy"}``).
    """
    del strict  # audio checks happen in prepare_corpus
    path = Path(root).resolve()
    if not path.is_file():
        raise CorpusError(f"{path} is not a file; --corpus manifest expects --raw-root to be the manifest CSV/JSONL file.")
    mapping = {name: name for name in CATEGORIES}
    for source, target in dict(label_mapping or {}).items():
        if target not in CATEGORIES:
            raise CorpusError(f"label_mapping maps {source!r} to {target!r}; expected targets in {list(CATEGORIES)}.")
        mapping[str(source)] = target
    frame = _read_rows(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CorpusError(
            f"{path} lacks required column(s) {missing}; has {list(frame.columns)}. A manifest needs "
            f"{list(REQUIRED)} and a target: 'label', 'votes', the 9 p_<category> columns or "
            f"{'/'.join(DIMENSIONS)}."
        )
    if not any(c in frame.columns for c in TARGET_COLUMNS):
        raise CorpusError(
            f"{path} has no label columns (has {list(frame.columns)}); expected at least one of 'label', 'votes', "
            f"the 9 p_<category> columns or {'/'.join(DIMENSIONS)}."
        )
    partial = [c for c in PROB_COLUMNS if c in frame.columns]
    if partial and len(partial) != len(PROB_COLUMNS):
        raise CorpusError(f"{path} has p_ columns {partial}; expected all 9: {list(PROB_COLUMNS)}.")
    if len(frame) == 0:
        raise CorpusError(f"{path} lists no utterances; expected one row per audio file.")
    scale = _resolve_scale(frame, dimension_scale, path)

    rows = []
    sources = {"votes": 0, "p_columns": 0, "label": 0, "dimensions_only": 0}
    for number, record in enumerate(frame.to_dict("records"), start=2 if path.suffix == ".csv" else 1):
        where = f"{path.name} {'row' if path.suffix == '.csv' else 'line'} {number}"
        rows.append(_row(record, where=where, mapping=mapping, scale=scale, sources=sources))
    used = {k: v for k, v in sources.items() if v}
    if set(used) <= {"votes", "dimensions_only"} and "votes" in used:
        rule = SOFT_TARGET_RULE_VOTES
    elif set(used) <= {"label", "dimensions_only"} and "label" in used:
        rule = SOFT_TARGET_RULE_SINGLE
    elif set(used) == {"p_columns"}:
        rule = SOFT_TARGET_RULE_GIVEN
    else:
        rule = f"mixed, per row: votes -> {SOFT_TARGET_RULE_VOTES} label -> {SOFT_TARGET_RULE_SINGLE} " \
               f"p_<category> -> {SOFT_TARGET_RULE_GIVEN}"
    return CorpusReading(
        corpus=CORPUS_NAME,
        rows=tuple(rows),
        audio_root=path.parent,
        label_mapping={k: v for k, v in mapping.items()},
        soft_target_rule=rule,
        default_folds=None,
        notes=(f"dimension scale: {scale}",),
        extra={"manifest_file": path.name, "target_sources": sources, "dimension_scale": scale},
    )


def _row(record: dict[str, Any], *, where: str, mapping: Mapping[str, str], scale: str,
         sources: dict[str, int]) -> dict[str, Any]:
    rel = str(record["path"]).strip()
    speaker = str(record["speaker"]).strip()
    if not rel or not speaker:
        raise CorpusError(f"{where}: empty {'path' if not rel else 'speaker'}; every row needs a path and a speaker.")
    row = empty_row()
    gender = str(record.get("gender", "")).strip().lower()
    row.update(utt_id=str(record.get("utt_id", "")).strip() or Path(rel).stem, path=rel, speaker=speaker,
               gender=_GENDERS.get(gender, "unknown"))
    split = str(record.get("split", "")).strip().lower()
    if split not in SPLITS and split != "":
        raise CorpusError(f"{where}: split {split!r}; expected one of {list(SPLITS)} or empty.")
    row["split"] = split

    label = str(record.get("label", "")).strip()
    mapped = None
    if label:
        if label not in mapping:
            raise CorpusError(
                f"{where}: label {label!r} is not a known category; expected one of {list(CATEGORIES)} or a name in "
                "label_mapping. Pass label_mapping={...} to read_manifest (e.g. {'joy': 'happy'})."
            )
        mapped = mapping[label]
        row["source_label"] = label

    votes_cell = str(record.get("votes", "")).strip()
    probs = [str(record.get(c, "")).strip() for c in PROB_COLUMNS]
    if votes_cell:
        shown = votes_cell if len(votes_cell) <= 80 else votes_cell[:77] + "..."
        try:
            votes = np.asarray(json.loads(votes_cell), dtype=float)
        except (json.JSONDecodeError, TypeError, ValueError, OverflowError) as exc:
            raise CorpusError(f"{where}: votes {shown!r} is not a JSON list of 9 counts ({str(exc)[:80]}); "
                              f"expected e.g. [3, 1, 0, 0, 0, 0, 0, 0, 0] in the order {list(CATEGORIES)}.") from None
        if (votes.shape != (len(CATEGORIES),) or not np.all(np.isfinite(votes)) or np.any(votes != np.round(votes))
                or np.any(votes < 0) or np.any(votes > MAX_VOTES)):
            raise CorpusError(f"{where}: votes {shown!r}; expected 9 whole-number counts from 0 to {MAX_VOTES} in "
                              f"the order {list(CATEGORIES)}.")
        dist = grader_vote_distribution(votes)
        row["votes"] = format_votes(votes.astype(int))
        row["label"] = consensus_label(votes) or ""
        sources["votes"] += 1
    elif any(probs):
        try:
            dist = np.asarray([float(p) for p in probs], dtype=float)
        except ValueError as exc:
            raise CorpusError(f"{where}: p_<category> values {probs} are not all numbers ({exc}).") from exc
        if np.any(~np.isfinite(dist)) or np.any(dist < 0) or not np.isclose(dist.sum(), 1.0, atol=1e-4):
            raise CorpusError(f"{where}: p_<category> values sum to {dist.sum():g} (or are negative/NaN); "
                              "expected a distribution summing to 1.")
        dist = dist / dist.sum()
        row["label"] = consensus_label(dist) or ""
        sources["p_columns"] += 1
    elif mapped is not None:
        votes = vote_counts([mapped])
        dist = grader_vote_distribution(votes)
        row["votes"] = format_votes(votes)
        row["label"] = mapped
        sources["label"] += 1
    else:
        dist = None
    if dist is not None:
        row.update({f"p_{c}": float(p) for c, p in zip(CATEGORIES, dist)})

    for name in DIMENSIONS:
        cell = str(record.get(name, "")).strip()
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError as exc:
            raise CorpusError(f"{where}: {name} = {cell!r} is not a number.") from exc
        if math.isinf(value):
            raise CorpusError(f"{where}: {name} = {cell!r} is infinite; expected a score in [0, 1] or on the 1..7 "
                              "scale, or an empty cell (or NaN) where the corpus has none.")
        if math.isnan(value):  # NaN is how pandas and many exports write a missing score
            continue
        row[name] = normalize_dimension(value) if scale == "1-7" else value
    has_dims = any(not math.isnan(float(row[d])) for d in DIMENSIONS)
    if dist is None and not has_dims:
        raise CorpusError(
            f"{where} ({rel}) has no target; expected a 'label', 'votes', the 9 p_<category> columns or at least one "
            f"of {'/'.join(DIMENSIONS)}. Fill one in or remove the row."
        )
    if dist is None:
        sources["dimensions_only"] += 1
    return row

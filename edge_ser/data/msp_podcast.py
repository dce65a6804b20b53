"""MSP-Podcast reader (SPEC.md section 1, "MSP-Podcast release layout").

Expected under the release root::

    Audios/<FileName>.wav                  16 kHz audio
    Labels/labels_consensus.csv | .json    FileName, EmoClass (or EmoClass_Major), EmoAct, EmoVal,
                                           EmoDom, SpkrID, Gender, Split_Set; the JSON is keyed by
                                           FileName with the other fields inside
    Labels/labels_detailed.csv | .json     optional; one entry per (file, worker), either
                                           release-1.6 style (EmoClass_Major = primary vote as a word,
                                           EmoClass_Second, EmoAct, EmoVal, EmoDom) or later
                                           releases' EmoDetail strings
                                           "WORKER00014; Neutral; Concerned,Disappointed; A:3.0; V:4.0; D:4.0"

Targets:

- **votes / soft target**: primary votes only (secondary emotions are ignored), counted over
  the 9 categories; the 8 named classes map by name and everything else ("Other",
  "Other - <free text>", unknown words) counts for ``other``. p = votes / total.
  Without a detailed file, the consensus class is used as one vote; ``X`` (no agreement)
  then gives no categorical target.
- **label**: plurality of the votes (empty on ties), else the consensus class.
- **A/V/D**: the mean over graders of the 1..7 scores, mapped with
  :func:`edge_ser.labels.normalize_dimension`; the consensus file's values when there
  are no detailed scores.
- **split**: Train -> train, Development -> valid, Test1 -> test. Other sets (Test2,
  Test3, ...) stay unassigned (empty split); ``extras.split_set`` keeps the original
  value so they can be selected later.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

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
from edge_ser.data.table import empty_row, format_votes
from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES, DIMENSIONS, normalize_dimension

logger = logging.getLogger(__name__)

CORPUS_NAME = "msp-podcast"
AUDIO_DIR = "Audios"
LABELS_DIR = "Labels"
CONSENSUS_FILES = ("labels_consensus.csv", "labels_consensus.json")
DETAILED_FILES = ("labels_detailed.csv", "labels_detailed.json")
CONSENSUS_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
DIMENSION_COLUMNS = ("EmoAct", "EmoVal", "EmoDom")  # same order as edge_ser.labels.DIMENSIONS

EMO_CLASS_LETTERS: dict[str, str] = {
    "N": "neutral", "H": "happy", "S": "sad", "A": "angry", "U": "surprise",
    "F": "fear", "D": "disgust", "C": "contempt", "O": "other",
}
"""Consensus letters; ``X`` (no agreement) is deliberately absent: it has no category."""

PRIMARY_WORDS: dict[str, str] = {
    "neutral": "neutral", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "angry": "angry", "anger": "angry", "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "disgust": "disgust", "contempt": "contempt", "other": "other",
}

LABEL_MAPPING: dict[str, str] = {
    **{f"EmoClass {k}": v for k, v in EMO_CLASS_LETTERS.items()},
    "Neutral": "neutral", "Happy": "happy", "Sad": "sad", "Angry": "angry", "Surprise": "surprise",
    "Fear": "fear", "Disgust": "disgust", "Contempt": "contempt",
    "Other / 'Other - <free text>' / any other primary vote": "other",
}

SPLIT_SETS: dict[str, str] = {"Train": "train", "Development": "valid", "Test1": "test"}
_SPLIT_RULE = ("Split_Set Train -> train, Development -> valid, Test1 -> test; other sets (e.g. Test2, Test3) "
               "are left unassigned and kept in extras.split_set")
_DIM_FIELD = re.compile(r"^\s*([AVD])\s*:\s*([-+0-9.eE]+|nan|NaN)?\s*$")


def map_primary_vote(vote: Any) -> str:
    """A grader's primary choice (word or consensus letter) -> one of CATEGORIES; unknown -> 'other'.

    >>> map_primary_vote("Angry"), map_primary_vote("Other - Concerned"), map_primary_vote("Frustrated")
    ('angry', 'other', 'other')
    """
    text = str(vote).strip()
    if text in EMO_CLASS_LETTERS:
        return EMO_CLASS_LETTERS[text]
    return PRIMARY_WORDS.get(text.lower(), "other")


def parse_emo_detail(detail: str) -> tuple[str, tuple[float, float, float]]:
    """Parse ``"WORKER; Primary; Secondary,...; A:x; V:y; D:z"`` -> (category, (A, V, D) raw 1..7, NaN if absent).

    >>> parse_emo_detail("WORKER00014; Neutral; Concerned,Disappointed; A:3.0; V:4.0; D:4.0")
    ('neutral', (3.0, 4.0, 4.0))
    """
    fields = [f.strip() for f in str(detail).split(";")]
    if len(fields) < 2 or not fields[1]:
        raise CorpusError(
            f"EmoDetail {detail!r} has no primary emotion; expected "
            "'WORKER00014; Neutral; Concerned,Disappointed; A:3.0; V:4.0; D:4.0'."
        )
    dims = {"A": math.nan, "V": math.nan, "D": math.nan}
    for field in fields[2:]:
        match = _DIM_FIELD.match(field)
        if match and match.group(2) is not None:
            dims[match.group(1)] = float(match.group(2))
    return map_primary_vote(fields[1]), (dims["A"], dims["V"], dims["D"])


def _find(labels_dir: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (labels_dir / name).is_file():
            return labels_dir / name
    return None


def _read_table(path: Path, *, keyed_by: str = "FileName") -> pd.DataFrame:
    """CSV, or JSON keyed by file name (or a list of records), as a DataFrame with a FileName column."""
    if path.suffix == ".csv":
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CorpusError(f"{path} is not a readable CSV ({exc}); re-extract the MSP-Podcast labels.") from exc
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path} is not valid JSON ({exc}); re-extract the MSP-Podcast labels.") from exc
    if isinstance(data, list):
        return pd.DataFrame(data).astype(str)
    if isinstance(data, dict):
        return pd.DataFrame([{keyed_by: key, **value} for key, value in data.items() if isinstance(value, dict)]
                            ).astype(str)
    raise CorpusError(f"{path} holds a JSON {type(data).__name__}; expected an object keyed by {keyed_by}.")


def _to_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    if math.isinf(out):  # NaN and empty mean "not scored"; an infinite score is a broken file, not a gap
        raise CorpusError(f"an MSP-Podcast A/V/D score is {value!r}; expected a number on the 1..7 grader scale or "
                          "an empty cell. Fix the label file (labels_consensus / labels_detailed).")
    return out


def _detailed_entries(path: Path) -> Iterable[tuple[str, str, tuple[float, float, float]]]:
    """Yield (FileName, primary category, raw (A, V, D)) per grader from either detailed format."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorpusError(f"{path} is not valid JSON ({exc}); re-extract the MSP-Podcast labels.") from exc
        if isinstance(data, list):  # list of records, same fields as the CSV
            yield from _detailed_rows(pd.DataFrame(data).astype(str), path)
            return
        if not isinstance(data, dict):
            raise CorpusError(f"{path} holds a JSON {type(data).__name__}; expected an object keyed by FileName.")
        for file_name, value in data.items():
            for entry in _grader_entries(value):
                yield (file_name, *_grader_vote(entry, where=f"{path} [{file_name}]"))
        return
    yield from _detailed_rows(_read_table(path), path)


def _grader_entries(value: Any) -> list[Any]:
    """Flatten the per-file value of a detailed JSON into one entry per grader."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        if "EmoDetail" in value:
            inner = value["EmoDetail"]
            return inner if isinstance(inner, list) else [inner]
        if "EmoClass_Major" in value:
            return [value]
        return list(value.values())  # {worker: {...}} or {worker: "detail"}
    return [value]


def _grader_vote(entry: Any, *, where: str) -> tuple[str, tuple[float, float, float]]:
    if isinstance(entry, str):
        return parse_emo_detail(entry)
    if isinstance(entry, dict):
        if "EmoDetail" in entry:
            return parse_emo_detail(entry["EmoDetail"])
        if "EmoClass_Major" in entry:
            return (map_primary_vote(entry["EmoClass_Major"]),
                    tuple(_to_float(entry.get(c)) for c in DIMENSION_COLUMNS))  # type: ignore[return-value]
    raise CorpusError(
        f"{where}: grader entry {entry!r} has neither EmoDetail nor EmoClass_Major; expected one of the two "
        "labels_detailed formats (SPEC.md section 1)."
    )


def _detailed_rows(frame: pd.DataFrame, path: Path) -> Iterable[tuple[str, str, tuple[float, float, float]]]:
    if "FileName" not in frame.columns or not ({"EmoDetail", "EmoClass_Major"} & set(frame.columns)):
        raise CorpusError(
            f"{path} has columns {list(frame.columns)}; expected FileName plus EmoDetail (later releases) or "
            "EmoClass_Major, EmoClass_Second, EmoAct, EmoVal, EmoDom (release 1.6)."
        )
    for record in frame.to_dict("records"):
        yield (record["FileName"], *_grader_vote(record, where=f"{path} [{record['FileName']}]"))


def _aggregate_detailed(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """FileName -> (9 vote counts, mean raw (A, V, D) with NaN where no grader scored)."""
    votes: dict[str, list[str]] = {}
    scores: dict[str, list[tuple[float, float, float]]] = {}
    for file_name, category, dims in _detailed_entries(path):
        votes.setdefault(file_name, []).append(category)
        scores.setdefault(file_name, []).append(dims)
    out = {}
    for file_name, cats in votes.items():
        arr = np.asarray(scores[file_name], dtype=float)
        with np.errstate(invalid="ignore"):
            means = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in arr.T])
        out[file_name] = (vote_counts(cats), means)
    return out


def read_msp_podcast(root: str | Path, *, strict: bool = False) -> CorpusReading:
    """Rows for every utterance in an MSP-Podcast release at `root` (see the module docstring)."""
    del strict  # audio checks happen in prepare_corpus
    root = Path(root).resolve()
    labels_dir = root / LABELS_DIR
    consensus_path = _find(labels_dir, CONSENSUS_FILES)
    if consensus_path is None or not (root / AUDIO_DIR).is_dir():
        raise CorpusError(
            f"{root} is not an MSP-Podcast release: expected {AUDIO_DIR}/*.wav and {LABELS_DIR}/"
            f"{CONSENSUS_FILES[0]} (or {CONSENSUS_FILES[1]}); found audio folder: {(root / AUDIO_DIR).is_dir()}, "
            f"consensus labels: {consensus_path is not None}. Point --raw-root at the release folder."
        )
    consensus = _read_table(consensus_path)
    if "EmoClass" not in consensus.columns and "EmoClass_Major" in consensus.columns:
        consensus = consensus.rename(columns={"EmoClass_Major": "EmoClass"})
    missing = [c for c in CONSENSUS_COLUMNS if c not in consensus.columns]
    if missing:
        raise CorpusError(
            f"{consensus_path} lacks column(s) {missing}; has {list(consensus.columns)}. Expected "
            f"{list(CONSENSUS_COLUMNS)} (EmoClass may be named EmoClass_Major)."
        )
    detailed_path = _find(labels_dir, DETAILED_FILES)
    detailed = _aggregate_detailed(detailed_path) if detailed_path is not None else {}
    if detailed_path is None:
        logger.warning("%s: no %s; soft targets fall back to the consensus class as one vote",
                       labels_dir, " / ".join(DETAILED_FILES))

    rows = []
    n_from_votes = n_from_consensus = n_without = 0
    for record in consensus.to_dict("records"):
        file_name = str(record["FileName"])
        letter = str(record["EmoClass"]).strip()
        row = empty_row()
        split_set = str(record["Split_Set"]).strip()
        gender = str(record["Gender"]).strip().lower()
        speaker = str(record["SpkrID"]).strip()
        row.update(
            utt_id=Path(file_name).stem,
            path=file_name,
            speaker=speaker if speaker and speaker.lower() != "unknown" else "unknown",
            gender=gender if gender in ("female", "male") else "unknown",
            split=SPLIT_SETS.get(split_set, ""),
            source_label=letter,
            extras=json.dumps({"split_set": split_set, "emo_class": letter}),
        )
        raw_dims = np.array([_to_float(record[c]) for c in DIMENSION_COLUMNS])
        votes = None
        if file_name in detailed:
            votes, grader_dims = detailed[file_name]
            # Graders' own scores when present; the consensus file's otherwise (per dimension).
            raw_dims = np.where(np.isfinite(grader_dims), grader_dims, raw_dims)
            n_from_votes += 1
        elif letter in EMO_CLASS_LETTERS:
            votes = vote_counts([EMO_CLASS_LETTERS[letter]])
            n_from_consensus += 1
        else:
            n_without += 1
        if votes is not None and votes.sum() > 0:
            row["votes"] = format_votes(votes)
            row.update({f"p_{c}": float(p) for c, p in zip(CATEGORIES, grader_vote_distribution(votes))})
            row["label"] = consensus_label(votes) or ""
        elif letter in EMO_CLASS_LETTERS:
            row["label"] = EMO_CLASS_LETTERS[letter]
        for name, value in zip(DIMENSIONS, raw_dims):
            row[name] = normalize_dimension(value) if np.isfinite(value) else math.nan
        rows.append(row)
    if not rows:
        raise CorpusError(f"{consensus_path} lists no utterances; expected one row per file.")
    if detailed and n_from_consensus:
        logger.warning("%s: %d utterance(s) have no detailed votes; their target is the consensus class",
                       root, n_from_consensus)
    rule = SOFT_TARGET_RULE_VOTES if detailed else SOFT_TARGET_RULE_SINGLE
    return CorpusReading(
        corpus=CORPUS_NAME,
        rows=tuple(rows),
        audio_root=root / AUDIO_DIR,
        label_mapping=dict(LABEL_MAPPING),
        soft_target_rule=rule,
        default_folds=None,
        notes=(_SPLIT_RULE, "primary votes only; secondary emotions ignored",
               "EmoClass X (no agreement) has no category: no label, and no target without detailed votes"),
        extra={"label_files": {"consensus": consensus_path.name,
                               "detailed": detailed_path.name if detailed_path else None},
               "target_sources": {"grader_votes": n_from_votes, "consensus_class": n_from_consensus,
                                  "none": n_without}},
    )

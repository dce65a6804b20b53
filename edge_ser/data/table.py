"""The one utterance table every corpus becomes, stored as CSV next to a manifest.

A prepared corpus folder holds:

- ``utterances.csv``: one row per utterance (columns in :data:`COLUMNS`);
- ``manifest.json``: corpus name, counts, label vocabulary and mapping, how soft
  targets were formed, where audio lives, sha256 of the table, edge-ser version.

Column meanings (empty cell = missing):

==============  ==========================================================
utt_id          unique id
path            audio file, relative to the manifest's ``audio_root``
speaker         speaker id (string)
gender          ``female`` / ``male`` / ``unknown``
duration_s      seconds
split           ``train`` / ``valid`` / ``test`` (empty if unassigned)
fold            speaker fold index for k-fold corpora, -1 if none
votes           JSON list of 9 primary-vote counts in CATEGORIES order, or empty
label           consensus category (plurality; empty on ties / no agreement)
source_label    the corpus's own label before mapping
p_<category>    soft target distribution over the 9 categories (sums to 1)
arousal ...     dimensions normalised to [0, 1] (empty when the corpus lacks them)
extras          JSON object with corpus-specific fields
==============  ==========================================================
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from edge_ser import __version__
from edge_ser.errors import CorpusError, ManifestError
from edge_ser.io import (
    read_versioned_manifest, sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic,
)
from edge_ser.labels import CATEGORIES, DIMENSIONS, SAMPLE_RATE

TABLE_FILE = "utterances.csv"
MANIFEST_FILE = "manifest.json"
CORPUS_FORMAT = "edge-ser-corpus"
CORPUS_FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
GENDERS = ("female", "male", "unknown")
PROB_COLUMNS = tuple(f"p_{name}" for name in CATEGORIES)
BASE_COLUMNS = ("utt_id", "path", "speaker", "gender", "duration_s", "split", "fold",
                "votes", "label", "source_label")
COLUMNS = BASE_COLUMNS + PROB_COLUMNS + DIMENSIONS + ("extras",)
REQUIRED_COLUMNS = ("utt_id", "path", "speaker")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A prepared corpus: its folder, its utterance table and its manifest."""

    root: Path
    table: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("corpus", "unknown"))

    @property
    def audio_root(self) -> Path:
        root = Path(self.manifest.get("audio_root", "."))
        return root if root.is_absolute() else (self.root / root)

    def audio_path(self, utt: str | int | Mapping[str, Any]) -> Path:
        """Absolute audio path for a row (mapping), a row position (int) or an utt_id (str)."""
        if isinstance(utt, str):
            match = self.table.index[self.table["utt_id"] == utt]
            if len(match) == 0:
                raise CorpusError(f"utterance {utt!r} is not in corpus {self.name!r} at {self.root}.")
            rel = self.table.loc[match[0], "path"]
        elif isinstance(utt, (int, np.integer)):
            rel = self.table.iloc[int(utt)]["path"]
        else:
            rel = utt["path"]
        path = Path(rel)
        return path if path.is_absolute() else self.audio_root / path

    def soft_targets(self) -> np.ndarray:
        """(utterances, 9) float32; rows are NaN where an utterance has no categorical target."""
        return self.table.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float32)

    def dimension_targets(self) -> np.ndarray:
        """(utterances, 3) float32 arousal/valence/dominance in [0, 1]; NaN where missing."""
        return self.table.loc[:, list(DIMENSIONS)].to_numpy(dtype=np.float32)

    def subset(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; expected one of {list(SPLITS)}.")
        return self.table[self.table["split"] == split]


DERIVED_BLOCKS: tuple[str, ...] = ("noisy", "condition", "augment", "windows")
"""Manifest blocks of a corpus made from another one's utterances (same speakers, folds, labels)."""


def derivation(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``noisy``, ``condition``, ``augment`` or ``windows`` block of a corpus made from another
    one (its ``base_corpus``), else None."""
    for key in DERIVED_BLOCKS:
        block = manifest.get(key)
        if isinstance(block, Mapping) and block.get("base_corpus"):
            return block
    return None


def empty_row() -> dict[str, Any]:
    """A row with every column present and missing values where nothing is known."""
    row: dict[str, Any] = {c: np.nan for c in COLUMNS}
    row.update(gender="unknown", split="", fold=-1, votes="", label="", source_label="", extras="{}")
    return row


def normalise_table(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Build a table with all columns in order, checked for the invariants of the format."""
    table = pd.DataFrame(rows).copy() if not isinstance(rows, pd.DataFrame) else rows.copy()
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise CorpusError(
            f"utterance table lacks required column(s) {missing}; has {list(table.columns)}. "
            f"Every corpus needs at least {list(REQUIRED_COLUMNS)}."
        )
    defaults = empty_row()
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = defaults[column]
    table = table.loc[:, list(COLUMNS)]
    for column in ("utt_id", "path", "speaker", "gender", "split", "votes", "label", "source_label", "extras"):
        table[column] = table[column].fillna(defaults.get(column, "")).astype(str)
    table["fold"] = pd.to_numeric(table["fold"], errors="coerce").fillna(-1).astype(int)
    for column in ("duration_s",) + PROB_COLUMNS + DIMENSIONS:
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    _check_invariants(table)
    return table.reset_index(drop=True)


def _check_invariants(table: pd.DataFrame) -> None:
    dup = table["utt_id"][table["utt_id"].duplicated()]
    if len(dup):
        raise CorpusError(f"utt_id must be unique; duplicated: {dup.head(5).tolist()}.")
    bad_gender = sorted(set(table["gender"]) - set(GENDERS))
    if bad_gender:
        raise CorpusError(f"gender values {bad_gender} are not allowed; expected one of {list(GENDERS)}.")
    bad_split = sorted(set(table["split"]) - set(SPLITS) - {""})
    if bad_split:
        raise CorpusError(f"split values {bad_split} are not allowed; expected one of {list(SPLITS)} or empty.")
    probs = table.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=float)
    has = ~np.isnan(probs).all(axis=1)
    if np.isnan(probs[has]).any():
        raise CorpusError("a row has some but not all p_<category> columns; give all 9 or none.")
    sums = probs[has].sum(axis=1)
    if len(sums) and not np.allclose(sums, 1.0, atol=1e-5):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise CorpusError(f"soft targets must sum to 1; a row sums to {sums[worst]:.6f}.")
    dims = table.loc[:, list(DIMENSIONS)].to_numpy(dtype=float)
    finite = dims[~np.isnan(dims)]
    if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
        raise CorpusError(
            f"dimension targets must be normalised to [0, 1]; found range [{finite.min()}, {finite.max()}]. "
            "Use edge_ser.labels.normalize_dimension on 1..7 scores."
        )


def table_counts(table: pd.DataFrame) -> dict[str, Any]:
    """Counts written into the manifest and printed by `edge-ser data stats`."""
    per_speaker = table.drop_duplicates("speaker")
    labels = table["label"].replace("", "(none)")
    return {
        "utterances": int(len(table)),
        "speakers": int(table["speaker"].nunique()),
        "speakers_by_gender": {g: int((per_speaker["gender"] == g).sum()) for g in GENDERS},
        "utterances_by_gender": {g: int((table["gender"] == g).sum()) for g in GENDERS},
        "by_label": {k: int(v) for k, v in labels.value_counts().sort_index().items()},
        "by_split": {k or "(none)": int(v) for k, v in table["split"].value_counts().sort_index().items()},
        "hours": float(np.nansum(table["duration_s"].to_numpy(dtype=float)) / 3600.0),
        "with_votes": int((table["votes"] != "").sum()),
        "with_dimensions": {d: int(table[d].notna().sum()) for d in DIMENSIONS},
    }


def save_corpus(
    table: pd.DataFrame | list[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    corpus: str,
    audio_root: str | os.PathLike,
    label_mapping: Mapping[str, str],
    soft_target_rule: str,
    extra: Mapping[str, Any] | None = None,
) -> Corpus:
    """Write ``utterances.csv`` and ``manifest.json`` atomically into `out_dir`.

    `audio_root` may be absolute, or relative to `out_dir` (e.g. ``"audio"`` for
    corpora that carry their own audio such as the synthetic one).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = normalise_table(table)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, float_format="%.6g", lineterminator="\n")
    data = buffer.getvalue().encode("utf-8")
    write_bytes_atomic(out / TABLE_FILE, data)
    manifest = {
        "format": CORPUS_FORMAT,
        "format_version": CORPUS_FORMAT_VERSION,
        "corpus": corpus,
        "edge_ser_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sample_rate": SAMPLE_RATE,
        "audio_root": os.fspath(audio_root),
        "table_file": TABLE_FILE,
        "table_sha256": sha256_bytes(data),
        "label_vocabulary": list(CATEGORIES),
        "dimensions": list(DIMENSIONS),
        "dimension_normalisation": "(score - 1) / 6 from the 1..7 grader scale, giving [0, 1]",
        "label_mapping": dict(label_mapping),
        "soft_target_rule": soft_target_rule,
        "counts": table_counts(table),
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return Corpus(root=out, table=table, manifest=manifest)


def rows_of_split(corpus: Corpus, split: str) -> pd.DataFrame:
    """The rows of one split (``train``/``valid``/``test``) or of ``all``; a clear error when the split
    is unknown or empty (corpus copies such as noisy or condition sets are made of one split)."""
    if split == "all":
        rows = corpus.table
    elif split in SPLITS:
        rows = corpus.subset(split)
    else:
        raise CorpusError(f"unknown split {split!r}; expected one of {list(SPLITS)} or 'all'.")
    if len(rows) == 0:
        counts = corpus.table["split"].replace("", "(none)").value_counts().to_dict()
        raise CorpusError(
            f"corpus {corpus.name!r} at {corpus.root} has no rows in split {split!r} (rows per split: {counts}). "
            "Pick another --split or assign splits when preparing the corpus."
        )
    return rows


def claim_corpus_folder(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that a corpus may be written into `out_dir` before any audio is (see
    :func:`edge_ser.output_folder.claim_output_folder`); with `overwrite`, remove the old corpus's
    table, manifest, stats plot and, when it carries its own audio (a relative ``audio_root``
    such as ``audio``), that audio folder. Audio a prepared corpus points to elsewhere is never touched.
    """
    from edge_ser.output_folder import claim_output_folder

    def owned(manifest: dict[str, Any]) -> list[str]:
        names = [str(manifest.get("table_file", TABLE_FILE)), MANIFEST_FILE, "stats.png"]
        audio_root = str(manifest.get("audio_root", ""))
        if audio_root and not Path(audio_root).is_absolute() and Path(audio_root).name == audio_root:
            names.append(audio_root)
        return names

    def describe(manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts") or {}
        return f"corpus {manifest.get('corpus')!r}, {counts.get('utterances')} utterances"

    return claim_output_folder(out_dir, overwrite=overwrite, kind="a prepared corpus", expected_format=CORPUS_FORMAT,
                               owned=owned, describe=describe)


def load_corpus(corpus_dir: str | os.PathLike, *, verify: bool = True) -> Corpus:
    """Load a prepared corpus folder; check format version and the table's sha256."""
    root = Path(corpus_dir)
    manifest = read_versioned_manifest(
        root / MANIFEST_FILE, kind="a prepared corpus folder", expected_format=CORPUS_FORMAT,
        supported_versions=(CORPUS_FORMAT_VERSION,),
        fix=f"Re-create it with this edge-ser ({__version__}): `edge-ser data prepare` or `edge-ser data synth`.",
        missing_error=CorpusError,  # a folder that is not a corpus at all is a corpus error, as it always was
    )
    table_path = root / manifest.get("table_file", TABLE_FILE)
    if not table_path.is_file():
        raise CorpusError(f"{table_path} is missing; the manifest lists it. Re-create the corpus folder.")
    if verify:
        actual = sha256_file(table_path)
        if actual != manifest.get("table_sha256"):
            raise ManifestError(
                f"{table_path} has sha256 {actual[:12]}..., the manifest records "
                f"{str(manifest.get('table_sha256'))[:12]}...: the table was edited or truncated. "
                "Re-create the corpus folder (or fix the table and re-save it with edge_ser.data.table.save_corpus)."
            )
    table = pd.read_csv(table_path, dtype={"utt_id": str, "speaker": str, "path": str}, keep_default_na=False,
                        na_values={c: [""] for c in ("duration_s",) + PROB_COLUMNS + DIMENSIONS})
    return Corpus(root=root, table=normalise_table(table), manifest=manifest)


def parse_votes(cell: str) -> np.ndarray | None:
    """Decode the ``votes`` column (JSON list of 9 counts); None when empty."""
    if not cell:
        return None
    shown = cell if len(cell) <= 80 else cell[:77] + "..."
    try:
        votes = np.asarray(json.loads(cell), dtype=np.int64)
    except (json.JSONDecodeError, TypeError, ValueError, OverflowError) as exc:
        raise CorpusError(f"votes cell {shown!r} is not a JSON list of {len(CATEGORIES)} integer counts "
                          f"({str(exc)[:80]}). Re-create the corpus folder (edge-ser data prepare).") from None
    if votes.shape != (len(CATEGORIES),):
        raise CorpusError(f"votes cell {shown!r} has {votes.size} counts; expected {len(CATEGORIES)}.")
    return votes


def format_votes(votes: np.ndarray | list[int]) -> str:
    return json.dumps([int(v) for v in votes])

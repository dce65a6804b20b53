"""Turn a corpus on disk into a prepared corpus folder (``utterances.csv`` + ``manifest.json``).

``prepare_corpus`` = read (a reader from :data:`CORPUS_READERS`) -> check every audio
file's header -> assign splits/folds -> :func:`edge_ser.data.table.save_corpus`.

Audio header policy: a missing/unreadable file or one shorter than
:data:`edge_ser.audio.MIN_DURATION_S` is an error under ``strict``; otherwise it is
dropped with a logged warning and counted in the manifest (``audio_check``). Stereo
files and other sample rates are kept (``load_audio`` downmixes/resamples them with a
note) unless ``strict``, where they are errors too.

Splits: with ``folds`` (or the reader's default, 6 for RAVDESS) speakers are dealt into
gender-balanced folds and the split of fold 0 is filled in; otherwise the corpus's own
splits are kept (MSP-Podcast ``Split_Set``, a manifest's ``split`` column), and a corpus
without any gets a seeded 80/10/10 speaker split.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import soundfile as sf

from edge_ser.audio import MIN_DURATION_S, SAMPLE_RATE_RANGE
from edge_ser.data.splits import fold_assignment, speaker_folds, speaker_split
from edge_ser.data.table import Corpus, claim_corpus_folder, normalise_table, save_corpus
from edge_ser.errors import CorpusError
from edge_ser.labels import SAMPLE_RATE
from edge_ser.progress import progress_bar

logger = logging.getLogger(__name__)

CORPUS_READERS: dict[str, str] = {
    "ravdess": "edge_ser.data.ravdess:read_ravdess",
    "msp-podcast": "edge_ser.data.msp_podcast:read_msp_podcast",
    "manifest": "edge_ser.data.manifest_reader:read_manifest",
}
"""Corpus name -> ``module:function`` of its reader, imported on use (readers import this module)."""

_LISTED_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class CorpusReading:
    """What a reader returns: table rows plus what the manifest needs to know about them.

    `rows` are dicts in the :mod:`edge_ser.data.table` column layout with ``path``
    relative to `audio_root` (or absolute). ``duration_s`` is filled by prepare_corpus.
    """

    corpus: str
    rows: tuple[dict[str, Any], ...]
    audio_root: Path
    label_mapping: Mapping[str, str]
    soft_target_rule: str
    default_folds: int | None = None
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AudioCheck:
    """Result of the header pass over a corpus's audio files (counts go into the manifest)."""

    checked: int
    kept: int
    unreadable: tuple[str, ...]
    too_short: tuple[str, ...]
    multichannel: tuple[str, ...]
    other_rate: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "kept": self.kept,
            "skipped_unreadable": len(self.unreadable),
            "skipped_too_short": len(self.too_short),
            "min_duration_s": MIN_DURATION_S,
            "multichannel_downmixed_on_load": len(self.multichannel),
            "other_rate_resampled_on_load": len(self.other_rate),
            "examples": {
                "unreadable": list(self.unreadable[:_LISTED_PROBLEMS]),
                "too_short": list(self.too_short[:_LISTED_PROBLEMS]),
                "multichannel": list(self.multichannel[:_LISTED_PROBLEMS]),
                "other_rate": list(self.other_rate[:_LISTED_PROBLEMS]),
            },
        }


def get_reader(name: str) -> Callable[..., CorpusReading]:
    """The reader function registered under `name`; unknown names list the known ones."""
    try:
        target = CORPUS_READERS[name]
    except KeyError:
        raise CorpusError(
            f"unknown corpus {name!r}; expected one of {sorted(CORPUS_READERS)}. "
            "Use 'manifest' for your own CSV/JSONL list of files."
        ) from None
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def check_audio_headers(reading: CorpusReading, *, strict: bool) -> tuple[list[dict[str, Any]], AudioCheck]:
    """Read every file's header; return the rows kept (with ``duration_s``) and what was found.

    Raises CorpusError listing the offending files when `strict` and anything is off,
    or when no file is usable at all.
    """
    kept: list[dict[str, Any]] = []
    unreadable: list[str] = []
    too_short: list[str] = []
    multichannel: list[str] = []
    other_rate: list[str] = []
    for row in progress_bar(reading.rows, desc=f"{reading.corpus}: audio headers", unit="file", leave=False):
        rel = Path(str(row["path"]))
        path = rel if rel.is_absolute() else reading.audio_root / rel
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
            unreadable.append(f"{path} ({str(exc).strip() or type(exc).__name__})")
            continue
        low, high = SAMPLE_RATE_RANGE
        if info.frames <= 0 or not low <= info.samplerate <= high:
            unreadable.append(f"{path} (header reports {info.frames} frames at {info.samplerate} Hz; "
                              f"expected {low}..{high} Hz)")
            continue
        duration = info.frames / info.samplerate
        if duration < MIN_DURATION_S:
            too_short.append(f"{path} ({duration:.3f} s)")
            continue
        if info.channels > 1:
            multichannel.append(f"{path} ({info.channels} channels)")
        if info.samplerate != SAMPLE_RATE:
            other_rate.append(f"{path} ({info.samplerate} Hz)")
        kept.append({**row, "duration_s": duration})
    check = AudioCheck(checked=len(reading.rows), kept=len(kept), unreadable=tuple(unreadable),
                       too_short=tuple(too_short), multichannel=tuple(multichannel), other_rate=tuple(other_rate))
    problems = [
        ("unreadable or missing", unreadable, "re-encode or restore them, or drop them from the corpus"),
        (f"shorter than {MIN_DURATION_S} s", too_short, "drop them or pad them"),
    ]
    if strict:
        problems += [
            ("not mono", multichannel, "downmix them (sox in out -c 1) or run without --strict"),
            (f"not at {SAMPLE_RATE} Hz", other_rate,
             f"resample them (sox in -r {SAMPLE_RATE} out) or run without --strict"),
        ]
    for what, files, fix in problems:
        if not files:
            continue
        if strict:
            listed = "\n  ".join(files[:_LISTED_PROBLEMS])
            more = f"\n  ... and {len(files) - _LISTED_PROBLEMS} more" if len(files) > _LISTED_PROBLEMS else ""
            raise CorpusError(
                f"{len(files)} of {len(reading.rows)} audio files of {reading.corpus} are {what}:\n  {listed}{more}\n"
                f"Expected every file to be readable mono {SAMPLE_RATE} Hz audio of at least {MIN_DURATION_S} s; "
                f"{fix}."
            )
        if what.startswith(("unreadable", "shorter")):
            logger.warning("%s: skipped %d file(s) %s, e.g. %s", reading.corpus, len(files), what, files[0])
    if multichannel or other_rate:
        logger.info("%s: %d multichannel and %d non-%d Hz file(s) will be downmixed/resampled on load",
                    reading.corpus, len(multichannel), len(other_rate), SAMPLE_RATE)
    if not kept:
        raise CorpusError(
            f"none of the {len(reading.rows)} audio files of {reading.corpus} under {reading.audio_root} is usable "
            f"(unreadable: {len(unreadable)}, too short: {len(too_short)}); e.g. "
            f"{(unreadable + too_short)[:1]}. Check the corpus root and audio files."
        )
    return kept, check


def prepare_corpus(
    *,
    corpus: str,
    root: Path,
    out: Path,
    folds: int | None,
    seed: int,
    strict: bool,
    reader_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Corpus:
    """Read corpus `corpus` from `root`, check its audio, assign splits and save it to `out`.

    `folds`: k speaker folds (split = fold 0's train/valid/test); None uses the reader's
    default (6 for RAVDESS, none for MSP-Podcast and manifests). `reader_options` are
    passed to the reader (e.g. ``{"label_mapping": {...}}`` for ``manifest``). A prepared corpus
    already in `out` is replaced only with `overwrite` (otherwise OutputExistsError).
    """
    claim_corpus_folder(out, overwrite=overwrite)
    reader = get_reader(corpus)
    reading = reader(Path(root), strict=strict, **dict(reader_options or {}))
    if not reading.rows:
        raise CorpusError(f"the {corpus} reader found no utterances under {root}; check --raw-root.")
    rows, check = check_audio_headers(reading, strict=strict)
    table = normalise_table(rows)

    k = folds if folds is not None else reading.default_folds
    if k is not None:
        table = fold_assignment(speaker_folds(table, k=k, seed=seed), fold=0)
        split_info: dict[str, Any] = {"method": "speaker_folds", "k": int(k), "split_from_fold": 0, "seed": seed,
                                      "rule": "test = fold f, valid = fold (f + 1) % k, train = the rest"}
    elif (table["split"] == "").all():
        table = speaker_split(table, seed=seed)
        split_info = {"method": "speaker_split", "fractions": [0.8, 0.1, 0.1], "seed": seed}
    else:
        split_info = {"method": "from_corpus"}

    extra = {
        "source_root": os.fspath(Path(root).resolve()),
        "audio_check": check.to_dict(),
        "splits": split_info,
        "reader_notes": list(reading.notes),
        **dict(reading.extra),
    }
    return save_corpus(table, out, corpus=reading.corpus, audio_root=reading.audio_root.resolve(),
                       label_mapping=reading.label_mapping, soft_target_rule=reading.soft_target_rule, extra=extra)

"""RAVDESS speech reader: ``Actor_XX/03-01-EE-II-SS-RR-AA.<ext>`` -> utterance rows.

The seven two-digit fields are modality (03 audio-only), vocal channel (01 speech),
emotion EE, intensity II, statement SS, repetition RR and actor AA (odd = male,
even = female). RAVDESS is acted: one intended emotion per file and no grader votes,
so the soft target is one-hot (a single vote) and there are no A/V/D dimensions.

Label mapping onto :data:`edge_ser.labels.CATEGORIES` (:data:`LABEL_MAPPING`): the
eight RAVDESS emotions map one-to-one except **calm -> neutral**: calm is a low-arousal,
neutral-like state and MSP-Podcast's primary set has no counterpart for it. The
original 8-class label stays in ``source_label``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edge_ser.data.prepare import CorpusReading
from edge_ser.data.soft_labels import SOFT_TARGET_RULE_SINGLE, grader_vote_distribution, vote_counts
from edge_ser.data.table import empty_row, format_votes
from edge_ser.errors import CorpusError
from edge_ser.labels import CATEGORIES

CORPUS_NAME = "ravdess"
DEFAULT_FOLDS = 6
AUDIO_SUFFIXES = (".flac", ".wav")

EMOTION_CODES: dict[str, str] = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
INTENSITY_CODES: dict[str, str] = {"01": "normal", "02": "strong"}
STATEMENT_CODES: dict[str, str] = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

LABEL_MAPPING: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",  # low-arousal neutral-like state; no MSP-Podcast counterpart
    "happy": "happy",
    "sad": "sad",
    "angry": "angry",
    "fearful": "fear",
    "disgust": "disgust",
    "surprised": "surprise",
}

FILE_PATTERN = re.compile(r"^03-01-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d{2})$")
EXPECTED_NAME = "03-01-EE-II-SS-RR-AA.flac (EE 01-08, II/SS/RR 01-02, AA 01-24)"


def parse_ravdess_name(path: str | Path) -> dict[str, str | int]:
    """Decode a RAVDESS file name into its fields.

    >>> parse_ravdess_name("03-01-02-02-01-02-07.flac")["emotion"]
    'calm'
    """
    path = Path(path)
    match = FILE_PATTERN.match(path.stem)
    if match is None or path.suffix.lower() not in AUDIO_SUFFIXES:
        raise CorpusError(
            f"{path.name} is not a RAVDESS speech file name; expected {EXPECTED_NAME}. "
            "Remove or rename the file, or read the folder with --corpus manifest."
        )
    emotion, intensity, statement, repetition, actor = match.groups()
    actor_id = int(actor)
    if not 1 <= actor_id <= 24:
        raise CorpusError(f"{path.name} has actor {actor}; expected {EXPECTED_NAME}. Rename or remove it.")
    if emotion == "01" and intensity == "02":
        raise CorpusError(f"{path.name} has neutral (01) at strong intensity (02); RAVDESS neutral is "
                          "normal intensity only. The file name is corrupt: check it.")
    return {
        "emotion": EMOTION_CODES[emotion],
        "intensity": INTENSITY_CODES[intensity],
        "statement": int(statement),
        "repetition": int(repetition),
        "actor": actor_id,
    }


def read_ravdess(root: str | Path, *, strict: bool = False) -> CorpusReading:
    """Rows for every ``Actor_XX/*.flac|wav`` under `root` (the RAVDESS speech folder).

    A file whose name does not follow the scheme, or that sits in another actor's folder,
    raises CorpusError naming it. `strict` is accepted for the reader interface; audio
    checks happen in :func:`edge_ser.data.prepare.prepare_corpus`.
    """
    del strict
    root = Path(root).resolve()
    actor_dirs = sorted(p for p in root.glob("Actor_*") if p.is_dir())
    if not actor_dirs:
        raise CorpusError(
            f"{root} has no Actor_XX folders; expected the RAVDESS speech folder laid out as "
            f"Actor_01/ ... Actor_24/ holding {EXPECTED_NAME}. Point --raw-root at that folder."
        )
    rows = []
    for actor_dir in actor_dirs:
        for path in sorted(p for p in actor_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            fields = parse_ravdess_name(path)
            speaker = f"Actor_{fields['actor']:02d}"
            if actor_dir.name != speaker:
                raise CorpusError(f"{actor_dir.name}/{path.name} belongs to {speaker} by its name; expected it "
                                  f"in {speaker}/. Move the file.")
            category = LABEL_MAPPING[str(fields["emotion"])]
            votes = vote_counts([category])
            row = empty_row()
            row.update(
                utt_id=path.stem,
                path=f"{actor_dir.name}/{path.name}",
                speaker=speaker,
                gender="male" if int(fields["actor"]) % 2 == 1 else "female",
                votes=format_votes(votes),
                label=category,
                source_label=fields["emotion"],
                extras=json.dumps({"intensity": fields["intensity"], "statement": fields["statement"],
                                   "repetition": fields["repetition"]}),
            )
            row.update({f"p_{c}": float(p) for c, p in zip(CATEGORIES, grader_vote_distribution(votes))})
            rows.append(row)
    if not rows:
        raise CorpusError(f"{root} has Actor_XX folders but no {'/'.join(AUDIO_SUFFIXES)} files; "
                          f"expected {EXPECTED_NAME}.")
    return CorpusReading(
        corpus=CORPUS_NAME,
        rows=tuple(rows),
        audio_root=root,
        label_mapping=dict(LABEL_MAPPING),
        soft_target_rule=SOFT_TARGET_RULE_SINGLE,
        default_folds=DEFAULT_FOLDS,
        notes=("calm is mapped to neutral (low-arousal neutral-like, no MSP-Podcast counterpart); "
               "source_label keeps the 8-class RAVDESS label",),
    )


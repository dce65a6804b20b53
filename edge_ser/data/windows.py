"""The windows a device runs, as a corpus: train and score a head on exactly what the artifact sees.

An artifact runs on fixed windows (3 s by default): a longer clip is cut into the spans of
:func:`edge_ser.windowing.window_spans` and their outputs averaged, a shorter one is repeated to
fill the window (:func:`edge_ser.windowing.fit_window`). A head trained on whole-clip features
never sees either, and Whisper's absolute positions make a window's frames differ from the same
stretch inside a whole-clip pass. ``make_window_corpus`` writes every utterance's windows as
audio files of exactly one window each:

- ``device`` windows: the spans the runtime runs for this clip (``EmotionModel.predict``), with
  the weight the runtime gives each when it averages them;
- ``random`` windows (clips longer than one window only): up to `random_crops` more spans at
  random positions, drawn from ``(seed, utt_id)``, for training on varied positions (a position
  drawn twice, or equal to a device window's, is kept once).

Features are extracted from the copy like from any corpus; ``edge-ser train --windows`` then
trains on one window per utterance and epoch, and validates and tests on the device windows.
Each row keeps its utterance's labels, speaker, fold and split; ``extras.window`` names the
utterance (``parent``), the span, the role and the weight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.audio import load_audio, write_audio
from edge_ser.data.table import Corpus, load_corpus, rows_of_split, save_corpus
from edge_ser.progress import progress_bar
from edge_ser.windowing import PAD_MODES, fit_window, span_weights, window_spans

__all__ = ["make_window_corpus", "window_rows_of", "AUDIO_DIR", "ROLES"]

AUDIO_DIR = "audio"
ROLES = ("device", "random")


def _spans(n_samples: int, window: int, *, random_crops: int, rng: np.random.Generator) -> list[tuple[int, int, str, float]]:
    device = window_spans(n_samples, window)
    weights = span_weights(device)
    spans = [(s, e, "device", float(w)) for (s, e), w in zip(device, weights)]
    if n_samples > window:
        taken = {s for s, _, _, _ in spans}
        for start in rng.integers(0, n_samples - window + 1, size=random_crops):
            if int(start) not in taken:  # a clip just longer than the window has few distinct positions
                taken.add(int(start))
                spans.append((int(start), int(start) + window, "random", 0.0))
    return spans


def make_window_corpus(*, corpus_dir: str | os.PathLike, out: str | os.PathLike, window_s: float = 3.0,
                       random_crops: int = 2, pad: str = "repeat", split: str = "all", seed: int = 0,
                       overwrite: bool = False, progress: bool = True) -> Corpus:
    """Write the windows of every utterance of `split` as a corpus at `out` (see the module docstring).

    window_s: the artifact's window (``edge-ser convert --window-s``); pad: the runtime's pad
    policy for short clips (``edge_ser.runtime.load(pad=...)``, default ``repeat``).
    """
    from edge_ser.data.noise import _file_name, _parse_extras, _stable_int
    from edge_ser.data.table import claim_corpus_folder

    if not (np.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s={window_s!r}; expected a positive number of seconds such as 3.0.")
    if int(random_crops) < 0:
        raise ValueError(f"random_crops={random_crops!r}; expected 0 or more extra windows per utterance.")
    if pad not in PAD_MODES:
        raise ValueError(f"pad={pad!r}; expected one of {PAD_MODES} (the runtime's pad policy).")
    claim_corpus_folder(Path(out), overwrite=overwrite)
    base = load_corpus(corpus_dir)
    rows = rows_of_split(base, split)
    out = Path(out)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    sample_rate = 16_000
    window = int(round(window_s * sample_rate))
    new_rows, used = [], set()
    counts = {role: 0 for role in ROLES}
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc="windows", unit="utt", enabled=progress,
                               leave=False):
        utt_id = str(row["utt_id"])
        clip = load_audio(base.audio_path(row), target_sr=sample_rate)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _stable_int(utt_id)]))
        for start, end, role, weight in _spans(len(clip), window, random_crops=int(random_crops), rng=rng):
            crop_id = f"{utt_id}@{start}"
            rel = _file_name(crop_id, used)
            write_audio(out / AUDIO_DIR / rel, fit_window(clip[start:end], window, pad=pad))  # type: ignore[arg-type]
            extras = _parse_extras(row["extras"])
            extras["window"] = {"parent": utt_id, "start": start, "end": end, "role": role, "weight": weight,
                                "padded": end - start < window}
            new_row = row.to_dict()
            new_row.update(utt_id=crop_id, path=rel, duration_s=window / sample_rate,
                           extras=json.dumps(extras, sort_keys=True))
            new_rows.append(new_row)
            counts[role] += 1
    block = {"window_s": float(window_s), "window_samples": window, "sample_rate": sample_rate, "pad": pad,
             "random_crops": int(random_crops), "seed": int(seed), "split": split, "base_corpus": base.name,
             "base_corpus_dir": os.fspath(base.root), "base_table_sha256": base.manifest.get("table_sha256"),
             "utterances": int(len(rows)), "windows": counts}
    return save_corpus(new_rows, out, corpus=f"{base.name}-windows{window_s:g}s", audio_root=AUDIO_DIR,
                       label_mapping=base.manifest.get("label_mapping", {}),
                       soft_target_rule=str(base.manifest.get("soft_target_rule", "")), extra={"windows": block})


def window_rows_of(extras: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent utt_id, role, weight) per row from a table's ``extras`` column of a window corpus.

    Raises ValueError naming the first row without ``extras.window`` (not a window corpus).
    """
    from edge_ser.data.noise import _parse_extras

    parents, roles, weights = [], [], []
    for i, cell in enumerate(extras):
        info = _parse_extras(cell).get("window")
        if not isinstance(info, dict) or info.get("role") not in ROLES:
            raise ValueError(
                f"row {i} has no extras.window; expected a window corpus written by `edge-ser data windows` "
                "(train on its feature cache with --windows)."
            )
        parents.append(str(info["parent"]))
        roles.append(str(info["role"]))
        weights.append(float(info["weight"]))
    return (np.asarray(parents, dtype=object), np.asarray(roles, dtype=object),
            np.asarray(weights, dtype=np.float64))

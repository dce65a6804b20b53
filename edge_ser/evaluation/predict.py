"""Run a trained TC-GRU over a prepared corpus and return the predictions table.

The table is the one :mod:`edge_ser.evaluation.report` scores (see its docstring): one row per
utterance with the reference columns copied from the corpus table (``label`` = consensus,
``p_<category>`` soft targets, ``arousal``/``valence``/``dominance``) and the model outputs
``pred_<category>`` (softmax, CATEGORIES order) and ``pred_arousal`` ... ``pred_dominance``.
Extra columns: ``source_label``, ``split``, ``fold``, ``n_frames`` and ``feature_source``.

Where the head's input frames come from (``source``):

``cache``
    the frame features of the run's layer stored in the feature cache the run was trained on
    (found by :meth:`edge_ser.train.runs.RunInfo.feature_cache`, the one rule for that).
    Allowed only when that cache is the one recorded in run.json (sha256 of its manifest),
    it was extracted from *this* corpus (sha256 of the corpus table) and it stores the layer.
``audio``
    end to end from each utterance's audio at its natural length: the foundation model cut
    after the run's layer (:meth:`LoadedFoundationModel.truncated`), or MFBF0, then the head.
    This is the only way to score noisy or cross-corpus sets, which have no cached features.
    The foundation model is rebuilt from the cache manifest (model name, weights path or
    random-init seed) and its weights' sha256 must equal the recorded one.
``auto``
    ``cache`` when it is allowed, else ``audio``.

The two sources differ only by the cache's float16 storage of the frames (about 3 significant
digits); ``tests/test_evaluate.py`` measures the gap on a tiny pipeline.

k-fold runs (:func:`predict_folds`): every utterance is predicted by the fold run whose test
fold holds it (``fold`` column of the corpus table), and the rows of all folds are pooled.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from edge_ser.errors import CorpusError, ManifestError
from edge_ser.io import read_json
from edge_ser.labels import CATEGORIES, DIMENSIONS, Vocabulary
from edge_ser.progress import progress_bar
from edge_ser.train.runs import RunInfo, read_run_info

__all__ = [
    "PREDICTION_SOURCES", "SourceChoice", "FoldRun", "choose_source", "find_fold_runs", "predict_corpus",
    "predict_folds",
]

PREDICTION_SOURCES: tuple[str, ...] = ("auto", "cache", "audio")
"""Accepted values of ``source`` (see the module docstring)."""

_MFBF0 = "mfbf0"
_FOLD_DIR = re.compile(r"^fold(\d+)_seed(-?\d+)$")
_REFERENCE_COLUMNS: tuple[str, ...] = (
    ("utt_id", "speaker", "gender", "label", "source_label", "split", "fold")
    + tuple(f"p_{c}" for c in CATEGORIES) + DIMENSIONS
)


@dataclasses.dataclass(frozen=True)
class SourceChoice:
    """Which feature source a prediction uses and why. ``cache_dir`` is set when the cache was found."""

    source: str
    reason: str
    cache_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FoldRun:
    """One run folder of a k-fold training (``fold<f>_seed<s>``): test fold ``fold`` of ``k``."""

    run_dir: str
    fold: int
    k: int
    seed: int


def choose_source(
    *,
    run: RunInfo,
    corpus_manifest: Mapping[str, Any],
    source: str = "auto",
    features_dir: str | os.PathLike | None = None,
) -> SourceChoice:
    """Decide between cached frames and audio for one corpus (rules in the module docstring).

    Raises ManifestError for ``source="cache"`` when the cache cannot be used, saying why.
    """
    if source not in PREDICTION_SOURCES:
        raise ValueError(f"source={source!r}; expected one of {list(PREDICTION_SOURCES)}.")
    cache_dir = run.feature_cache(features_dir)
    reason: str
    usable = False
    if cache_dir is None:
        reason = (f"the run's feature cache {run.feature_dir!r} was not found"
                  + (f" (features_dir={os.fspath(features_dir)!r})" if features_dir is not None else ""))
    else:
        _, manifest = run.feature_manifest(cache_dir)
        cache_sha = (manifest.get("corpus") or {}).get("table_sha256")
        corpus_sha = corpus_manifest.get("table_sha256")
        stored = [int(k) for k in manifest.get("layers_stored", [])]
        if cache_sha is None or cache_sha != corpus_sha:
            reason = (f"the cache was extracted from corpus {(manifest.get('corpus') or {}).get('name')!r} "
                      f"(table sha256 {str(cache_sha)[:12]}...), not from this corpus "
                      f"{corpus_manifest.get('corpus')!r} (table sha256 {str(corpus_sha)[:12]}...)")
        elif run.layer not in stored:
            reason = f"the cache stores frame-level layers {stored}, not the run's layer {run.layer}"
        else:
            usable = True
            reason = f"cached layer-{run.layer} frames of this corpus in {cache_dir}"
    if source == "cache" and not usable:
        raise ManifestError(
            f"cannot predict from cached features: {reason}. Use source='audio' (--source audio) to compute "
            "features from the audio, or point features_dir (--features) at the run's cache of this corpus."
        )
    if source == "audio" or not usable:
        why = "requested" if source == "audio" else f"auto: {reason}"
        return SourceChoice("audio", f"features computed from audio ({why})",
                            None if cache_dir is None else os.fspath(cache_dir))
    return SourceChoice("cache", reason, os.fspath(cache_dir))


# --------------------------------------------------------------------------- feature providers


class _CacheFrames:
    """Frames of one layer, looked up by utt_id in a feature cache: (T, N) float16 -> float32."""

    def __init__(self, cache_dir: str | os.PathLike, layer: int) -> None:
        from edge_ser.features.cache import FeatureCache

        self.cache = FeatureCache.open(cache_dir)
        self.layer = int(layer)

    def __call__(self, utt_id: str, audio_path: Path) -> np.ndarray:
        return np.asarray(self.cache.frames(utt_id, self.layer), dtype=np.float32)


class _AudioFrames:
    """Waveform at its natural length -> (T, N) float32 features of the run's layer (or MFBF0).

    ``device`` is where the model runs (the Ray engine's ``--device``); frames come back to the CPU.
    ``weights_sha256`` is the digest of the weights it loaded (the manifest's, checked, for MFBF0 its record).
    """

    def __init__(self, manifest: Mapping[str, Any], *, layer: int, cache_dir: str, device: str = "cpu") -> None:
        model = str(manifest["model"])
        self.name = model
        self.device = torch.device(device)
        self.weights_sha256 = (manifest.get("weights_source") or {}).get("sha256")
        if model == _MFBF0:
            from edge_ser.frontend import MFBF0, MFBF0Config

            config = dict((manifest.get("spec") or {}).get("config") or {})
            self.module: torch.nn.Module = MFBF0(MFBF0Config(**config)).eval().to(self.device)
            self.min_samples = int(self.module.min_samples)
            self.expected_frames = self.module.frames_for_samples
            self.max_samples = None
            return
        from edge_ser.fm.model import check_input_level, load_foundation_model, max_samples, min_samples

        loaded = load_foundation_model(model, **RunInfo.foundation_weights(manifest))
        RunInfo.check_foundation_weights(manifest, loaded.weights_source.sha256,
                                         loaded_from=loaded.weights_source.path or "random init")

        check_input_level((manifest.get("spec") or {}).get("input_level"), loaded,
                          where=f"the run's feature cache {cache_dir}")
        self.weights_sha256 = loaded.weights_source.sha256
        self.module = loaded.truncated(int(layer)).to(self.device)
        self.min_samples = min_samples(loaded.spec)
        self.max_samples = max_samples(loaded.spec)
        self.expected_frames = loaded.frames_for_samples
        # A cache of stream features (features extract --stream-hop): the frames a cached stream computes.
        self.stream = manifest.get("stream")
        if self.stream:
            from edge_ser.fm.stream import whole_hops

            hop, per_hop = int(self.stream["hop_samples"]), int(self.stream["hop_frames"])
            self.module = self.module.cpu()  # the offline stream computation runs on the CPU
            self.max_samples = (int(self.module.position_table.shape[0]) // per_hop) * hop
            self.expected_frames = lambda n: whole_hops(n, hop) * per_hop

    def __call__(self, utt_id: str, audio_path: Path) -> np.ndarray:
        from edge_ser.audio import load_audio
        from edge_ser.errors import AudioError

        wave = load_audio(audio_path)
        if wave.shape[0] < self.min_samples or (self.max_samples is not None and wave.shape[0] > self.max_samples):
            raise AudioError(
                f"utterance {utt_id!r} ({audio_path}) has {wave.shape[0]} samples; {self.name} needs "
                f"{self.min_samples}..{self.max_samples or 'any'} samples at 16 kHz. Drop it from the corpus."
            )
        if getattr(self, "stream", None):
            frames = self._stream_frames(wave)
        else:
            with torch.inference_mode():
                out = self.module(torch.from_numpy(np.ascontiguousarray(wave))[None].to(self.device))
            frames = out[0].float().cpu().numpy()
        expected = int(self.expected_frames(wave.shape[0]))
        if frames.shape[0] != expected:  # the cache stores exactly this many frames per utterance
            raise RuntimeError(f"{self.name} gave {frames.shape[0]} frames for {wave.shape[0]} samples; "
                               f"expected {expected}.")
        return frames

    def _stream_frames(self, wave: np.ndarray) -> np.ndarray:
        """The run layer's frames as the cached stream of the cache's ``stream`` block computes them over
        ``wave`` zero-padded to whole hops (as extraction stored them)."""
        from edge_ser.fm.stream import cached_reference_frames, pad_to_whole_hops

        hop = int(self.stream["hop_samples"])
        frames = cached_reference_frames(self.module, pad_to_whole_hops(wave, hop), hop_samples=hop,
                                         context_frames=int(self.stream["context_frames"]))
        return frames[0].float().numpy()


def _audio_frames(choice: SourceChoice, run: RunInfo, *, memo: dict[tuple, _AudioFrames], engine: Any = None,
                  rows: pd.DataFrame | None = None, corpus: Any = None):
    """The local frames provider (built once per foundation model in `memo`), or, with an `engine`
    (:class:`edge_ser.evaluation.ray_predict.RayAudioEngine`), one that computes the frames of `rows`
    on its workers."""
    if choice.cache_dir is None:
        raise ManifestError(
            f"predicting from audio needs the manifest.json of the run's feature cache ({run.feature_dir!r}, "
            "not found) to rebuild the foundation model with the same weights. Pass features_dir (--features) "
            "pointing at that cache folder (only its manifest.json is read)."
        )
    _, manifest = run.feature_manifest(choice.cache_dir)
    key = (run.feature_model, run.layer, (manifest.get("weights_source") or {}).get("sha256"),
           (manifest.get("plan") or {}).get("seed"))
    if engine is not None:
        utterances = [(str(r["utt_id"]), corpus.audio_path(r)) for r in rows.to_dict("records")]
        return engine.frames_of(manifest, key=key, layer=run.layer, cache_dir=choice.cache_dir,
                                utterances=utterances)
    if key not in memo:  # k-fold runs share one foundation model: build it once
        memo[key] = _AudioFrames(manifest, layer=run.layer, cache_dir=choice.cache_dir)
    return memo[key]


# --------------------------------------------------------------------------- prediction


def _select_rows(table: pd.DataFrame, *, split: str | None, corpus: str) -> pd.DataFrame:
    if split is None:
        rows = table
    else:
        rows = table[table["split"] == split]
        if len(rows) == 0:
            counts = table["split"].replace("", "(none)").value_counts().to_dict()
            raise CorpusError(
                f"corpus {corpus!r} has no rows in split {split!r} (rows per split: {counts}). Pass split=None "
                "(--split all) to predict every row, or another split."
            )
    return rows.reset_index(drop=True)


def reference_columns(rows: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """The reference columns of a prediction table, in the run's vocabulary.

    Paper vocabulary: the corpus table's ``label`` and ``p_<category>`` as they are. Corpus
    vocabulary: ``label`` is the corpus's own ``source_label`` (empty when outside the vocabulary)
    and ``p_<class>`` its one-hot distribution over the run's classes.
    """
    table = rows.loc[:, [c for c in _REFERENCE_COLUMNS if c in rows.columns]].copy()
    if vocabulary.kind == "paper":
        return table
    table = table.drop(columns=[c for c in table.columns if c.startswith("p_")])
    source = rows["source_label"].fillna("").astype(str).str.strip() if "source_label" in rows.columns else \
        pd.Series([""] * len(rows), index=rows.index)
    table["label"] = [v if v in vocabulary.classes else "" for v in source]
    for c in vocabulary.classes:
        table[f"p_{c}"] = np.where(table["label"] == "", np.nan, (table["label"] == c).astype(np.float64))
    table["label_vocabulary"] = "corpus"  # tells edge_ser.evaluation.report the table's label space
    return table


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def _predict_rows(model: torch.nn.Module, frames_of, rows: pd.DataFrame, corpus, *, batch_size: int,
                  desc: str, progress: bool, run: RunInfo) -> pd.DataFrame:
    """Reference columns of `rows` + the head's outputs; frames_of(utt_id, audio_path) -> (T, N)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer.")
    n = len(rows)
    classes = run.vocabulary.classes
    if getattr(model, "n_classes", len(classes)) != len(classes):
        raise ManifestError(f"the head in {run.run_dir} has {model.n_classes} class outputs; its run.json vocabulary has "
                            f"{len(classes)} ({list(classes)}). The run folder is inconsistent; re-train it.")
    probs = np.zeros((n, len(classes)), dtype=np.float64)
    avd = np.zeros((n, len(DIMENSIONS)), dtype=np.float64)
    n_frames = np.zeros(n, dtype=np.int64)
    bar = progress_bar(total=n, desc=desc, unit="utt", enabled=progress, leave=False)
    for part in _batches(n, batch_size):
        feats = [frames_of(str(r["utt_id"]), corpus.audio_path(r)) for r in rows.iloc[part].to_dict("records")]
        if part.start == 0 and (feats[0].ndim != 2 or feats[0].shape[1] != model.input_dim):
            raise ManifestError(
                f"{run.feature_model} layer {run.layer} gives frames of shape {feats[0].shape}; the head "
                f"in {run.run_dir} expects width {model.input_dim}. The feature cache and the run do not belong together."
            )
        lengths = np.asarray([f.shape[0] for f in feats], dtype=np.int64)
        x = np.zeros((len(feats), int(lengths.max()), feats[0].shape[1]), dtype=np.float32)
        for b, f in enumerate(feats):
            x[b, : f.shape[0]] = f
        # TCGRU masks padding exactly (zeroed conv input, unidirectional GRU, masked mean), so a
        # padded batch gives each utterance the same output as running it alone.
        out = model(torch.from_numpy(x), torch.from_numpy(lengths))
        probs[part] = torch.softmax(out.logits.double(), dim=-1).numpy()
        avd[part] = out.avd.double().numpy()
        n_frames[part] = lengths
        bar.update(len(feats))
    bar.close()
    table = reference_columns(rows, run.vocabulary)
    for i, c in enumerate(classes):
        table[f"pred_{c}"] = probs[:, i]
    for i, d in enumerate(DIMENSIONS):
        table[f"pred_{d}"] = avd[:, i]
    table["n_frames"] = n_frames
    return table.reset_index(drop=True)


def predict_corpus(
    *,
    run_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    split: str | None = "test",
    source: str = "auto",
    batch_size: int = 16,
    features_dir: str | os.PathLike | None = None,
    progress: bool = True,
    audio_engine: Any = None,
    _memo: dict[tuple, _AudioFrames] | None = None,
) -> pd.DataFrame:
    """Predictions table of a run on one prepared corpus (columns in the module docstring).

    Args:
        run_dir: a finished training run folder (``edge-ser train``).
        corpus_dir: a prepared corpus folder (``utterances.csv`` + ``manifest.json``).
        split: only rows of this split (``train``/``valid``/``test``), or None for every row.
        source: ``auto``, ``cache`` or ``audio`` (module docstring).
        batch_size: utterances per head batch.
        features_dir: the run's feature cache folder, when it moved since training.
        progress: show progress (edge_ser.progress: a bar on a terminal).
        audio_engine: where the foundation model computes features from audio: None = this
            process, or an entered :class:`edge_ser.evaluation.ray_predict.RayAudioEngine` (Ray
            workers; the same predictions with the same torch thread count). Cached frames are
            read here either way.

    Returns:
        DataFrame with one row per selected utterance, in corpus-table order. ``df.attrs["edge_ser"]``
        holds the feature source used and why, the run's feature model and layer.
    """
    from edge_ser.data.table import load_corpus

    run_dir = Path(run_dir)
    run = read_run_info(run_dir)
    corpus = load_corpus(corpus_dir)
    rows = _select_rows(run.splits_as_trained(corpus), split=split, corpus=corpus.name)
    choice = choose_source(run=run, corpus_manifest=corpus.manifest, source=source, features_dir=features_dir)
    if choice.source == "cache":
        frames_of = _CacheFrames(choice.cache_dir, run.layer)
    else:
        frames_of = _audio_frames(choice, run, memo={} if _memo is None else _memo, engine=audio_engine, rows=rows,
                                  corpus=corpus)
    table = _predict_rows(run.load_head(), frames_of, rows, corpus, batch_size=batch_size, progress=progress,
                          desc=f"predict {corpus.name} ({choice.source})", run=run)
    table["feature_source"] = choice.source
    table.attrs["edge_ser"] = {"run_dir": os.fspath(run_dir), "corpus_dir": os.fspath(corpus_dir),
                               "corpus": corpus.name, "split": split, "features": run.to_dict(),
                               "source": choice.to_dict()}
    return table


def find_fold_runs(folds_dir: str | os.PathLike) -> list[FoldRun]:
    """The finished ``fold<f>_seed<s>`` run folders under `folds_dir` (``train_folds`` layout), sorted."""
    folds_dir = Path(folds_dir)
    if not folds_dir.is_dir():
        raise ManifestError(f"{folds_dir} is not a folder; expected the --out folder of `edge-ser train --folds`.")
    found: list[FoldRun] = []
    for child in sorted(folds_dir.iterdir()):
        match = _FOLD_DIR.match(child.name)
        if not match or not (child / "run.json").is_file():
            continue
        info = read_json(child / "run.json")
        feats = info.get("features") or {}
        fold = int(feats.get("fold", match.group(1)))
        k = feats.get("k")
        if k is None:
            raise ManifestError(f"{child}/run.json records no fold count k; expected a run written by train_folds.")
        found.append(FoldRun(run_dir=os.fspath(child), fold=fold, k=int(k),
                             seed=int((info.get("config") or {}).get("seed", match.group(2)))))
    if not found:
        raise ManifestError(
            f"{folds_dir} holds no finished fold<f>_seed<s>/run.json; expected the output of `edge-ser train "
            "--folds` (edge_ser.train.trainer.train_folds)."
        )
    return sorted(found, key=lambda r: (r.seed, r.fold))


def predict_folds(
    *,
    folds_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    seed: int | None = None,
    source: str = "auto",
    batch_size: int = 16,
    features_dir: str | os.PathLike | None = None,
    progress: bool = True,
    audio_engine: Any = None,
    _memo: dict[tuple, _AudioFrames] | None = None,
) -> pd.DataFrame:
    """Pooled k-fold predictions: each utterance of `corpus_dir` predicted by the run of its fold.

    The corpus table's ``fold`` column assigns utterances to folds (a noisy copy of a k-fold
    corpus keeps it). Every fold 0..k-1 needs a run for `seed` (None: the only seed present).
    When the run's cache table is found, each speaker's fold is checked against it, so no
    utterance is predicted by a run that trained on its speaker. Extra column ``fold_run``.
    ``audio_engine`` as in :func:`predict_corpus`.
    """
    from edge_ser.data.table import load_corpus

    runs = find_fold_runs(folds_dir)
    seeds = sorted({r.seed for r in runs})
    if seed is None:
        if len(seeds) > 1:
            raise ValueError(f"{folds_dir} holds runs for seeds {seeds}; pass seed= (--seed) to pick one.")
        seed = seeds[0]
    chosen = {r.fold: r for r in runs if r.seed == int(seed)}
    if not chosen:
        raise ManifestError(f"{folds_dir} has no runs for seed {seed}; seeds present: {seeds}.")
    ks = {r.k for r in chosen.values()}
    k = ks.pop()
    missing = sorted(set(range(k)) - set(chosen))
    if ks or missing:
        raise ManifestError(
            f"{folds_dir} (seed {seed}) has runs for folds {sorted(chosen)} of k={k}; missing {missing}. Every "
            "utterance must be predicted by the run that held its fold out: train the missing folds first."
        )
    corpus = load_corpus(corpus_dir)
    folds = corpus.table["fold"].to_numpy(dtype=np.int64)
    if (folds < 0).any() or folds.max() >= k:
        raise CorpusError(
            f"corpus {corpus.name!r} has fold values {sorted(set(folds.tolist()))}; the runs in {folds_dir} are "
            f"{k}-fold (folds 0..{k - 1}). Evaluate k-fold runs on the k-fold corpus or a noisy copy of it."
        )
    _check_speaker_folds(corpus.table, chosen[0], features_dir=features_dir)
    memo: dict[tuple, _AudioFrames] = {} if _memo is None else _memo
    parts = []
    for fold in progress_bar(range(k), desc=f"folds ({corpus.name})", unit="fold", enabled=progress, leave=False):
        rows = corpus.table[corpus.table["fold"] == fold].reset_index(drop=True)
        if len(rows) == 0:  # e.g. a noisy copy of only some speakers
            continue
        parts.append(_predict_fold(run=chosen[fold], corpus=corpus, rows=rows, source=source,
                                   batch_size=batch_size, features_dir=features_dir, progress=progress, memo=memo,
                                   audio_engine=audio_engine))
    table = pd.concat(parts, ignore_index=True)
    order = {u: i for i, u in enumerate(corpus.table["utt_id"])}
    table = table.sort_values("utt_id", key=lambda s: s.map(order)).reset_index(drop=True)
    sources = sorted(set(table["feature_source"]))
    table.attrs["edge_ser"] = {"folds_dir": os.fspath(folds_dir), "corpus_dir": os.fspath(corpus_dir),
                               "corpus": corpus.name, "seed": int(seed), "k": k, "sources": sources,
                               "features": parts[0].attrs["edge_ser"]["features"],
                               "source": parts[0].attrs["edge_ser"]["source"]}
    return table


def _predict_fold(*, run: FoldRun, corpus, rows: pd.DataFrame, source: str, batch_size: int,
                  features_dir: str | os.PathLike | None, progress: bool, memo: dict,
                  audio_engine: Any = None) -> pd.DataFrame:
    info = read_run_info(run.run_dir)
    choice = choose_source(run=info, corpus_manifest=corpus.manifest, source=source, features_dir=features_dir)
    frames_of = (_CacheFrames(choice.cache_dir, info.layer) if choice.source == "cache"
                 else _audio_frames(choice, info, memo=memo, engine=audio_engine, rows=rows, corpus=corpus))
    part = _predict_rows(info.load_head(), frames_of, rows, corpus, batch_size=batch_size, progress=progress,
                         desc=f"fold {run.fold} ({choice.source})", run=info)
    part["feature_source"] = choice.source
    part["fold_run"] = info.run_dir.name
    part.attrs["edge_ser"] = {"features": info.to_dict(), "source": choice.to_dict()}
    return part


def _check_speaker_folds(table: pd.DataFrame, run: FoldRun, *, features_dir: str | os.PathLike | None) -> None:
    """Each test speaker's fold must equal its fold in the training table, or a run saw its speaker."""
    cache_dir = read_run_info(run.run_dir).feature_cache(features_dir)
    if cache_dir is None or not (cache_dir / "utterances.csv").is_file():
        return
    train_table = pd.read_csv(cache_dir / "utterances.csv", usecols=["speaker", "fold"], dtype={"speaker": str},
                              keep_default_na=False)
    train_fold = train_table.drop_duplicates("speaker").set_index("speaker")["fold"].astype(int).to_dict()
    bad = sorted({str(s) for s, f in zip(table["speaker"], table["fold"])
                  if str(s) in train_fold and train_fold[str(s)] != int(f)})
    if bad:
        raise CorpusError(
            f"speakers {bad[:5]} sit in other folds in this corpus than in the training table ({cache_dir}); a fold "
            "run would predict speakers it trained on. Build the test set from the same k-fold corpus "
            "(e.g. make_noisy_corpus(..., split='all') keeps its folds)."
        )

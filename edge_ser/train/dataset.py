"""What the trainer reads: per-utterance frame features with their targets, and padded batches.

A :class:`FeatureSource` gives, for utterance i of U:

- ``frames(i)``: (T_i, F) float16/float32 features at the FM frame rate;
- ``soft_targets`` (U, 9) float32, NaN rows where no categorical target exists;
- ``dimensions`` (U, 3) float32 in [0, 1], NaN where missing;
- ``labels`` (U,) int64 consensus category index, -1 where none;
- ``splits``, ``speakers``, ``genders`` (U,) str; ``folds`` (U,) int64 (-1 if none);
- ``info``: dict describing where the features came from (model, layer, manifest sha256).

:class:`ArrayFeatureSource` keeps everything in memory (tests, small experiments);
:class:`CacheFeatureSource` reads the feature cache folder of ``edge_ser.features.cache``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from edge_ser.errors import CorpusError, ManifestError
from edge_ser.io import read_json
from edge_ser.labels import CATEGORY_INDEX, DIMENSIONS, LABEL_VOCABULARIES, PAPER_VOCABULARY, Vocabulary
from edge_ser.progress import progress_bar

__all__ = [
    "FeatureSource", "ArrayFeatureSource", "CacheFeatureSource", "PaddedBatch", "iterate_batches",
    "feature_statistics", "with_splits", "split_indices", "fold_splits", "AugmentedFeatureSource",
    "corpus_targets", "open_training_source",
]

_STD_FLOOR = 1e-6


@runtime_checkable
class FeatureSource(Protocol):
    """The trainer's view of a feature set (see the module docstring for shapes)."""

    @property
    def input_dim(self) -> int: ...
    @property
    def utt_ids(self) -> np.ndarray: ...
    @property
    def soft_targets(self) -> np.ndarray: ...
    @property
    def dimensions(self) -> np.ndarray: ...
    @property
    def labels(self) -> np.ndarray: ...
    @property
    def vocabulary(self) -> Vocabulary: ...
    @property
    def splits(self) -> np.ndarray: ...
    @property
    def speakers(self) -> np.ndarray: ...
    @property
    def genders(self) -> np.ndarray: ...
    @property
    def folds(self) -> np.ndarray: ...
    @property
    def info(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def frames(self, index: int) -> np.ndarray: ...


class _TargetsMixin:
    """Shared checks and accessors for sources that hold their per-utterance arrays."""

    _utt_ids: np.ndarray
    _soft: np.ndarray
    _dims: np.ndarray
    _labels: np.ndarray
    _splits: np.ndarray
    _speakers: np.ndarray
    _genders: np.ndarray
    _folds: np.ndarray
    _vocabulary: Vocabulary = PAPER_VOCABULARY

    def _check_arrays(self) -> None:
        n = len(self._utt_ids)
        n_classes = len(self._vocabulary.classes)
        expected = {"soft_targets": (n, n_classes), "dimensions": (n, len(DIMENSIONS)), "labels": (n,),
                    "splits": (n,), "speakers": (n,), "genders": (n,), "folds": (n,)}
        actual = {"soft_targets": self._soft.shape, "dimensions": self._dims.shape, "labels": self._labels.shape,
                  "splits": self._splits.shape, "speakers": self._speakers.shape, "genders": self._genders.shape,
                  "folds": self._folds.shape}
        for name, shape in expected.items():
            if actual[name] != shape:
                raise ValueError(f"feature source {name} has shape {actual[name]}; expected {shape} for {n} utterances.")
        bad = (self._labels < -1) | (self._labels >= n_classes)
        if bad.any():
            raise ValueError(f"labels must be class indices 0..{n_classes - 1} of the {self._vocabulary.kind} vocabulary "
                             f"or -1; got {self._labels[bad][:5]}.")

    @property
    def vocabulary(self) -> Vocabulary:
        """The output classes the targets are expressed in (run.json records it)."""
        return self._vocabulary

    @property
    def utt_ids(self) -> np.ndarray:
        return self._utt_ids

    @property
    def soft_targets(self) -> np.ndarray:
        return self._soft

    @property
    def dimensions(self) -> np.ndarray:
        return self._dims

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def splits(self) -> np.ndarray:
        return self._splits

    @property
    def speakers(self) -> np.ndarray:
        return self._speakers

    @property
    def genders(self) -> np.ndarray:
        return self._genders

    @property
    def folds(self) -> np.ndarray:
        return self._folds

    def __len__(self) -> int:
        return len(self._utt_ids)


class ArrayFeatureSource(_TargetsMixin):
    """In-memory feature source.

    frames: U arrays (T_i, F); soft_targets (U, C) (NaN rows = absent); dimensions (U, 3) (NaN = absent);
    labels (U,) consensus index or -1; splits (U,) of train/valid/test. C is the number of classes of
    ``vocabulary`` (default the paper's 9 categories).
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        *,
        soft_targets: np.ndarray,
        dimensions: np.ndarray,
        labels: np.ndarray,
        splits: Sequence[str],
        speakers: Sequence[str] | None = None,
        genders: Sequence[str] | None = None,
        folds: Sequence[int] | None = None,
        utt_ids: Sequence[str] | None = None,
        info: dict[str, Any] | None = None,
        vocabulary: Vocabulary = PAPER_VOCABULARY,
    ) -> None:
        self._vocabulary = vocabulary
        if len(frames) == 0:
            raise ValueError("ArrayFeatureSource got no utterances; expected at least one (T, F) array.")
        self._frames = [np.asarray(f) for f in frames]
        widths = {f.shape[1] if f.ndim == 2 else None for f in self._frames}
        if len(widths) != 1 or None in widths:
            raise ValueError(f"every utterance must be a (frames, features) array of one width; got widths {widths}.")
        if any(f.shape[0] < 1 for f in self._frames):
            raise ValueError("an utterance has 0 frames; expected at least 1. Drop empty utterances first.")
        n = len(self._frames)
        self._input_dim = int(widths.pop())
        self._soft = np.asarray(soft_targets, dtype=np.float32)
        self._dims = np.asarray(dimensions, dtype=np.float32)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._splits = np.asarray(list(splits), dtype=object)
        self._speakers = np.asarray(list(speakers) if speakers is not None else ["unknown"] * n, dtype=object)
        self._genders = np.asarray(list(genders) if genders is not None else ["unknown"] * n, dtype=object)
        self._folds = np.asarray(list(folds) if folds is not None else [-1] * n, dtype=np.int64)
        self._utt_ids = np.asarray(list(utt_ids) if utt_ids is not None else [f"utt{i:06d}" for i in range(n)],
                                   dtype=object)
        self._info = dict(info or {"feature_model": "arrays", "layer": None, "manifest_sha256": None})
        self._check_arrays()

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def frames(self, index: int) -> np.ndarray:
        return self._frames[index]


class CacheFeatureSource(_TargetsMixin):
    """Frames of one stored layer of a feature cache folder (``edge_ser.features.cache`` layout).

    ``layer`` is the hidden_states index (0 = transformer input; MFBF0 stores only 0).
    Targets come from the cache's copy of the utterance table (``edge_ser.data.table`` columns).
    ``labels``: ``paper`` (the 9 categories, soft targets from the ``p_<category>`` columns) or
    ``corpus`` (the corpus's own ``source_label`` values, one-hot; see :class:`edge_ser.labels.Vocabulary`).
    """

    def __init__(self, cache_dir: str | os.PathLike, *, layer: int, labels: str = "paper",
                 vocabulary: Vocabulary | None = None) -> None:
        if labels not in LABEL_VOCABULARIES:
            raise ValueError(f"labels={labels!r}; expected one of {list(LABEL_VOCABULARIES)}.")
        from edge_ser.data.table import PROB_COLUMNS
        from edge_ser.features.cache import FeatureCache

        self.cache_dir = Path(cache_dir)
        self._cache = FeatureCache.open(self.cache_dir)
        stored = [int(k) for k in self._cache.layers_stored]
        if int(layer) not in stored:
            raise ManifestError(
                f"layer {layer} is not stored in the feature cache {self.cache_dir}; it holds layers {stored}. "
                "Pick one of those, or re-extract features with that layer (edge-ser features extract --layers ...)."
            )
        self.layer = int(layer)
        table = self._cache.table
        self._utt_ids = np.asarray(self._cache.utt_ids, dtype=object)
        if len(table) != len(self._utt_ids):
            raise ManifestError(f"feature cache {self.cache_dir} has {len(table)} table rows but "
                                f"{len(self._utt_ids)} utterance ids; re-extract it.")
        self._dims = table.loc[:, list(DIMENSIONS)].to_numpy(dtype=np.float32)
        if labels == "paper":
            self._soft = table.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float32)
            self._labels = np.asarray([CATEGORY_INDEX.get(str(v), -1) for v in table["label"]], dtype=np.int64)
        else:
            self._vocabulary, self._labels, self._soft = corpus_targets(table["source_label"], vocabulary)
        self._splits = table["split"].astype(str).to_numpy(dtype=object)
        self._speakers = table["speaker"].astype(str).to_numpy(dtype=object)
        self._genders = table["gender"].astype(str).to_numpy(dtype=object)
        self._folds = table["fold"].to_numpy(dtype=np.int64)
        self._check_arrays()
        manifest = self._cache.manifest
        first = np.asarray(self._cache.frames(0, self.layer))
        self._input_dim = int(first.shape[1])
        manifest_path = self.cache_dir / "manifest.json"
        from edge_ser.io import sha256_file

        self._info = {
            "feature_model": manifest.get("model"),
            "layer": self.layer,
            "feature_dir": str(self.cache_dir),
            "manifest_sha256": sha256_file(manifest_path) if manifest_path.is_file() else None,
            "frame_rate": manifest.get("frame_rate"),
            "corpus": (manifest.get("corpus") or {}).get("name") if isinstance(manifest.get("corpus"), dict) else None,
            "corpus_base": corpus_base_of(manifest),
            "label_vocabulary": self._vocabulary.to_dict(),
        }

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def frames(self, index: int) -> np.ndarray:
        return np.asarray(self._cache.frames(int(index), self.layer))

    @property
    def table(self) -> Any:
        """The cache's copy of the utterance table (pandas DataFrame, one row per utterance)."""
        return self._cache.table

    @property
    def corpus_manifest(self) -> dict[str, Any]:
        """The ``corpus`` block of the cache manifest ({} when absent)."""
        corpus = self._cache.manifest.get("corpus")
        return corpus if isinstance(corpus, dict) else {}


def corpus_base_of(cache_manifest: Mapping[str, Any]) -> str | None:
    """Name of the corpus that a cache's corpus was made from (a window, augmented, noisy or
    condition copy: ``base_corpus`` in its manifest), read from the corpus folder the cache records;
    None for an original corpus or when that folder is gone."""
    from edge_ser.data.table import derivation

    corpus = cache_manifest.get("corpus")
    folder = corpus.get("dir") if isinstance(corpus, Mapping) else None
    path = Path(str(folder)) / "manifest.json" if folder else None
    if path is None or not path.is_file():
        return None
    try:
        derived = derivation(read_json(path))
    except (OSError, ValueError):
        return None
    return str(derived["base_corpus"]) if derived else None


def corpus_targets(source_labels: Sequence[Any], vocabulary: Vocabulary | None = None,
                   ) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    """(vocabulary, labels (U,), one-hot soft targets (U, C)) from a corpus's own labels.

    A row without a source label gets label -1 and a NaN target row (masked out of the loss).
    ``vocabulary``: map onto this one (an augmented copy onto its original's) instead of deriving it;
    a label outside it is an error.
    """
    values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip() for v in source_labels]
    if vocabulary is None:
        vocabulary = Vocabulary.from_corpus_labels(values)
    else:
        unknown = sorted({v for v in values if v and v not in vocabulary.classes})
        if unknown:
            raise ManifestError(f"labels {unknown} are not in the vocabulary {list(vocabulary.classes)} of the "
                                "features they are added to; augmented copies must come from the same corpus.")
    position = {name: i for i, name in enumerate(vocabulary.classes)}
    labels = np.asarray([position.get(v, -1) for v in values], dtype=np.int64)
    soft = np.full((len(values), len(vocabulary.classes)), np.nan, dtype=np.float32)
    have = labels >= 0
    soft[have] = 0.0
    soft[np.flatnonzero(have), labels[have]] = 1.0
    return vocabulary, labels, soft


AUGMENT_EXCLUDED = "augment-excluded"
"""Split given to an augmented copy whose original is not in the train split: never read."""


class AugmentedFeatureSource(_TargetsMixin):
    """A source plus augmented copies of its utterances (noisy, gain, telephone... feature caches).

    The copies only ever train: whatever split the corpus (or a k-fold assignment through
    :func:`with_splits`) gives a copy, it is used only where that split is ``train``, and is
    :data:`AUGMENT_EXCLUDED` otherwise. Copies keep their speaker and fold, so a held-out
    speaker's copies never reach training. Frames, targets and vocabulary must match the base.
    """

    def __init__(self, base: FeatureSource, copies: Sequence[FeatureSource]) -> None:
        if not copies:
            raise ValueError("AugmentedFeatureSource needs at least one augmented copy.")
        self._parts = [base, *copies]
        for copy in copies:
            if copy.input_dim != base.input_dim:
                raise ManifestError(f"an augmented copy has {copy.input_dim}-wide features; the base has "
                                    f"{base.input_dim}. Extract the copies with the same model and layer.")
            if getattr(copy, "vocabulary", PAPER_VOCABULARY) != getattr(base, "vocabulary", PAPER_VOCABULARY):
                raise ManifestError("an augmented copy has another label vocabulary than the base features.")
        self._vocabulary = getattr(base, "vocabulary", PAPER_VOCABULARY)
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
        cat = lambda name: np.concatenate([np.asarray(getattr(p, name)) for p in self._parts])  # noqa: E731
        self._utt_ids, self._soft, self._dims, self._labels = cat("utt_ids"), cat("soft_targets"), cat("dimensions"), cat("labels")
        self._speakers, self._genders, self._folds = cat("speakers"), cat("genders"), cat("folds")
        self._augmented = np.arange(len(self._utt_ids)) >= len(base)
        self._splits = self.restrict_copies(cat("splits"))
        self._input_dim = base.input_dim
        self._info = {**base.info, "augmented_copies": [p.info.get("feature_dir") for p in copies],
                      "augmented_utterances": int(self._augmented.sum())}
        self._check_arrays()

    @property
    def augmented(self) -> np.ndarray:
        """(U,) True for rows that come from an augmented copy."""
        return self._augmented

    def restrict_copies(self, splits: np.ndarray) -> np.ndarray:
        """``splits`` with every augmented row outside ``train`` set to :data:`AUGMENT_EXCLUDED`."""
        out = np.asarray(splits, dtype=object).copy()
        out[self._augmented & (out != "train")] = AUGMENT_EXCLUDED
        return out

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def frames(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self._offsets, int(index), side="right")) - 1
        return self._parts[part].frames(int(index) - int(self._offsets[part]))


WINDOW_EXCLUDED = "window-excluded"
"""Split given to a random-position window outside ``train``: validation and test use device windows only."""


class WindowedFeatureSource(_TargetsMixin):
    """Features of a window corpus (``edge-ser data windows``): train on what the device computes.

    Every row is one fixed-length window of an utterance (``parent``). Training draws one window
    per utterance and epoch (:meth:`epoch_rows`, device and random-position windows alike);
    validation and test read only the ``device`` windows, the spans the runtime runs, and a
    random-position window outside ``train`` gets :data:`WINDOW_EXCLUDED`. Per-utterance scores
    average the device windows with :attr:`weights`, as ``EmotionModel.predict`` does.
    """

    def __init__(self, base: "CacheFeatureSource", copies: Sequence["CacheFeatureSource"] = ()) -> None:
        from edge_ser.data.windows import window_rows_of

        parts = [base, *copies]
        columns = []
        for i, part in enumerate(parts):
            try:
                columns.append(window_rows_of(part.table["extras"]))
            except ValueError as exc:
                hint = ("" if i == 0 else " With --windows every --augment copy must be windowed too: run `edge-ser "
                        "data windows` on the augmented corpus and extract the features of that window corpus.")
                raise ManifestError(f"feature cache {part.cache_dir}: {exc}{hint}") from None
        self._parents, self._roles, self._weights = (np.concatenate([c[k] for c in columns]) for k in range(3))
        # an augmented copy's windows group by (copy, parent): one window per copied utterance and epoch
        self._groups = np.asarray([f"{i}/{p}" for i, c in enumerate(columns) for p in c[0]], dtype=object)
        self._inner: FeatureSource = AugmentedFeatureSource(base, copies) if copies else base
        inner = self._inner
        self._vocabulary = base.vocabulary
        self._utt_ids, self._soft, self._dims, self._labels = inner.utt_ids, inner.soft_targets, inner.dimensions, inner.labels
        self._speakers, self._genders, self._folds = inner.speakers, inner.genders, inner.folds
        self._splits = self.restrict_splits(inner.splits)
        self._info = {**inner.info, "windows": True, "window_corpus": base.corpus_manifest.get("name")}
        self._check_arrays()

    @property
    def parents(self) -> np.ndarray:
        """(U,) the utterance each window comes from."""
        return self._parents

    @property
    def roles(self) -> np.ndarray:
        """(U,) ``device`` or ``random``."""
        return self._roles

    @property
    def weights(self) -> np.ndarray:
        """(U,) the runtime's averaging weight of a device window within its utterance (0 for random ones)."""
        return self._weights

    def restrict_splits(self, splits: np.ndarray) -> np.ndarray:
        """``splits`` with every random-position window outside ``train`` set to :data:`WINDOW_EXCLUDED`
        (and, with augmented copies, every copied window outside ``train`` to :data:`AUGMENT_EXCLUDED`)."""
        out = np.asarray(splits, dtype=object).copy()
        if isinstance(self._inner, AugmentedFeatureSource):
            out = self._inner.restrict_copies(out)
        out[(self._roles != "device") & ~np.isin(out, ["train", AUGMENT_EXCLUDED])] = WINDOW_EXCLUDED
        return out

    def epoch_rows(self, rows: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
        """One window per utterance among `rows` (ascending by first row), drawn from (seed, epoch)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return rows
        _, group = np.unique(self._groups[rows], return_inverse=True)
        rng = np.random.default_rng([int(seed), int(epoch), 4])
        keys = rng.random(len(rows))
        order = np.lexsort((keys, group))  # within each utterance, windows in random order
        first = np.ones(len(order), dtype=bool)
        first[1:] = group[order][1:] != group[order][:-1]
        return np.sort(rows[order[first]])

    @property
    def input_dim(self) -> int:
        return self._inner.input_dim

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def frames(self, index: int) -> np.ndarray:
        return self._inner.frames(index)


class _ResplitSource:
    """A view of another source with a different ``splits`` column (used for k-fold training)."""

    def __init__(self, base: FeatureSource, splits: np.ndarray, extra_info: dict[str, Any]) -> None:
        self._base = base
        self._splits = splits
        self._extra = extra_info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def __len__(self) -> int:
        return len(self._base)

    @property
    def splits(self) -> np.ndarray:
        return self._splits

    @property
    def info(self) -> dict[str, Any]:
        return {**self._base.info, **self._extra}

    def frames(self, index: int) -> np.ndarray:
        return self._base.frames(index)


def with_splits(source: FeatureSource, splits: Sequence[str], **info: Any) -> FeatureSource:
    """The same source with another train/valid/test assignment (U,); extra keyword args go into ``info``."""
    arr = np.asarray(list(splits), dtype=object)
    if arr.shape != (len(source),):
        raise ValueError(f"splits has {arr.shape[0]} entries; expected one per utterance ({len(source)}).")
    if isinstance(source, AugmentedFeatureSource):
        arr = source.restrict_copies(arr)
    if isinstance(source, WindowedFeatureSource):
        arr = source.restrict_splits(arr)
    return _ResplitSource(source, arr, info)  # type: ignore[return-value]


def fold_splits(folds: np.ndarray, *, fold: int) -> np.ndarray:
    """Split of each utterance for k-fold run `fold`: test = fold f, valid = fold (f+1) % k, train = rest.

    folds: (U,) speaker-fold indices 0..k-1 (from the table's ``fold`` column).
    """
    folds = np.asarray(folds, dtype=np.int64)
    if (folds < 0).any():
        raise CorpusError(
            f"{int((folds < 0).sum())} utterances have fold -1; k-fold training needs every utterance in a fold. "
            "Prepare the corpus with speaker folds (`edge-ser data prepare --n-folds K`; RAVDESS gets 6 by default), "
            "extract its features, and train on that cache; or train without --folds on the corpus's splits."
        )
    k = int(folds.max()) + 1
    if k < 3:
        raise CorpusError(f"the table has {k} folds; k-fold training needs at least 3 (test, valid and train).")
    if not 0 <= fold < k:
        raise CorpusError(f"fold {fold} does not exist; the table has folds 0..{k - 1}.")
    out = np.full(folds.shape, "train", dtype=object)
    out[folds == fold] = "test"
    out[folds == (fold + 1) % k] = "valid"
    return out


def split_indices(source: FeatureSource, split: str) -> np.ndarray:
    """Row indices of one split, ascending."""
    return np.flatnonzero(np.asarray(source.splits) == split)


def feature_statistics(source: FeatureSource, indices: np.ndarray, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (each (F,) float32) over every frame of the given utterances.

    Accumulated in float64. Dimensions with std below 1e-6 get std 1 so they pass through centred.
    """
    if len(indices) == 0:
        raise ValueError("feature statistics need at least one utterance; the train split is empty.")
    total = np.zeros(source.input_dim, dtype=np.float64)
    total_sq = np.zeros(source.input_dim, dtype=np.float64)
    count = 0
    for i in progress_bar(indices, desc="feature stats", unit="utt", enabled=progress, leave=False):
        x = np.asarray(source.frames(int(i)), dtype=np.float64)
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        count += x.shape[0]
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.sqrt(var)
    std[std < _STD_FLOOR] = 1.0
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError("features contain NaN/inf; re-extract the feature cache.")
    return mean.astype(np.float32), std.astype(np.float32)


class PaddedBatch(NamedTuple):
    """A mini-batch. x (B, T_max, F) float32 zero-padded; lengths (B,) int64 frames; soft (B, 9);
    dims (B, 3); labels (B,) int64; index (B,) int64 row indices into the source."""

    x: torch.Tensor
    lengths: torch.Tensor
    soft: torch.Tensor
    dims: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


def make_batch(source: FeatureSource, rows: np.ndarray) -> PaddedBatch:
    feats = [np.asarray(source.frames(int(i))) for i in rows]
    lengths = np.asarray([f.shape[0] for f in feats], dtype=np.int64)
    x = np.zeros((len(feats), int(lengths.max()), source.input_dim), dtype=np.float32)
    for b, f in enumerate(feats):
        x[b, : f.shape[0]] = f
    rows = np.asarray(rows, dtype=np.int64)
    return PaddedBatch(
        x=torch.from_numpy(x),
        lengths=torch.from_numpy(lengths),
        soft=torch.from_numpy(np.ascontiguousarray(source.soft_targets[rows], dtype=np.float32)),
        dims=torch.from_numpy(np.ascontiguousarray(source.dimensions[rows], dtype=np.float32)),
        labels=torch.from_numpy(np.ascontiguousarray(source.labels[rows], dtype=np.int64)),
        index=torch.from_numpy(rows),
    )


def epoch_order(indices: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Row order of one epoch: a permutation that depends only on (seed, epoch), so resuming needs no RNG state."""
    indices = np.asarray(indices, dtype=np.int64)
    if not shuffle:
        return indices
    rng = np.random.default_rng([int(seed), int(epoch)])
    return indices[rng.permutation(len(indices))]


def iterate_batches(
    source: FeatureSource,
    indices: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    bucket_batches: int = 0,
    lengths: np.ndarray | None = None,
) -> Iterator[PaddedBatch]:
    """Yield padded mini-batches over `indices`; the last batch may be smaller.

    ``bucket_batches=B`` (with ``shuffle``): the shuffled order is cut into pools of B batches,
    each pool is sorted by length (``lengths[i]`` = frames of row i; measured from the source when
    not given) and cut into batches, and all batches are then shuffled. Batches hold utterances
    of similar length, so less padding is computed (on RAVDESS random batches are 81 % real
    frames); which utterances meet in a batch stays random.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer.")
    order = epoch_order(indices, seed=seed, epoch=epoch, shuffle=shuffle)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if shuffle and bucket_batches > 1:
        if lengths is None:
            lengths = frame_counts(source)
        lengths = np.asarray(lengths)
        pool = bucket_batches * batch_size
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
        rng = np.random.default_rng([int(seed), int(epoch), 1])
        batches = [batches[i] for i in rng.permutation(len(batches))]
    for rows in batches:
        yield make_batch(source, rows)


def balanced_rows(labels: np.ndarray, rows: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """Class-balanced draw of ``len(rows)`` rows with replacement (``TrainConfig.balance``).

    A row's chance is proportional to 1 / (number of rows in `rows` with its label), so every
    class is drawn about equally often; rows with label -1 (no consensus) get the mean weight.
    Depends only on (seed, epoch).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return rows
    row_labels = np.asarray(labels)[rows]
    weights = np.ones(len(rows), dtype=np.float64)
    labelled = row_labels >= 0
    if labelled.any():
        classes, inverse, counts = np.unique(row_labels[labelled], return_inverse=True, return_counts=True)
        weights[labelled] = 1.0 / counts[inverse]
        weights[~labelled] = weights[labelled].mean()
    rng = np.random.default_rng([int(seed), int(epoch), 2])
    return rows[rng.choice(len(rows), size=len(rows), replace=True, p=weights / weights.sum())]


def mask_features(x: torch.Tensor, lengths: torch.Tensor, *, fill: torch.Tensor, fraction: float,
                  seed: Sequence[int], spans: int = 2) -> torch.Tensor:
    """SpecAugment-style masks on a padded feature batch (``TrainConfig.feature_mask``); returns a copy.

    x: (B, T, F); lengths: (B,) valid frames; fill: (F,) the value a masked entry takes (the
    train-split mean, so it is 0 after z-scoring). Per utterance, `spans` time spans of width
    0..fraction*length frames and `spans` channel bands of width 0..fraction*F are set to `fill`.
    Deterministic in `seed` (e.g. (run seed, epoch, batch number)).
    """
    rng = np.random.default_rng([int(s) for s in seed])
    out = x.clone()
    n_channels = x.shape[-1]
    fill = fill.to(out.dtype)
    for b, length in enumerate(lengths.tolist()):
        for _ in range(spans):
            width = int(rng.integers(0, int(fraction * length) + 1))
            if width:
                start = int(rng.integers(0, length - width + 1))
                out[b, start:start + width, :] = fill
            band = int(rng.integers(0, int(fraction * n_channels) + 1))
            if band:
                low = int(rng.integers(0, n_channels - band + 1))
                out[b, :, low:low + band] = fill[low:low + band]
    return out


def frame_counts(source: FeatureSource) -> np.ndarray:
    """Frames per row of `source` (reads each utterance's array header, not its values)."""
    return np.asarray([np.shape(source.frames(i))[0] for i in range(len(source.utt_ids))], dtype=np.int64)


def _stream_block(source: Any) -> dict[str, Any] | None:
    return source._cache.manifest.get("stream")


def _check_stream_kind(cache_dir: Any, base: Any, copies: Sequence[tuple[Any, Any]], *, windows: bool) -> None:
    """Stream features (``features extract --stream-hop``) train alone: every copy of the same stream
    geometry, whole clips (a stream pools its whole segment, not a window)."""
    stream = _stream_block(base)
    for path, copy in copies:
        if _stream_block(copy) != stream:
            def kind(block: Any) -> str:
                return "whole-clip features" if block is None else \
                    f"stream features ({block['hop_s']:g} s hops, {block['context_s']:g} s context)"
            raise CorpusError(
                f"--augment {path} holds {kind(_stream_block(copy))}, --features {cache_dir} {kind(stream)}; expected "
                "copies extracted the same way (the same --stream-hop and --stream-context, or neither).")
    if stream is not None and windows:
        raise CorpusError(
            f"--features {cache_dir} holds stream features, which train on whole clips (a stream's estimate pools "
            "everything since its start); --windows trains on the windows of a windowed artifact. Drop --windows, or "
            "extract the window corpus without --stream-hop.")


def open_training_source(cache_dir: str | os.PathLike, *, layer: int, labels: str = "paper",
                         augment: Sequence[str | os.PathLike] = (), windows: bool = False) -> FeatureSource:
    """The training source of `edge-ser train`: one feature cache, plus augmented copies (train split
    only); with ``windows`` the cache is of a window corpus (:class:`WindowedFeatureSource`), and so
    must each copy be (``edge-ser data windows`` run on the augmented corpus)."""
    base = CacheFeatureSource(cache_dir, layer=layer, labels=labels)
    copies = [CacheFeatureSource(path, layer=layer, labels=labels, vocabulary=base.vocabulary if labels == "corpus" else None)
              for path in augment]
    _check_stream_kind(cache_dir, base, list(zip(augment, copies)), windows=windows)
    if windows:
        return WindowedFeatureSource(base, copies)
    if not augment:
        return base
    return AugmentedFeatureSource(base, copies)

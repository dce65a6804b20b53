"""The feature cache folder: FM hidden states (or MFBF0 frames) of a whole corpus.

Layout (docs/architecture.md, "Feature cache folder"):

``manifest.json``
    format ``edge-ser-features`` version 1: model, spec, weights source, n_layers,
    hidden_size, frame_rate, dtype, layers_stored, corpus {dir, name, table_sha256},
    shards [{file, sha256, n_utterances, n_frames}], extraction time, throughput.
``utterances.csv``
    the corpus table rows that were extracted (same columns, same order as pooled.npy).
``pooled.npy``
    float32 (U, L+1, N): mean over valid frames of hidden_states[0..L].
``index.csv``
    utt_id, shard, start, n_frames: where each utterance's frames sit in its shard.
``layer_KK/shard_SSSSS.npy``
    float16 (frames, N), memory-mapped on read.

Writing is crash-safe: every shard file is written to a temp file and renamed; a
``progress.json`` lists the shards that are complete (with their sha256), so a killed
run resumes without recomputing them and never trusts a half-written file. The
manifest is written last: a folder without it is an unfinished extraction.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from edge_ser import __version__
from edge_ser.errors import ManifestError
from edge_ser.io import (
    read_json, read_versioned_manifest, sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic,
)

FEATURES_FORMAT = "edge-ser-features"
FEATURES_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TABLE_FILE = "utterances.csv"
POOLED_FILE = "pooled.npy"
INDEX_FILE = "index.csv"
PROGRESS_FILE = "progress.json"
PARTIAL_DIR = "partial"
FRAME_DTYPE = np.float16
POOLED_DTYPE = np.float32
INDEX_COLUMNS = ("utt_id", "shard", "start", "n_frames")


def layer_dir_name(layer: int) -> str:
    """``layer_07`` for layer 7 (index into hidden_states; 0 = transformer input)."""
    return f"layer_{int(layer):02d}"


def shard_file_name(shard: int) -> str:
    return f"shard_{int(shard):05d}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _table_csv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, float_format="%.6g", lineterminator="\n")
    return buffer.getvalue().encode("utf-8")


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """One finished shard: which utterances (in shard order) and one file per stored layer."""

    shard: int
    utt_ids: tuple[str, ...]
    n_frames: tuple[int, ...]
    files: tuple[tuple[str, str], ...]  # (relative file, sha256) per stored layer, then the pooled part
    n_clipped: int = 0  # values beyond the float16 range, clipped before storage

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "utt_ids": list(self.utt_ids), "n_frames": list(self.n_frames),
                "files": [list(f) for f in self.files], "n_clipped": self.n_clipped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShardRecord":
        return cls(shard=int(data["shard"]), utt_ids=tuple(str(u) for u in data["utt_ids"]),
                   n_frames=tuple(int(n) for n in data["n_frames"]),
                   files=tuple((str(f), str(h)) for f, h in data["files"]),
                   n_clipped=int(data.get("n_clipped", 0)))


class FeatureCacheWriter:
    """Writes a cache folder shard by shard; resumable through ``progress.json``.

    `plan` identifies the extraction (model, weights, layers, corpus table, shard
    assignment). A resumed run must present the same plan, otherwise its finished
    shards would mix two different extractions. `resume=False` discards an unfinished
    extraction; a finished cache (it has ``manifest.json``) is replaced only with
    `overwrite` (OutputExistsError otherwise), and a folder whose manifest is not a feature
    cache's (a corpus, say) never.
    """

    def __init__(self, out: str | os.PathLike, *, plan: Mapping[str, Any], layers_stored: Sequence[int],
                 resume: bool = True, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.plan = json.loads(json.dumps(dict(plan)))  # normalise tuples -> lists for comparison
        self.layers_stored = tuple(int(k) for k in layers_stored)
        self._done: dict[int, ShardRecord] = {}
        claim_cache_folder(self.out, overwrite=overwrite)  # a finished cache goes only with overwrite
        if self.out.exists() and not resume:
            _remove_cache_contents(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        progress_path = self.out / PROGRESS_FILE
        if progress_path.is_file():
            progress = read_json(progress_path)
            if progress.get("plan") != self.plan:
                raise ManifestError(
                    f"{self.out} holds an unfinished extraction with other settings "
                    f"(model/layers/corpus/sharding differ: found {_plan_summary(progress.get('plan'))}, "
                    f"requested {_plan_summary(self.plan)}). Pass resume=False (CLI: --no-resume) to "
                    "discard it and start over, or choose another output folder."
                )
            for data in progress.get("shards", []):
                record = ShardRecord.from_dict(data)
                if self._record_intact(record):
                    self._done[record.shard] = record

    def _record_intact(self, record: ShardRecord) -> bool:
        # A shard listed as done is trusted only if every file is there with its recorded hash.
        for rel, digest in record.files:
            path = self.out / rel
            if not path.is_file() or sha256_file(path) != digest:
                return False
        return True

    def is_done(self, shard: int) -> bool:
        return shard in self._done

    @property
    def finished_shards(self) -> tuple[int, ...]:
        return tuple(sorted(self._done))

    def write_shard(self, *, shard: int, utt_ids: Sequence[str], frames: Mapping[int, Sequence[np.ndarray]],
                    pooled: np.ndarray, n_clipped: int = 0) -> ShardRecord:
        """Store one shard.

        Args:
            shard: shard number.
            utt_ids: the shard's utterances in storage order.
            frames: stored layer -> list (one per utterance) of (T_u, N) arrays; cast to float16.
            pooled: (n_utterances, L+1, N) float32 mean-pooled states of these utterances.
            n_clipped: how many frame values the caller clipped to the float16 range.
        """
        if set(frames) != set(self.layers_stored):
            raise ValueError(f"shard {shard} has layers {sorted(frames)}; the cache stores {list(self.layers_stored)}.")
        if pooled.shape[0] != len(utt_ids):
            raise ValueError(f"pooled has {pooled.shape[0]} rows for {len(utt_ids)} utterances in shard {shard}.")
        n_frames: tuple[int, ...] = ()
        files: list[tuple[str, str]] = []
        for layer in self.layers_stored:
            per_utt = list(frames[layer])
            lengths = tuple(int(x.shape[0]) for x in per_utt)
            if n_frames and lengths != n_frames:
                raise ValueError(f"shard {shard}: layer {layer} has frame counts {lengths}, other layers {n_frames}.")
            n_frames = lengths
            stacked = np.concatenate(per_utt, axis=0).astype(FRAME_DTYPE) if per_utt else np.zeros((0, 0), FRAME_DTYPE)
            data = _npy_bytes(stacked)
            rel = f"{layer_dir_name(layer)}/{shard_file_name(shard)}"
            write_bytes_atomic(self.out / rel, data)
            files.append((rel, sha256_bytes(data)))
        if not self.layers_stored:
            n_frames = tuple(0 for _ in utt_ids)
        data = _npy_bytes(np.asarray(pooled, dtype=POOLED_DTYPE))
        rel = f"{PARTIAL_DIR}/pooled_{shard:05d}.npy"
        write_bytes_atomic(self.out / rel, data)
        files.append((rel, sha256_bytes(data)))
        record = ShardRecord(shard=shard, utt_ids=tuple(str(u) for u in utt_ids), n_frames=n_frames,
                             files=tuple(files), n_clipped=int(n_clipped))
        self._done[shard] = record
        # The progress file is rewritten only after the shard's files are in place, so a
        # crash between the two loses at most this shard's work, never trusts a partial file.
        write_json_atomic(self.out / PROGRESS_FILE,
                          {"plan": self.plan, "shards": [self._done[s].to_dict() for s in sorted(self._done)]})
        return record

    def pooled_of(self, shard: int) -> np.ndarray:
        record = self._done[shard]
        return np.load(self.out / record.files[-1][0], allow_pickle=False)

    def finalize(self, *, table: pd.DataFrame, manifest: Mapping[str, Any]) -> "FeatureCache":
        """Join shards into pooled.npy + index.csv, copy the table, write the manifest last.

        `table` rows define the order of pooled.npy and index.csv; every utterance must be
        in exactly one finished shard.
        """
        where: dict[str, tuple[int, int, int, int]] = {}  # utt -> (shard, start, n_frames, row in shard)
        for shard in sorted(self._done):
            record = self._done[shard]
            start = 0
            for row, (utt, n) in enumerate(zip(record.utt_ids, record.n_frames)):
                where[utt] = (shard, start, n, row)
                start += n
        utt_ids = table["utt_id"].astype(str).tolist()
        missing = [u for u in utt_ids if u not in where]
        if missing:
            raise ManifestError(f"{len(missing)} utterances have no finished shard (e.g. {missing[:3]}); "
                                "the extraction did not complete. Run it again to resume.")
        pooled_parts = {s: self.pooled_of(s) for s in sorted(self._done)}
        first = next(iter(pooled_parts.values()))
        pooled = np.empty((len(utt_ids),) + first.shape[1:], dtype=POOLED_DTYPE)
        index_rows = []
        for i, utt in enumerate(utt_ids):
            shard, start, n, row = where[utt]
            pooled[i] = pooled_parts[shard][row]
            index_rows.append({"utt_id": utt, "shard": shard, "start": start, "n_frames": n})
        write_bytes_atomic(self.out / POOLED_FILE, _npy_bytes(pooled))
        index = pd.DataFrame(index_rows, columns=list(INDEX_COLUMNS))
        write_bytes_atomic(self.out / INDEX_FILE, _table_csv_bytes(index))
        table_bytes = _table_csv_bytes(table)
        write_bytes_atomic(self.out / TABLE_FILE, table_bytes)
        shards = []
        for shard in sorted(self._done):
            record = self._done[shard]
            for rel, digest in record.files[:-1]:
                shards.append({"file": rel, "sha256": digest, "n_utterances": len(record.utt_ids),
                               "n_frames": int(sum(record.n_frames))})
        full = dict(manifest)
        full.update({
            "format": FEATURES_FORMAT,
            "format_version": FEATURES_FORMAT_VERSION,
            "edge_ser_version": __version__,
            "dtype": np.dtype(FRAME_DTYPE).name,
            "pooled_dtype": np.dtype(POOLED_DTYPE).name,
            "layers_stored": list(self.layers_stored),
            "plan": self.plan,
            "n_utterances": len(utt_ids),
            "table_file": TABLE_FILE,
            "table_sha256": sha256_bytes(table_bytes),
            "pooled_file": POOLED_FILE,
            "pooled_sha256": sha256_file(self.out / POOLED_FILE),
            "pooled_shape": list(pooled.shape),
            "index_file": INDEX_FILE,
            "index_sha256": sha256_file(self.out / INDEX_FILE),
            "shards": shards,
            "float16_clipped_values": int(sum(r.n_clipped for r in self._done.values())),
        })
        write_json_atomic(self.out / MANIFEST_FILE, full)
        # The per-shard pooled parts and the progress file are only needed to resume.
        shutil.rmtree(self.out / PARTIAL_DIR, ignore_errors=True)
        (self.out / PROGRESS_FILE).unlink(missing_ok=True)
        return FeatureCache.open(self.out)


def _plan_summary(plan: Any) -> str:
    if not isinstance(plan, Mapping):
        return repr(plan)
    keys = ("model", "layers_stored", "table_sha256", "shard_utterances")
    return "{" + ", ".join(f"{k}={plan.get(k)!r}" for k in keys if k in plan) + "}"


def claim_cache_folder(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that a feature cache may be written into `out` (see
    :func:`edge_ser.output_folder.claim_output_folder`); with `overwrite`, remove the old cache's files."""
    from edge_ser.output_folder import claim_output_folder

    def describe(manifest: dict[str, Any]) -> str:
        return (f"{manifest.get('n_utterances')} utterances of {manifest.get('model')}, frame-level layers "
                f"{manifest.get('layers_stored')}")

    def owned(manifest: dict[str, Any]) -> list[str]:
        layer_dirs = [p.name for p in Path(out).glob("layer_*") if p.is_dir()]
        return [MANIFEST_FILE, TABLE_FILE, POOLED_FILE, INDEX_FILE, PROGRESS_FILE, PARTIAL_DIR, *layer_dirs]

    return claim_output_folder(out, overwrite=overwrite, kind="a feature cache", expected_format=FEATURES_FORMAT,
                               owned=owned, describe=describe)


def _remove_cache_contents(out: Path) -> None:
    # Only our own files: never wipe a folder that is not a feature cache.
    for name in (MANIFEST_FILE, TABLE_FILE, POOLED_FILE, INDEX_FILE, PROGRESS_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    for child in out.glob("layer_*"):
        if child.is_dir():
            shutil.rmtree(child)


class FeatureCache:
    """Read access to a finished feature cache folder.

    Every file is checked against the sha256 its manifest records before its data is used: the
    table and index when the cache is opened, ``pooled.npy`` on first access, each shard file the
    first time a frame of it is read (``open(verify=True)`` checks everything at once). A flipped
    byte raises ManifestError instead of reaching training or saliency.

    >>> cache = FeatureCache.open("features/")           # doctest: +SKIP
    >>> cache.frames(0, layer=cache.layers_stored[0]).shape  # doctest: +SKIP
    (149, 512)
    """

    def __init__(self, root: Path, manifest: dict[str, Any], table: pd.DataFrame, index: pd.DataFrame) -> None:
        self.root = root
        self.manifest = manifest
        self.table = table
        self._index = index
        self._row_of = {u: i for i, u in enumerate(index["utt_id"].tolist())}
        self._pooled: np.ndarray | None = None
        self._shards: dict[tuple[int, int], np.ndarray] = {}
        self._digests = {str(s["file"]): str(s["sha256"]) for s in manifest.get("shards", [])}

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, *, verify: bool = False) -> "FeatureCache":
        """Open a cache folder; check its format version (and every file's sha256 if `verify`)."""
        root = Path(cache_dir)
        manifest_path = root / MANIFEST_FILE
        # The manifest is written last, so progress.json without it is a killed run: resume, do not redo.
        if not manifest_path.is_file() and (root / PROGRESS_FILE).is_file():
            fix = "It holds an unfinished extraction (progress.json): run the extraction again to resume it."
        else:
            fix = (f"Re-extract the features with this edge-ser ({__version__}): "
                   "`edge-ser features extract ... --overwrite`.")
        manifest = read_versioned_manifest(
            manifest_path, kind="a feature cache folder made by `edge-ser features extract`",
            expected_format=FEATURES_FORMAT, supported_versions=(FEATURES_FORMAT_VERSION,), fix=fix,
        )
        for key in ("table_file", "index_file", "pooled_file"):
            if not (root / manifest[key]).is_file():
                raise ManifestError(f"{root / manifest[key]} is missing; the manifest lists it. Re-run the extraction.")
        for file_key, digest_key in (("table_file", "table_sha256"), ("index_file", "index_sha256")):
            actual, expected = sha256_file(root / manifest[file_key]), manifest.get(digest_key)
            if expected is not None and actual != expected:
                raise ManifestError(
                    f"{root / manifest[file_key]} has sha256 {actual[:12]}..., the manifest records "
                    f"{str(expected)[:12]}...: the file was modified after extraction. Re-extract "
                    "(`edge-ser features extract ... --overwrite`)."
                )
        from edge_ser.data.table import normalise_table

        table = pd.read_csv(root / manifest["table_file"], dtype={"utt_id": str, "speaker": str, "path": str},
                            keep_default_na=False, na_values=_numeric_na(manifest))
        table = normalise_table(table)
        index = pd.read_csv(root / manifest["index_file"], dtype={"utt_id": str})
        cache = cls(root, manifest, table, index)
        if verify:
            cache.verify()
        return cache

    def _check_file(self, rel: str, expected: str | None) -> None:
        """Raise ManifestError unless the file's sha256 is the one the manifest records."""
        path = self.root / rel
        if not path.is_file():
            raise ManifestError(f"{path} is missing; the manifest lists it. Re-run the extraction.")
        if expected is None:
            return
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{path} has sha256 {actual[:12]}..., the manifest records {str(expected)[:12]}...: the file was "
                "modified or truncated after extraction, so its features cannot be trusted. Re-extract "
                "(`edge-ser features extract ... --overwrite`)."
            )

    def verify(self) -> None:
        """Recompute the sha256 of every file the manifest lists; raise ManifestError on a mismatch."""
        checks = [(self.manifest["table_file"], self.manifest["table_sha256"]),
                  (self.manifest["index_file"], self.manifest["index_sha256"]),
                  (self.manifest["pooled_file"], self.manifest["pooled_sha256"])]
        checks += [(s["file"], s["sha256"]) for s in self.manifest["shards"]]
        for rel, expected in checks:
            path = self.root / rel
            if not path.is_file():
                raise ManifestError(f"{path} is missing; the manifest lists it. Re-run the extraction.")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(
                    f"{path} has sha256 {actual[:12]}..., the manifest records {expected[:12]}...: the file was "
                    "modified or truncated after extraction. Re-extract (`edge-ser features extract ... --overwrite`)."
                )

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def frame_rate(self) -> float:
        return float(self.manifest["frame_rate"])

    @property
    def layers_stored(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.manifest["layers_stored"])

    @property
    def utt_ids(self) -> list[str]:
        return self.table["utt_id"].astype(str).tolist()

    def __len__(self) -> int:
        return len(self.table)

    @property
    def pooled(self) -> np.ndarray:
        """(U, L+1, N) float32 mean-pooled hidden states, memory-mapped (read-only)."""
        if self._pooled is None:
            self._check_file(self.manifest["pooled_file"], self.manifest.get("pooled_sha256"))
            self._pooled = np.load(self.root / self.manifest["pooled_file"], mmap_mode="r", allow_pickle=False)
        return self._pooled

    def frame_counts(self) -> np.ndarray:
        """(U,) int64 number of frames of each utterance (0 when no frame-level layer is stored)."""
        return self._index["n_frames"].to_numpy(dtype=np.int64)

    def frames(self, utt: int | str, layer: int) -> np.ndarray:
        """Frame-level states of one utterance: (T, N) float16, a read-only memory map.

        Args:
            utt: row position in :attr:`table` or an utt_id.
            layer: hidden_states index (must be in :attr:`layers_stored`).
        """
        if int(layer) not in self.layers_stored:
            raise ManifestError(
                f"layer {layer} has no frame-level states in {self.root}; stored layers: {list(self.layers_stored)}. "
                f"Re-extract with --layers {layer} (or --layers all)."
            )
        if isinstance(utt, str):
            if utt not in self._row_of:
                raise KeyError(f"utterance {utt!r} is not in the feature cache {self.root}.")
            row = self._row_of[utt]
        else:
            row = int(utt)
            if not 0 <= row < len(self._index):
                raise IndexError(f"utterance position {row} out of range for {len(self._index)} utterances.")
        entry = self._index.iloc[row]
        shard = int(entry["shard"])
        key = (int(layer), shard)
        if key not in self._shards:
            rel = f"{layer_dir_name(layer)}/{shard_file_name(shard)}"
            if rel not in self._digests:
                raise ManifestError(f"{self.root / rel} is not listed in the manifest of {self.root}; the index points "
                                    "at a shard the extraction did not record. Re-extract "
                                    "(`edge-ser features extract ... --overwrite`).")
            self._check_file(rel, self._digests[rel])
            self._shards[key] = np.load(self.root / rel, mmap_mode="r", allow_pickle=False)
        start, n = int(entry["start"]), int(entry["n_frames"])
        return self._shards[key][start:start + n]

    def iter_frames(self, layer: int, rows: Iterable[int] | None = None):
        """Yield (row, (T, N) float16) for the given rows (all by default)."""
        for row in (range(len(self)) if rows is None else rows):
            yield row, self.frames(int(row), layer)


def prune_layers(cache_dir: str | os.PathLike, *, keep: Sequence[int]) -> FeatureCache:
    """Delete the frame-level files of every stored layer not in `keep`; pooled.npy stays whole.

    Lets one extraction pass store all layers, pick k* by saliency, then keep only what
    training reads (e.g. k* and the last layer). The manifest (written first, atomically)
    lists the remaining shards; its ``plan`` is updated too, so re-running the extraction
    with the original layers recomputes instead of mistaking this cache for a full one.
    """
    cache = FeatureCache.open(cache_dir)
    keep_set = sorted({int(k) for k in keep})
    missing = [k for k in keep_set if k not in cache.layers_stored]
    if missing:
        raise ManifestError(f"cannot keep layers {missing}: {cache.root} stores frame-level layers "
                            f"{list(cache.layers_stored)} only. Re-extract with those layers.")
    manifest = dict(cache.manifest)
    dropped = [k for k in cache.layers_stored if k not in keep_set]
    kept_dirs = {layer_dir_name(k) for k in keep_set}
    manifest["shards"] = [s for s in manifest["shards"] if s["file"].split("/")[0] in kept_dirs]
    manifest["layers_stored"] = keep_set
    if isinstance(manifest.get("plan"), dict):
        manifest["plan"] = {**manifest["plan"], "layers_stored": keep_set}
    manifest["pruned_layers"] = sorted(set(manifest.get("pruned_layers", [])) | set(dropped))
    write_json_atomic(cache.root / MANIFEST_FILE, manifest)
    for k in dropped:
        shutil.rmtree(cache.root / layer_dir_name(k), ignore_errors=True)
    return FeatureCache.open(cache.root)


def _numeric_na(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    from edge_ser.data.table import DIMENSIONS, PROB_COLUMNS

    return {c: [""] for c in ("duration_s",) + tuple(PROB_COLUMNS) + tuple(DIMENSIONS)}


__all__ = [
    "FEATURES_FORMAT", "FEATURES_FORMAT_VERSION", "FeatureCache", "FeatureCacheWriter", "ShardRecord", "prune_layers",
    "layer_dir_name", "shard_file_name",
]

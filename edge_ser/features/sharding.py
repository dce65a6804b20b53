"""The engine-neutral steps of a sharded extraction: plan the shards, compute one, describe the cache.

An engine that runs shards somewhere else (:mod:`edge_ser.features.ray_engine`) needs the
steps of :func:`edge_ser.features.extract.extract_features` as separate pieces: the plan on
the driver, one shard on a worker, the manifest on the driver again. They are written here
to give exactly what the local engine gives (same shard assignment, same ``plan``, so a
``progress.json`` started by one engine is resumed by the other; same arrays, so the shard
files are byte-identical). The local engine calls these same pieces, in one process;
``tests/test_ray_engine.py`` still compares the two engines file by file.

Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from edge_ser.errors import CorpusError
from edge_ser.features.extract import (_equal_length_batches, _Extractor, _resolve_layers,
                                      _store_utterance_states)
from edge_ser.labels import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class ExtractionPlan:
    """What a sharded extraction will compute, decided once on the driver.

    Attributes:
        corpus_root: the prepared corpus folder.
        corpus_name: its name (manifest).
        corpus_table_sha256: the corpus manifest's table digest.
        table: the corpus utterance table (row order = pooled.npy order).
        utt_ids: utt_id of every table row.
        audio_paths: absolute audio path of every table row.
        shards: table rows of each shard (sorted by duration, then utt_id).
        layers_stored: hidden_states indices with frame-level storage.
        plan: the dict recorded in progress.json and the manifest (identifies the extraction).
        model_info: model, family, spec, weights source, n_layers, hidden_size, frame_rate.
    """

    corpus_root: Path
    corpus_name: str
    corpus_table_sha256: str | None
    table: pd.DataFrame
    utt_ids: tuple[str, ...]
    audio_paths: tuple[str, ...]
    shards: tuple[tuple[int, ...], ...]
    layers_stored: tuple[int, ...]
    plan: dict[str, Any]
    model_info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """One computed shard, as a worker sends it back.

    Attributes:
        shard: shard number.
        utt_ids: the shard's utterances in storage order.
        n_frames: valid frames per utterance (same for every stored layer).
        frames: stored layer -> (sum of n_frames, N) float16, utterances one after another.
        pooled: (n_utterances, L+1, N) float32 mean over valid frames of every hidden state.
        n_clipped: frame values beyond the float16 range, clipped before storage.
        audio_s: seconds of audio in the shard.
        compute_s: wall seconds the worker spent on it (audio loading included).
    """

    shard: int
    utt_ids: tuple[str, ...]
    n_frames: tuple[int, ...]
    frames: dict[int, np.ndarray]
    pooled: np.ndarray
    n_clipped: int
    audio_s: float
    compute_s: float

    def frames_per_utterance(self) -> dict[int, list[np.ndarray]]:
        """Stored layer -> one (T_u, N) view per utterance (the shape FeatureCacheWriter.write_shard takes)."""
        cuts = np.cumsum(self.n_frames)[:-1]
        return {k: list(np.split(v, cuts, axis=0)) for k, v in self.frames.items()}


def model_info(extractor: _Extractor) -> dict[str, Any]:
    """The model's part of the plan and the manifest."""
    return {"model": extractor.name, "family": extractor.family, "spec": extractor.spec,
            "weights_source": extractor.weights_source, "n_layers": extractor.n_layers,
            "hidden_size": extractor.hidden_size, "frame_rate": extractor.frame_rate}


def plan_extraction(*, corpus_dir: str | os.PathLike, extractor: _Extractor, layers: str | Sequence[int] | None,
                    random_init: bool, seed: int, shard_utterances: int) -> ExtractionPlan:
    """Shard a corpus the way the local engine does (sorted by duration, then utt_id)."""
    from edge_ser.audio import audio_duration_s
    from edge_ser.data.table import load_corpus

    if (isinstance(shard_utterances, bool) or not isinstance(shard_utterances, (int, np.integer))
            or shard_utterances < 1):
        raise ValueError(f"shard_utterances={shard_utterances!r}; expected a positive integer such as 256.")
    corpus = load_corpus(corpus_dir)
    table = corpus.table
    if len(table) == 0:
        raise CorpusError(f"corpus {corpus.root} has no utterances; nothing to extract.")
    layers_stored = _resolve_layers(layers, n_layers=extractor.n_layers, model=extractor.name)
    audio_paths = tuple(os.fspath(Path(corpus.audio_path(i)).resolve()) for i in range(len(table)))
    durations = table["duration_s"].to_numpy(dtype=np.float64).copy()
    for i in np.flatnonzero(np.isnan(durations)):
        durations[i] = audio_duration_s(audio_paths[int(i)])
    utt_ids = tuple(table["utt_id"].astype(str).tolist())
    order = sorted(range(len(table)), key=lambda i: (durations[i], utt_ids[i]))
    shards = tuple(tuple(order[s:s + shard_utterances]) for s in range(0, len(order), shard_utterances))
    plan = {
        "model": extractor.name, "spec": extractor.spec, "weights_source": extractor.weights_source,
        "random_init": bool(random_init), "seed": int(seed) if random_init else None,
        "layers_stored": list(layers_stored), "table_sha256": corpus.manifest.get("table_sha256"),
        "shard_utterances": int(shard_utterances),
        "order_sha256": hashlib.sha256("\n".join(utt_ids[i] for i in order).encode()).hexdigest(),
    }
    if extractor.stream is not None:  # no key otherwise: earlier caches keep their plan
        plan["stream"] = extractor.stream
    return ExtractionPlan(
        corpus_root=Path(corpus.root), corpus_name=corpus.name,
        corpus_table_sha256=corpus.manifest.get("table_sha256"), table=table, utt_ids=utt_ids,
        audio_paths=audio_paths, shards=shards, layers_stored=layers_stored,
        plan=json.loads(json.dumps(plan, default=str)), model_info=model_info(extractor),
    )


def compute_shard(extractor: _Extractor, *, shard: int, utt_ids: Sequence[str], audio_paths: Sequence[str],
                  layers_stored: Sequence[int], max_samples: int, device: torch.device | str = "cpu",
                  on_batch: Callable[[int], Any] | None = None) -> ShardResult:
    """Run the FM over one shard's utterances (equal-length batches only, as the local engine).

    Args:
        extractor: the loaded model, already on `device`.
        shard: shard number (carried into the result).
        utt_ids, audio_paths: the shard's utterances in storage order.
        layers_stored: hidden_states indices kept frame by frame.
        max_samples: most samples per equal-length batch.
        device: where the model runs; hidden states come back to the CPU before any reduction,
            so the pooled means are computed the same way on every device.
        on_batch: called with the number of utterances after each batch (a progress bar's update).
    """
    from edge_ser.audio import load_audio

    start = time.perf_counter()
    n_states = extractor.n_layers + 1
    waves = [load_audio(p) for p in audio_paths]
    lengths = [int(w.shape[0]) for w in waves]
    pooled = np.zeros((len(waves), n_states, extractor.hidden_size), dtype=np.float32)
    frames: dict[int, list[np.ndarray | None]] = {k: [None] * len(waves) for k in layers_stored}
    n_frames = [0] * len(waves)
    clipped = 0
    with torch.inference_mode():
        for batch in _equal_length_batches(lengths, max_samples=max_samples):
            x = torch.from_numpy(np.stack([waves[p] for p in batch])).to(device)
            n = torch.tensor([lengths[p] for p in batch], dtype=torch.long)
            states, frame_lengths = extractor(x, n)
            if len(states) != n_states:
                raise RuntimeError(f"{extractor.name} returned {len(states)} hidden states; its spec says {n_states}.")
            states = [s.cpu() for s in states]
            for b, p in enumerate(batch):
                t = int(frame_lengths[b])
                if t < 1:
                    raise CorpusError(
                        f"utterance {utt_ids[p]!r} ({lengths[p] / SAMPLE_RATE:.3f} s) gives no "
                        f"{extractor.name} frames; drop utterances this short from the corpus."
                    )
                n_frames[p] = t
                clipped += _store_utterance_states(states, b, t, row=p, pooled=pooled, frames=frames,
                                                   layers_stored=layers_stored)
            if on_batch is not None:
                on_batch(len(batch))
    joined = {k: np.concatenate(v, axis=0) for k, v in frames.items()}  # one array per layer: one object to ship
    return ShardResult(shard=int(shard), utt_ids=tuple(str(u) for u in utt_ids),
                       n_frames=tuple(n_frames) if layers_stored else tuple(0 for _ in waves), frames=joined,
                       pooled=pooled, n_clipped=clipped, audio_s=sum(lengths) / SAMPLE_RATE,
                       compute_s=time.perf_counter() - start)


def cache_manifest(plan: ExtractionPlan, *, random_init: bool, batch_seconds: float, shard_utterances: int,
                   throughput: dict[str, Any], engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest fields the local engine writes (FeatureCacheWriter.finalize adds the rest).

    `engine` (name, workers, device, ...) is recorded under ``extraction.engine`` when given;
    the local engine writes none.
    """
    info = plan.model_info
    extraction: dict[str, Any] = {
        "batching": "equal-length batches only (exact; see edge_ser.features.extract)",
        "batch_seconds": float(batch_seconds), "shard_utterances": int(shard_utterances),
        "torch_version": torch.__version__,
    }
    if engine is not None:
        extraction["engine"] = engine
    manifest = {
        "model": info["model"], "family": info["family"], "spec": info["spec"],
        "weights_source": info["weights_source"], "random_init": bool(random_init),
        "n_layers": info["n_layers"], "hidden_size": info["hidden_size"], "frame_rate": info["frame_rate"],
        "sample_rate": SAMPLE_RATE,
        "corpus": {"dir": os.fspath(plan.corpus_root.resolve()), "name": plan.corpus_name,
                   "table_sha256": plan.corpus_table_sha256},
        "extraction": extraction,
        "throughput": throughput,
    }
    if plan.plan.get("stream") is not None:
        manifest["stream"] = plan.plan["stream"]
    return manifest


__all__ = ["ExtractionPlan", "ShardResult", "cache_manifest", "compute_shard", "model_info", "plan_extraction"]

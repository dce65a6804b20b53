"""The evaluation's prediction from audio on Ray workers (``edge-ser evaluate --engine ray``).

Prediction from audio (:mod:`edge_ser.evaluation.predict`, source ``audio``: noisy copies,
other corpora, any set without cached frames) spends nearly all its time in the foundation
model. :class:`RayAudioEngine` runs those forward passes on the actors of a
:class:`~edge_ser.features.ray_engine.WorkerPool`, the pool of the extraction engine (same
options, same set-up checks, same retry of a dead worker's work); the head, the references and
the report stay in this process.

Each actor (:class:`FrameWorker`) builds the local engine's own frames provider,
``predict._AudioFrames``: the run's foundation model cut after its layer, one utterance at a
time at its natural length, float32 frames. The driver cuts the rows to predict into shards of
consecutive rows, keeps one shard in flight per worker, and hands the frames to the head in row
order, in the head batches of the local engine. So the predictions are the local engine's, byte
for byte, when the local process runs torch with as many threads as a worker (one by default);
with more threads the local matrix sums are split differently and the two differ by float32
rounding (docs/scale.md).

Why frames, not a feature cache: a cache stores frames as float16 and computes them with the
full model in equal-length batches, which would make predictions from audio differ from the
local engine's by the float16 rounding; shipping float32 frames of one shard costs less than
writing and reading a cache, and the driver holds only the shards that finished before the
one the head is waiting for.

Ray is imported only when a :class:`RayAudioEngine` is created; importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from edge_ser.evaluation.predict import _AudioFrames
from edge_ser.features.ray_engine import (
    DEFAULT_MAX_SHARD_ATTEMPTS, DEFAULT_RAY_WORKERS, WorkerBody, WorkerPool, check_resources, prepare_ray,
    ray_session,
)

__all__ = ["DEFAULT_PREDICT_SHARD_UTTERANCES", "FrameWorker", "FramesResult", "RayAudioEngine"]

DEFAULT_PREDICT_SHARD_UTTERANCES = 32
"""Utterances per prediction shard: ~20 ms of driver overhead per shard (docs/scale.md) is
under 1% of 32 Whisper-base utterances on one core, and a shard's float32 frames stay small."""


@dataclasses.dataclass(frozen=True)
class FramesResult:
    """The frames of one prediction shard, as a worker sends them back.

    Attributes:
        shard: shard number (within one predicted set).
        utt_ids: the shard's utterances, in row order.
        frames: one (T_u, N) float32 array per utterance.
        audio_s: seconds of audio in the shard.
        compute_s: wall seconds the worker spent on it (audio loading included).
    """

    shard: int
    utt_ids: tuple[str, ...]
    frames: tuple[np.ndarray, ...]
    audio_s: float
    compute_s: float


class FrameWorker(WorkerBody):
    """The body of one Ray actor: the run's foundation model cut after its layer, frames on request."""

    def __init__(self, *, manifest: Mapping[str, Any], layer: int, cache_dir: str, device: str,
                 threads: int) -> None:
        start = time.perf_counter()
        super().__init__(device=device, threads=threads)
        self.frames = _AudioFrames(manifest, layer=layer, cache_dir=cache_dir, device=device)
        self.load_s = time.perf_counter() - start

    def weights_sha256(self) -> str | None:
        return self.frames.weights_sha256

    def compute(self, *, shard: int, utt_ids: Sequence[str], audio_paths: Sequence[str]) -> FramesResult:
        from edge_ser.audio import audio_duration_s

        start = time.perf_counter()
        frames = tuple(self.frames(u, Path(p)) for u, p in zip(utt_ids, audio_paths))
        return FramesResult(shard=int(shard), utt_ids=tuple(str(u) for u in utt_ids), frames=frames,
                            audio_s=float(sum(audio_duration_s(p) for p in audio_paths)),
                            compute_s=time.perf_counter() - start)


class _RayFrames:
    """``frames_of(utt_id, audio_path)`` for predict._predict_rows, fed by one WorkerPool run.

    The rows are cut into shards of consecutive rows; the head asks for utterances in row order,
    so the shard it waits for is always the oldest one not yet used.
    """

    def __init__(self, engine: "RayAudioEngine", pool: WorkerPool, utterances: Sequence[tuple[str, Path]],
                 shard_utterances: int) -> None:
        self.engine = engine
        self.ids = [u for u, _ in utterances]
        self.paths = [os.fspath(Path(p).resolve()) for _, p in utterances]  # workers' cwd differs
        n = shard_utterances
        self.shards = [range(s, min(s + n, len(self.ids))) for s in range(0, len(self.ids), n)]
        self.ready: dict[str, np.ndarray] = {}
        self._results: Iterator[FramesResult] = pool.run(range(len(self.shards)), submit=self._submit)

    def _submit(self, actor: Any, shard: int) -> Any:
        rows = self.shards[shard]
        return actor.compute.remote(shard=shard, utt_ids=[self.ids[i] for i in rows],
                                    audio_paths=[self.paths[i] for i in rows])

    def __call__(self, utt_id: str, audio_path: Path) -> np.ndarray:
        while utt_id not in self.ready:
            result = next(self._results, None)
            if result is None:
                raise RuntimeError(f"the Ray workers returned no frames for utterance {utt_id!r} ({audio_path}); "
                                   "it was not among the rows sent to them.")
            self.ready.update(zip(result.utt_ids, result.frames))
            self.engine._count(result)
        return self.ready.pop(utt_id)


class RayAudioEngine:
    """Computes the frames of prediction from audio on Ray workers; use it as a context manager.

    Entering connects to Ray (`address` as for ``edge-ser features extract --engine ray``: None
    starts a local instance with ``workers x threads_per_worker`` CPUs, ``"auto"`` or
    ``HOST:PORT`` joins a cluster, a Ray already initialised in this process is used) and checks
    the cluster's resources; the workers start on the first prediction from audio (they need the
    run's feature-cache manifest to build the model) and serve every later set and fold of the
    same foundation model. Leaving stops the workers and disconnects.

    Args:
        address: see above.
        workers: Ray actors, each holding one copy of the foundation model (cut after the layer).
        threads_per_worker: torch threads (and Ray CPUs) per actor.
        device: ``"cpu"`` or ``"cuda"`` (one GPU per actor; untested on a GPU, docs/scale.md).
        shard_utterances: consecutive rows per piece of work.
        max_shard_attempts: a shard whose worker dies is retried on a new worker up to this many
            attempts in all; then EngineError.

    Every set-up error (Ray missing, bad options, no cluster at `address`, ``cuda`` without a GPU
    for a local instance) is raised by the constructor, before any work.
    """

    def __init__(self, *, address: str | None = None, workers: int = DEFAULT_RAY_WORKERS, threads_per_worker: int = 1,
                 device: str = "cpu", shard_utterances: int = DEFAULT_PREDICT_SHARD_UTTERANCES,
                 max_shard_attempts: int = DEFAULT_MAX_SHARD_ATTEMPTS) -> None:
        if isinstance(shard_utterances, bool) or not isinstance(shard_utterances, int) or shard_utterances < 1:
            raise ValueError(f"shard_utterances={shard_utterances!r}; expected a positive integer such as 32.")
        self.ray = prepare_ray(address=address, workers=workers, threads_per_worker=threads_per_worker,
                               device=device, max_shard_attempts=max_shard_attempts)
        self.address = address
        self.workers = workers
        self.threads = threads_per_worker
        self.device = device
        self.shard_utterances = shard_utterances
        self.max_attempts = max_shard_attempts
        self._stack: contextlib.ExitStack | None = None
        self._pool: WorkerPool | None = None
        self._key: tuple | None = None
        self._stats: dict[str, Any] = {"connected": None, "cluster": None, "startup_s": 0.0, "utterances": 0,
                                       "audio_s": 0.0, "worker_compute_s": 0.0, "shard_attempts": 0,
                                       "shards_retried": 0, "worker_deaths": 0, "worker_peak_rss_mb": [],
                                       "hosts": [], "models_started": 0}

    def __enter__(self) -> "RayAudioEngine":
        stack = contextlib.ExitStack()
        start = time.perf_counter()
        try:
            how = stack.enter_context(ray_session(self.ray, address=self.address,
                                                  num_cpus=self.workers * self.threads))
            check_resources(self.ray, workers=self.workers, threads=self.threads, device=self.device)
            self._stats["cluster"] = self.ray.get_runtime_context().gcs_address
        except BaseException:
            stack.close()
            raise
        stack.callback(self._stop_pool)  # runs before the session ends
        self._stack = stack
        self._stats["connected"] = how
        self._stats["startup_s"] += time.perf_counter() - start
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def frames_of(self, manifest: Mapping[str, Any], *, key: tuple, layer: int, cache_dir: str,
                  utterances: Sequence[tuple[str, Path]]) -> _RayFrames:
        """A frames provider for `utterances` (utt_id, audio path) in the order the head will ask for them.

        `key` names the foundation model (model, layer, weights sha256, seed): workers are started
        for the first key and kept while the key stays the same.
        """
        if self._stack is None:
            raise RuntimeError("RayAudioEngine is used outside its `with` block; enter it first.")
        if key != self._key:
            self._stop_pool()
            start = time.perf_counter()
            pool = WorkerPool(self.ray, actor_class=FrameWorker,
                              actor_args={"manifest": dict(manifest), "layer": int(layer), "cache_dir": cache_dir},
                              workers=self.workers, threads=self.threads, device=self.device,
                              expected_sha256=(manifest.get("weights_source") or {}).get("sha256"),
                              max_attempts=self.max_attempts)
            pool.start()
            self._pool, self._key = pool, key
            self._stats["startup_s"] += time.perf_counter() - start
            self._stats["models_started"] += 1
        return _RayFrames(self, self._pool, utterances, self.shard_utterances)

    def _count(self, result: FramesResult) -> None:
        self._stats["utterances"] += len(result.utt_ids)
        self._stats["audio_s"] += result.audio_s

    def _stop_pool(self) -> None:
        pool, self._pool, self._key = self._pool, None, None
        if pool is None:
            return
        with contextlib.suppress(Exception):
            pool.measure_memory()
        stats = pool.stats()
        pool.stop()
        for name in ("shard_attempts", "shards_retried", "worker_deaths", "worker_compute_s"):
            self._stats[name] += stats[name]
        self._stats["worker_peak_rss_mb"] = sorted(self._stats["worker_peak_rss_mb"] + stats["worker_peak_rss_mb"])
        self._stats["hosts"] = sorted(set(self._stats["hosts"]) | set(stats["hosts"]))

    def record(self) -> dict[str, Any]:
        """What the engine did, for test_sets.json: options, connection, start-up, work, retries, memory."""
        if self._pool is not None:  # still running: fold in the live pool's counts
            live = self._pool.stats()
            extra = {n: live[n] for n in ("shard_attempts", "shards_retried", "worker_deaths", "worker_compute_s")}
        else:
            extra = {}
        stats = {**self._stats, **{n: self._stats[n] + v for n, v in extra.items()}}
        return {"name": "ray", "ray_version": self.ray.__version__, "address": self.address or "local",
                "workers": self.workers, "threads_per_worker": self.threads, "device": self.device,
                "shard_utterances": self.shard_utterances,
                **{n: round(v, 3) if isinstance(v, float) else v for n, v in stats.items()}}

"""Feature extraction on a Ray cluster: one actor per worker holds the foundation model.

``edge-ser features extract ... --engine ray`` runs the shards of
:func:`edge_ser.features.extract.extract_features` as Ray actor tasks and writes the same
cache: the shard assignment, the per-shard computation and the manifest come from
:mod:`edge_ser.features.sharding`, the files from the local engine's
:class:`~edge_ser.features.cache.FeatureCacheWriter`. Saliency, training and evaluation read
the result unchanged.

How the work is split:

- The driver (this process) plans the shards, starts ``workers`` actors (each loads the model
  once) and keeps one shard in flight per actor. Workers read the audio themselves (every
  node must see the corpus at the same path) and send back the shard's arrays; only the
  driver writes, so ``progress.json`` has one writer.
- A worker that dies (process killed, node lost) loses the shard it was computing and
  nothing else: the driver starts a replacement actor and submits that shard again, up to
  ``max_shard_attempts`` times per shard.
- A killed driver takes its actors with it (Ray ends an owner's actors); the next run with
  the same settings resumes from ``progress.json``, local or Ray engine alike, and never
  recomputes a finished shard.
- Before the cache is finalized every recorded shard file is hashed again: a file that some
  other process wrote after it was recorded is found by its sha256, and the run stops; the
  next run recomputes just that shard.

Ray is imported only here, only when this engine is asked for (``pip install 'edge-ser[ray]'``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from edge_ser.errors import EdgeSerError, ManifestError
from edge_ser.features.cache import MANIFEST_FILE, FeatureCache, FeatureCacheWriter
from edge_ser.features.extract import DEFAULT_BATCH_SECONDS, DEFAULT_SHARD_UTTERANCES, ExtractionThroughput, _Extractor
from edge_ser.features.sharding import ExtractionPlan, ShardResult, cache_manifest, compute_shard, plan_extraction
from edge_ser.io import read_json
from edge_ser.labels import SAMPLE_RATE
from edge_ser.progress import progress_bar

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
"""Values of ``edge-ser features extract --engine``."""
DEVICES = ("cpu", "cuda")
DEFAULT_RAY_WORKERS = 2
DEFAULT_MAX_SHARD_ATTEMPTS = 3
RAY_INSTALL_HINT = "pip install 'edge-ser[ray]' (from a checkout: `make setup` installs it)"
WORKER_CLASS_NAME = "ShardWorker"
"""Ray names a worker process ``ray::ShardWorker`` (``ray::ShardWorker.compute`` while it computes)."""


class EngineError(EdgeSerError, RuntimeError):
    """The Ray engine cannot run: Ray missing, no reachable cluster, too few resources, workers keep dying."""


def import_ray() -> Any:
    """Import Ray, or raise EngineError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs the Ray package, which is not importable here ({exc}). Install it with "
            f"{RAY_INSTALL_HINT}, or use the default --engine local."
        ) from None
    return ray


def _move_to(extractor: _Extractor, device: str) -> None:
    if extractor._loaded is None:  # MFBF0
        extractor._module.to(device)
    else:
        extractor._loaded.model.to(device)
        extractor._loaded.front_end.to(device)


def check_worker_device(device: str) -> None:
    """In a worker: refuse ``cuda`` where torch sees no GPU (the actor's start fails with this message)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            f"--device cuda: torch {torch.__version__} on {socket.gethostname()} sees no CUDA device "
            "(a CPU-only torch build, or no GPU on this node). Use --device cpu, or install a CUDA build "
            "of torch on the GPU nodes."
        )


class WorkerBody:
    """What every edge-ser Ray actor body shares: its torch thread count and device (checked), the
    time it took to load its model, and :meth:`describe`. Subclasses set ``load_s`` after loading
    and implement :meth:`weights_sha256`."""

    def __init__(self, *, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        check_worker_device(device)
        self.device = device
        self.threads = threads
        self.load_s = 0.0

    def weights_sha256(self) -> str | None:
        """sha256 of the weights this worker loaded (the driver checks it against its own)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: pid, host, device, threads, model load time (s), peak memory (MB)."""
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
                "threads": self.threads, "load_s": round(self.load_s, 3), "peak_rss_mb": round(peak_mb, 1),
                "weights_sha256": self.weights_sha256()}


class ShardWorker(WorkerBody):
    """The body of one Ray actor: loads the model once, then computes shards on request."""

    def __init__(self, *, model: str, weights: str | None, random_init: bool, seed: int, device: str,
                 threads: int) -> None:
        start = time.perf_counter()
        super().__init__(device=device, threads=threads)
        self.extractor = _Extractor(model, weights=weights, random_init=random_init, seed=seed)
        _move_to(self.extractor, device)
        self.load_s = time.perf_counter() - start

    def weights_sha256(self) -> str | None:
        return self.extractor.weights_source.get("sha256")

    def compute(self, *, shard: int, utt_ids: Sequence[str], audio_paths: Sequence[str],
                layers_stored: Sequence[int], max_samples: int) -> ShardResult:
        return compute_shard(self.extractor, shard=shard, utt_ids=utt_ids, audio_paths=audio_paths,
                             layers_stored=layers_stored, max_samples=max_samples, device=self.device)


def _check_address(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of reconnect attempts) when HOST:PORT does not answer."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address {address!r}; expected 'auto' or HOST:PORT of a Ray head node, such as "
                         "10.0.0.5:6379 (the address `ray start --head` prints).")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0):
            pass
    except OSError as exc:
        raise EngineError(
            f"no Ray cluster answers at {address} ({exc}). Start one there (`ray start --head --port {port}`, "
            "docs/scale.md), pass the address it prints, use --address auto on a cluster node, or leave "
            "--address out to start a local Ray instance."
        ) from None


@contextlib.contextmanager
def ray_session(ray: Any, *, address: str | None, num_cpus: int) -> Iterator[str]:
    """Connect this process to Ray for the duration of the block; yields how ("existing", "local", address).

    An already initialised Ray (a notebook, a test module) is used as is and left running.
    ``address=None`` starts a private local instance with `num_cpus` CPUs and stops it after;
    ``"auto"`` or ``HOST:PORT`` joins a running cluster and only disconnects from it after.
    """
    if ray.is_initialized():
        yield "existing"
        return
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        how = "local"
    else:
        if address != "auto":
            _check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(
                f"could not connect to a Ray cluster at --address {address}: {str(exc).rstrip('.')}. Start one "
                "(`ray start --head`, docs/scale.md), pass its HOST:PORT, or leave --address out to start a "
                "local Ray instance."
            ) from None
        how = address
    try:
        yield how
    finally:
        ray.shutdown()


def prepare_ray(*, address: str | None, workers: int, threads_per_worker: int, device: str,
                max_shard_attempts: int = DEFAULT_MAX_SHARD_ATTEMPTS) -> Any:
    """Check a Ray engine's options and import Ray; every set-up error is raised here, before any work.

    Checks the numbers, ``device``, the form of ``address``, that Ray is importable, that a
    ``HOST:PORT`` answers, and that ``device="cuda"`` has a GPU when a local Ray instance would be
    started. Returns the ``ray`` module.
    """
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker),
                        ("max_shard_attempts", max_shard_attempts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive integer.")
    if device not in DEVICES:
        raise ValueError(f"device={device!r}; expected one of {list(DEVICES)}.")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"address={address!r}; expected 'auto', HOST:PORT or None (start a local Ray instance).")
    ray = import_ray()  # before any work: a missing engine is a set-up error, said at once
    if address not in (None, "auto") and not ray.is_initialized():
        _check_address(address)  # and so is a cluster that does not answer (before loading the model)
    if device == "cuda" and address is None and not ray.is_initialized() and not torch.cuda.is_available():
        raise EngineError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device on this machine, and a local Ray "
            "instance would have no GPU for its workers. Use --device cpu, or --address of a cluster with GPU nodes."
        )
    return ray


def check_resources(ray: Any, *, workers: int, threads: int, device: str) -> dict[str, float]:
    # Actors that ask for more than the cluster has wait forever instead of failing: refuse up front.
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cpus < workers * threads:
        raise EngineError(
            f"{workers} workers x {threads} CPU each need {workers * threads} CPUs; the Ray cluster has {cpus:g}. "
            f"Pass --workers {max(1, int(cpus // threads))} or add nodes."
        )
    if device == "cuda" and gpus < workers:
        raise EngineError(
            f"--device cuda needs one GPU per worker ({workers}); the Ray cluster has {gpus:g} GPUs. "
            f"Use --device cpu{'' if gpus < 1 else f' or --workers {int(gpus)}'}, or add GPU nodes."
        )
    return {"CPU": cpus, "GPU": gpus}


def worker_error(exc: BaseException) -> BaseException:
    """The worker's own exception inside a RayTaskError (CorpusError, AudioError, ...), else `exc`."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _check_recorded_shards(writer: FeatureCacheWriter) -> None:
    """Hash every recorded shard file again; a file rewritten after it was recorded stops the run."""
    changed = [s for s in writer.finished_shards if not writer._record_intact(writer._done[s])]
    if changed:
        raise ManifestError(
            f"shard(s) {changed} of {writer.out} no longer match the sha256 recorded when they were written: "
            "another process wrote them afterwards (two extractions into one folder?). Make sure only one "
            "extraction writes there and run it again: it recomputes just those shards."
        )


def extract_features_ray(
    *,
    corpus_dir: str | os.PathLike,
    model: str,
    out: str | os.PathLike,
    layers: str | Sequence[int] | None = None,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    shard_utterances: int = DEFAULT_SHARD_UTTERANCES,
    resume: bool = True,
    on_shard: Callable[[int, int], None] | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    address: str | None = None,
    workers: int = DEFAULT_RAY_WORKERS,
    threads_per_worker: int = 1,
    device: str = "cpu",
    max_shard_attempts: int = DEFAULT_MAX_SHARD_ATTEMPTS,
) -> FeatureCache:
    """Extract features like :func:`~edge_ser.features.extract.extract_features`, on Ray workers.

    Arguments up to `overwrite` mean what they mean there (same cache, same resume rules).

    Args:
        address: None starts a local Ray instance with ``workers x threads_per_worker`` CPUs
            (stopped afterwards); ``"auto"`` joins the cluster this node belongs to; ``HOST:PORT``
            joins the cluster of that head node. A Ray already initialised in this process is used.
        workers: number of actors, each holding one copy of the model.
        threads_per_worker: torch threads (and Ray CPUs) per actor.
        device: ``"cpu"`` or ``"cuda"`` (one GPU per actor; untested on a GPU so far, docs/scale.md).
        max_shard_attempts: a shard whose worker dies is retried on a new worker up to this many
            attempts in all; then EngineError.

    Returns:
        The opened cache; ``manifest["extraction"]["engine"]`` records the engine, its workers
        and how many shards were retried.
    """
    if not (isinstance(batch_seconds, (int, float)) and math.isfinite(batch_seconds) and batch_seconds > 0):
        raise ValueError(f"batch_seconds={batch_seconds!r}; expected a positive, finite number of seconds such as 60.")
    ray = prepare_ray(address=address, workers=workers, threads_per_worker=threads_per_worker, device=device,
                      max_shard_attempts=max_shard_attempts)

    extractor = _Extractor(model, weights=weights, random_init=random_init, seed=seed)
    plan = plan_extraction(corpus_dir=corpus_dir, extractor=extractor, layers=layers, random_init=random_init,
                           seed=seed, shard_utterances=shard_utterances)
    del extractor  # the driver needed it for the plan (spec, weights digest); workers load their own
    out = Path(out)
    if resume and _holds_plan(out, plan.plan):
        logger.info("%s already holds this extraction; reusing it", out)
        return FeatureCache.open(out)
    writer = FeatureCacheWriter(out, plan=plan.plan, layers_stored=plan.layers_stored, resume=resume,
                                overwrite=overwrite)
    resumed = len(writer.finished_shards)
    todo = [s for s in range(len(plan.shards)) if not writer.is_done(s)]
    engine: dict[str, Any] = {"name": "ray", "ray_version": ray.__version__, "address": address or "local",
                              "workers": workers, "threads_per_worker": threads_per_worker, "device": device,
                              "shard_attempts": 0, "shards_retried": 0, "worker_deaths": 0,
                              "startup_s": 0.0, "worker_compute_s": 0.0, "worker_peak_rss_mb": [], "hosts": [],
                              "connected": None}  # all shards already done: no Ray needed, nothing started
    computed_utts, audio_s, wall_s = 0, 0.0, 0.0
    if todo:
        workers = min(workers, len(todo))  # an actor without a shard would only load the model
        engine["workers"] = workers
        computed_utts, audio_s, wall_s = _run_shards_on_workers(
            ray, writer, plan, todo, engine=engine, model=model, weights=weights, random_init=random_init,
            seed=seed, batch_seconds=batch_seconds, address=address, workers=workers,
            threads_per_worker=threads_per_worker, device=device, max_shard_attempts=max_shard_attempts,
            on_shard=on_shard, show_progress=show_progress)
    _check_recorded_shards(writer)

    threads = workers * threads_per_worker
    throughput = ExtractionThroughput(
        utterances=computed_utts, audio_s=round(audio_s, 3), wall_s=round(wall_s, 3),
        utterances_per_s=round(computed_utts / wall_s, 3) if wall_s > 0 else None,
        realtime_factor=round(audio_s / wall_s, 3) if wall_s > 0 else None,
        threads=threads, shards_computed=len(todo), shards_resumed=resumed,
    )
    if show_progress and wall_s > 0:
        print(f"{model}: {computed_utts} utterances ({audio_s:.1f} s of audio) in {wall_s:.1f} s on {workers} Ray "
              f"workers: {throughput.utterances_per_s:.2f} utt/s, {throughput.realtime_factor:.1f}x real time "
              f"(start-up {engine['startup_s']:.1f} s, {engine['shards_retried']} shards retried)", file=sys.stderr)
    manifest = cache_manifest(plan, random_init=random_init, batch_seconds=batch_seconds,
                              shard_utterances=shard_utterances, throughput=dataclasses.asdict(throughput),
                              engine=engine)
    return writer.finalize(table=plan.table, manifest=manifest)


def _holds_plan(out: Path, plan: dict[str, Any]) -> bool:
    """Whether ``out`` already holds a finished cache whose manifest records this plan."""
    if not (out / MANIFEST_FILE).is_file():
        return False
    try:
        existing = read_json(out / MANIFEST_FILE)
    except ValueError:
        existing = {}
    return existing.get("plan") == plan


def _run_shards_on_workers(
    ray: Any, writer: FeatureCacheWriter, plan: ExtractionPlan, todo: Sequence[int], *, engine: dict[str, Any],
    model: str, weights: str | os.PathLike | None, random_init: bool, seed: int, batch_seconds: float,
    address: str | None, workers: int, threads_per_worker: int, device: str, max_shard_attempts: int,
    on_shard: Callable[[int, int], None] | None, show_progress: bool,
) -> tuple[int, float, float]:
    """Utterances, audio seconds and wall seconds of computing the ``todo`` shards on Ray actors.

    Writes each shard as it arrives and records start-up time, connection and pool statistics in `engine`.
    """
    weights_arg = os.fspath(Path(weights).resolve()) if weights is not None else None  # workers' cwd differs
    max_samples = max(1, int(batch_seconds * SAMPLE_RATE))

    def submit(actor: Any, shard: int) -> Any:
        rows = plan.shards[shard]
        return actor.compute.remote(
            shard=shard, utt_ids=[plan.utt_ids[i] for i in rows], audio_paths=[plan.audio_paths[i] for i in rows],
            layers_stored=list(plan.layers_stored), max_samples=max_samples)

    pool = WorkerPool(ray, actor_class=ShardWorker, actor_args={"model": model, "weights": weights_arg,
                                                                "random_init": random_init, "seed": seed},
                      workers=workers, threads=threads_per_worker, device=device,
                      expected_sha256=plan.model_info["weights_source"].get("sha256"),
                      max_attempts=max_shard_attempts)
    computed_utts, audio_s = 0, 0.0
    start = time.perf_counter()
    with ray_session(ray, address=address, num_cpus=workers * threads_per_worker) as how:
        check_resources(ray, workers=workers, threads=threads_per_worker, device=device)
        pool.start()
        engine["startup_s"] = round(time.perf_counter() - start, 3)
        engine["connected"] = how
        bar = progress_bar(total=sum(len(plan.shards[s]) for s in todo), desc=f"extracting {model} on Ray",
                           unit="utt", enabled=show_progress, leave=False)
        run_start = time.perf_counter()
        try:
            for result in pool.run(todo, submit=submit):
                writer.write_shard(shard=result.shard, utt_ids=list(result.utt_ids),
                                   frames=result.frames_per_utterance(), pooled=result.pooled,
                                   n_clipped=result.n_clipped)
                computed_utts += len(result.utt_ids)
                audio_s += result.audio_s
                bar.update(len(result.utt_ids))
                if on_shard is not None:
                    on_shard(result.shard, len(plan.shards))
            pool.measure_memory()
        finally:
            bar.close()
            pool.stop()
        wall_s = time.perf_counter() - run_start
    engine.update(pool.stats())
    return computed_utts, audio_s, wall_s


class WorkerPool:
    """`workers` actors of one class, one work item in flight each; a dead actor is replaced and its item retried.

    The extraction (shards of the cache) and the evaluation's prediction from audio
    (:mod:`edge_ser.evaluation.ray_predict`) share it. An actor class takes the keywords
    ``device`` and ``threads`` besides `actor_args`, and has ``describe()`` (a dict with ``pid``,
    ``host``, ``device``, ``load_s``, ``peak_rss_mb``, ``weights_sha256``); a result has ``compute_s``.
    """

    def __init__(self, ray: Any, *, actor_class: type, actor_args: dict[str, Any], workers: int, threads: int,
                 device: str, expected_sha256: str | None,
                 max_attempts: int = DEFAULT_MAX_SHARD_ATTEMPTS) -> None:
        self.ray = ray
        self.actor_class = actor_class
        self.n_workers = workers
        self.threads = threads
        self.device = device
        self.actor_args = actor_args
        self.expected_sha256 = expected_sha256
        self.max_attempts = max_attempts
        self.actors: list[Any] = []
        self._remote_cls: Any = None
        self.hosts: set[str] = set()
        self.total_attempts = 0
        self.retried = 0
        self.deaths = 0
        self.compute_s = 0.0
        self.peak_rss_mb: list[float] = []

    @property
    def model(self) -> str:
        return str(self.actor_args.get("model", self.actor_class.__name__))

    def _new_actor(self) -> Any:
        if self._remote_cls is None:
            # Restarts and task retries are the pool's job (below): it knows which item a dead actor held.
            self._remote_cls = self.ray.remote(self.actor_class).options(
                num_cpus=self.threads, num_gpus=1 if self.device == "cuda" else 0, max_restarts=0,
                max_task_retries=0)
        return self._remote_cls.remote(device=self.device, threads=self.threads, **self.actor_args)

    def start(self) -> None:
        """Start the actors and wait until each has loaded the model (a load error stops here, unretried)."""
        self.actors = [self._new_actor() for _ in range(self.n_workers)]
        for i, actor in enumerate(self.actors):
            try:
                info = self.ray.get(actor.describe.remote())
            except self.ray.exceptions.RayError as exc:
                self.stop()
                raise EngineError(f"Ray worker {i} could not load {self.model}: {worker_error(exc)}") from None
            if info["weights_sha256"] != self.expected_sha256:  # another node, other weights: results would mix models
                self.stop()
                raise EngineError(
                    f"Ray worker {i} on {info['host']} loaded {self.model} weights with sha256 "
                    f"{str(info['weights_sha256'])[:12]}..., the driver's {str(self.expected_sha256)[:12]}...: install "
                    "the same weights on every node (or pass --weights on a shared file system)."
                )
            self.hosts.add(info["host"])
            logger.info("Ray worker %d: pid %s on %s, %s, model loaded in %.1f s", i, info["pid"], info["host"],
                        info["device"], info["load_s"])

    def run(self, items: Sequence[int], *, submit: Callable[[Any, int], Any]) -> Iterator[Any]:
        """Yield each item's result as it arrives (completion order); the next item is submitted first.

        ``submit(actor, item)`` starts one item on an actor and returns Ray's object reference.
        A pool runs one ``run`` at a time; it can run several one after another.
        """
        queue = collections.deque(items)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (item, worker)
        attempts: collections.Counter[int] = collections.Counter()

        def _submit(worker: int, item: int) -> Any:
            attempts[item] += 1
            self.total_attempts += 1
            return submit(self.actors[worker], item)

        for worker in range(min(self.n_workers, len(queue))):
            item = queue.popleft()
            running[_submit(worker, item)] = (item, worker)
        while running:
            (ref,), _ = self.ray.wait(list(running), num_returns=1)
            item, worker = running.pop(ref)
            try:
                result = self.ray.get(ref)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError) as exc:
                # The worker process or its node is gone (with the result, if it was stored there).
                self.deaths += 1
                if attempts[item] >= self.max_attempts:
                    raise EngineError(
                        f"shard {item} was lost {attempts[item]} times with its Ray worker (last: {exc}). "
                        "Workers keep dying: check the workers' memory (docs/scale.md has per-worker numbers) and "
                        "the Ray logs; finished shards are kept, so a re-run resumes."
                    ) from None
                logger.warning("Ray worker %d died during shard %d (attempt %d); retrying the shard on a new worker",
                               worker, item, attempts[item])
                self.retried += 1
                self.actors[worker] = self._new_actor()
                running[_submit(worker, item)] = (item, worker)
                continue
            except self.ray.exceptions.RayTaskError as exc:
                raise worker_error(exc) from None  # the worker's own error (bad audio, too short, ...): not retried
            self.compute_s += result.compute_s
            if queue:
                next_item = queue.popleft()
                running[_submit(worker, next_item)] = (next_item, worker)
            yield result

    def measure_memory(self) -> None:
        """Peak resident memory of each live worker process (model + one item's activations)."""
        infos = self.ray.get([actor.describe.remote() for actor in self.actors], timeout=60)
        self.peak_rss_mb = sorted(info["peak_rss_mb"] for info in infos)

    def stop(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []

    def stats(self) -> dict[str, Any]:
        return {"shard_attempts": self.total_attempts, "shards_retried": self.retried,
                "worker_deaths": self.deaths, "worker_compute_s": round(self.compute_s, 3),
                "worker_peak_rss_mb": self.peak_rss_mb, "hosts": sorted(self.hosts)}


__all__ = ["DEFAULT_RAY_WORKERS", "DEVICES", "ENGINES", "EngineError", "ShardWorker", "WorkerPool", "check_resources",
           "check_worker_device", "extract_features_ray", "import_ray", "prepare_ray", "ray_session", "worker_error"]

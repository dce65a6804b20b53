"""Run a frozen foundation model (or the MFBF0 front end) over a corpus into a feature cache.

Utterances are sorted by duration and cut into shards of `shard_utterances`; each shard
is computed, written (crash-safe, see :mod:`edge_ser.features.cache`) and recorded as
done, so an interrupted run resumes at the first unfinished shard.

Batching and exactness: the FM families here either have no attention mask (Whisper)
or normalise over time in the conv front end (WavLM/HuBERT base group norm), so
zero-padding a short utterance to a longer one changes its hidden states. We therefore
only batch utterances of *exactly* the same length (in samples); every other utterance
runs alone. The result equals a one-by-one computation up to float32 rounding of the
batched kernels (tests/test_features_extract.py checks it). Batching is faster when it
applies: benchmarks/bench_features.py measured 8 equal-length 3 s clips through
Whisper-base at 15.0 s as one batch vs 79.3 s one by one (5.3x, 2 threads, on a
heavily shared 2-core machine, load average ~10; per-op thread-sync overhead dominates
there, so expect a smaller gain on an idle machine). Real corpora rarely have equal
lengths, so most utterances still run alone; exactness is not traded for that speed.

**Stream features** (``stream=StreamFeatures(hop_s, context_s)``, ``edge-ser features extract
--stream-hop``): each clip's hidden states as a cached streaming artifact computes them
(:func:`edge_ser.fm.stream.cached_reference_states`, docs/streaming.md): the clip
zero-padded to whole hops (as ``EmotionStream.flush`` pads the last one), the foundation model
run hop by hop from silence with a running level and log-mel maximum, positions since the start,
and each hop's frames attending to themselves and to the ``context_s - hop_s`` seconds before.
A head trained on them learns what a stream gives it; one trained on ordinary (whole-clip or
window) features meets different frames in a stream. Whisper only (the cached mode), at most
one stream segment (30 s) per clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from edge_ser.features.cache import MANIFEST_FILE, FeatureCache, FeatureCacheWriter
from edge_ser.io import read_json
from edge_ser.labels import SAMPLE_RATE
from edge_ser.progress import progress_bar

if TYPE_CHECKING:
    from edge_ser.features.sharding import ExtractionPlan

logger = logging.getLogger(__name__)

MFBF0_MODEL = "mfbf0"
"""Name of the hand-crafted baseline front end in place of an FM name."""

FLOAT16_MAX = float(np.finfo(np.float16).max)
DEFAULT_BATCH_SECONDS = 60.0
DEFAULT_SHARD_UTTERANCES = 256


def available_models() -> list[str]:
    """Names accepted by :func:`extract_features`: the FM registry plus ``"mfbf0"``."""
    from edge_ser.fm import list_models

    return list(list_models()) + [MFBF0_MODEL]


@dataclasses.dataclass(frozen=True)
class StreamFeatures:
    """Extract features as a cached streaming artifact computes them (module docstring).

    ``hop_s``: seconds per hop (``edge-ser convert --stream-hop``); ``context_s``: the stream's
    context, the converted artifact's window (``--window-s``), 3 s by default."""

    hop_s: float
    context_s: float = 3.0

    def __post_init__(self) -> None:
        for name in ("hop_s", "context_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r}; expected a positive number of seconds such as 1.0 (hop) or "
                                 "3.0 (context).")
        if self.hop_s >= self.context_s:
            raise ValueError(f"hop_s={self.hop_s!r} is not shorter than context_s={self.context_s!r}; expected a hop "
                             "inside the context window, e.g. hop 1.0 with context 3.0.")

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * SAMPLE_RATE))

    @property
    def window_samples(self) -> int:
        return int(round(self.context_s * SAMPLE_RATE))

    def to_dict(self, *, hop_frames: int, context_frames: int) -> dict[str, Any]:
        """The manifest block: the options and the stream geometry they give the model."""
        return {"fm_mode": "cached", "hop_s": float(self.hop_s), "context_s": float(self.context_s),
                "hop_samples": self.hop_samples, "window_samples": self.window_samples,
                "hop_frames": int(hop_frames), "context_frames": int(context_frames)}


@dataclasses.dataclass(frozen=True)
class ExtractionThroughput:
    """Speed of the shards computed in this run (resumed shards excluded)."""

    utterances: int
    audio_s: float
    wall_s: float
    utterances_per_s: float | None
    realtime_factor: float | None  # audio seconds per wall second (30 = 30x faster than real time)
    threads: int
    shards_computed: int
    shards_resumed: int


class _Extractor:
    """Uniform view of an FM or MFBF0: waveforms -> list of (B, T, N) states + valid frames."""

    def __init__(self, model: str, *, weights: str | os.PathLike | None, random_init: bool, seed: int,
                 stream: StreamFeatures | None = None) -> None:
        self.name = model
        self.stream: dict[str, Any] | None = None
        if model == MFBF0_MODEL:
            from edge_ser.frontend import MFBF0, MFBF0_DIM, MFBF0_FRAME_RATE, MFBF0Config

            if weights is not None:
                raise ValueError(f"model {MFBF0_MODEL!r} has no weights; got weights={weights!s}. Drop --weights.")
            self._module = MFBF0().eval()
            self.n_layers = 0
            self.hidden_size = int(MFBF0_DIM)
            self.frame_rate = float(MFBF0_FRAME_RATE)
            self.family = MFBF0_MODEL
            self.spec: dict[str, Any] = {"name": MFBF0_MODEL, "family": MFBF0_MODEL, "n_layers": 0,
                                         "hidden_size": self.hidden_size, "frame_rate": self.frame_rate,
                                         "config": MFBF0Config().to_dict()}
            self.weights_source: dict[str, Any] = {"kind": "none", "path": None, "sha256": None}
            self._loaded = None
        else:
            from edge_ser.fm import load_foundation_model

            known = available_models()
            if model not in known:
                raise ValueError(f"unknown model {model!r}; expected one of {known}.")
            loaded = load_foundation_model(model, weights=weights, random_init=random_init, seed=seed)
            self._loaded = loaded
            spec = loaded.spec
            self.n_layers = int(spec.n_layers)
            self.hidden_size = int(spec.hidden_size)
            self.frame_rate = float(spec.frame_rate)
            self.family = str(spec.family)
            self.spec = spec.to_dict() if hasattr(spec, "to_dict") else dataclasses.asdict(spec)
            self.spec["input_level"] = loaded.input_level
            source = loaded.weights_source
            self.weights_source = source.to_dict() if hasattr(source, "to_dict") else dataclasses.asdict(source)
            if stream is not None:
                self._init_stream(stream)
        if stream is not None and self.stream is None:
            raise ValueError(f"stream features of {model!r}: they are the frames of a cached stream, which is built "
                             "for Whisper only. Choose a Whisper model, or extract without --stream-hop.")

    def _init_stream(self, stream: StreamFeatures) -> None:
        from edge_ser.fm.stream import stream_frames

        if self.family != "whisper":
            raise ValueError(
                f"stream features of {self.name!r}: they are the frames of a cached stream, which is built for "
                "Whisper only (WavLM and HuBERT look 1.28 s ahead in their positional convolution, so a hop cannot "
                "run on its own frames with a cache). Choose a Whisper model, or extract without --stream-hop.")
        if abs(stream.hop_samples - stream.hop_s * SAMPLE_RATE) > 1e-6:
            raise ValueError(f"hop_s={stream.hop_s!r} is not a whole number of samples at {SAMPLE_RATE} Hz; expected "
                             "a multiple of the model's frame step (0.02 s), e.g. 0.5 or 1.0.")
        hop_frames, context_frames = stream_frames(self._loaded.spec, window_samples=stream.window_samples,
                                                   hop_samples=stream.hop_samples)
        self._stream_front = self._loaded.truncated(self.n_layers).eval()  # every block: all hidden states
        self._hop_frames, self._context_frames = hop_frames, context_frames
        self.stream = stream.to_dict(hop_frames=hop_frames, context_frames=context_frames)

    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[Sequence[torch.Tensor], torch.Tensor]:
        if self._loaded is None:
            feats = self._module(waves)
            return [feats], torch.full((waves.shape[0],), feats.shape[1], dtype=torch.long)
        if self.stream is not None:
            return self._stream_states(waves, lengths)
        states, frame_lengths = self._loaded.hidden_states(waves, lengths)
        return states, torch.as_tensor(frame_lengths, dtype=torch.long)

    def _stream_states(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[Sequence[torch.Tensor], torch.Tensor]:
        """Each clip's hidden states as the cached stream computes them (module docstring), one clip at a time."""
        from edge_ser.fm.stream import cached_reference_states, pad_to_whole_hops, whole_hops

        hop, frames_per_hop = int(self.stream["hop_samples"]), self._hop_frames
        max_hops = int(self._stream_front.position_table.shape[0]) // frames_per_hop
        per_clip = []
        for b in range(waves.shape[0]):
            wave = waves[b, :int(lengths[b])].detach().cpu().numpy().astype(np.float32)
            if whole_hops(len(wave), hop) > max_hops:
                raise ValueError(
                    f"a clip of {len(wave) / SAMPLE_RATE:.1f} s is longer than one stream segment ({max_hops} hops of "
                    f"{hop / SAMPLE_RATE:g} s: Whisper's positions since the segment start); stream features cover one "
                    "segment per clip. Cut long clips first (edge-ser data windows) or extract without --stream-hop.")
            per_clip.append(cached_reference_states(self._stream_front, pad_to_whole_hops(wave, hop), hop_samples=hop,
                                                    context_frames=self._context_frames))
        longest = max(states[0].shape[1] for states in per_clip)
        stacked = []
        for k in range(self.n_layers + 1):
            layer = torch.zeros(len(per_clip), longest, self.hidden_size)
            for b, states in enumerate(per_clip):
                layer[b, :states[k].shape[1]] = states[k][0]
            stacked.append(layer)
        return stacked, torch.tensor([states[0].shape[1] for states in per_clip], dtype=torch.long)


def _resolve_layers(layers: str | Sequence[int] | None, *, n_layers: int, model: str) -> tuple[int, ...]:
    if n_layers == 0:  # MFBF0: its single "layer" 0 is what training reads
        if layers not in (None, "all") and [int(k) for k in layers] != [0]:  # type: ignore[union-attr]
            raise ValueError(f"{model!r} has one feature 'layer' 0; got layers={layers!r}. Omit --layers.")
        return (0,)
    if layers is None:
        return ()
    if isinstance(layers, str):
        if layers == "all":
            return tuple(range(n_layers + 1))
        try:
            layers = [int(part) for part in layers.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"layers={layers!r}; expected 'all' or a comma-separated list like '1,6,12'.") from None
    chosen = sorted({int(k) for k in layers})
    bad = [k for k in chosen if not 0 <= k <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range for {model!r}; expected integers in 0..{n_layers} "
                         "(0 = transformer input, k = output of block k).")
    return tuple(chosen)


def _equal_length_batches(lengths: Sequence[int], *, max_samples: int) -> list[list[int]]:
    """Consecutive positions with identical length, each group at most `max_samples` in total."""
    batches: list[list[int]] = []
    for pos, n in enumerate(lengths):
        if batches and lengths[batches[-1][0]] == n and (len(batches[-1]) + 1) * n <= max_samples:
            batches[-1].append(pos)
        else:
            batches.append([pos])
    return batches


def extract_features(
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
    stream: StreamFeatures | None = None,
) -> FeatureCache:
    """Extract hidden states of every utterance of a prepared corpus into a cache folder.

    Args:
        corpus_dir: prepared corpus folder (utterances.csv + manifest.json).
        model: FM registry name (``edge_ser.fm.list_models()``) or ``"mfbf0"``.
        out: cache folder to create (or resume).
        layers: which hidden_states indices get frame-level storage: None = none (only the
            pooled means of all layers, enough for saliency), ``"all"``, a list of ints or
            ``"1,6"``. MFBF0 always stores its one layer 0.
        weights: weights folder/file for the FM (see edge_ser.fm); None = the model's default.
        random_init: use random weights (tests, size/latency studies).
        seed: random-init seed.
        batch_seconds: most audio (s) per batch of equal-length utterances.
        shard_utterances: utterances per shard file.
        resume: reuse finished shards of an interrupted run with the same settings
            (and return an already finished identical cache as is); False discards an
            unfinished extraction and starts over.
        on_shard: called as ``on_shard(shard, n_shards)`` after each shard is saved.
        show_progress: a progress bar (on a terminal) and a throughput line on stderr.
        overwrite: replace a finished cache of other settings (or, without `resume`, of the
            same ones) already in `out`; without it that raises OutputExistsError before any work.
        stream: store the hidden states a cached streaming artifact computes instead (module
            docstring; Whisper only); the manifest records them under ``stream``.

    Returns:
        The opened :class:`FeatureCache`; its manifest records throughput
        (utterances/s, real-time factor = audio seconds / wall seconds).
    """
    from edge_ser.features.sharding import cache_manifest, plan_extraction

    _check_extraction_options(shard_utterances=shard_utterances, batch_seconds=batch_seconds)
    extractor = _Extractor(model, weights=weights, random_init=random_init, seed=seed, stream=stream)
    plan = plan_extraction(corpus_dir=corpus_dir, extractor=extractor, layers=layers, random_init=random_init,
                           seed=seed, shard_utterances=shard_utterances)
    out = Path(out)
    if resume and _holds_plan(out, plan.plan):
        logger.info("%s already holds this extraction; reusing it", out)
        return FeatureCache.open(out)
    writer = FeatureCacheWriter(out, plan=plan.plan, layers_stored=plan.layers_stored, resume=resume,
                                overwrite=overwrite)
    throughput = _extract_pending_shards(writer, extractor, plan, max_samples=max(1, int(batch_seconds * SAMPLE_RATE)),
                                         on_shard=on_shard, show_progress=show_progress)
    manifest = cache_manifest(plan, random_init=random_init, batch_seconds=batch_seconds,
                              shard_utterances=shard_utterances, throughput=dataclasses.asdict(throughput))
    return writer.finalize(table=plan.table, manifest=manifest)


def _check_extraction_options(*, shard_utterances: Any, batch_seconds: Any) -> None:
    """Returns nothing; raises ValueError for a shard size or batch length that is not positive."""
    if (isinstance(shard_utterances, bool) or not isinstance(shard_utterances, (int, np.integer))
            or shard_utterances < 1):
        raise ValueError(f"shard_utterances={shard_utterances!r}; expected a positive integer such as 256.")
    if not (isinstance(batch_seconds, (int, float)) and math.isfinite(batch_seconds) and batch_seconds > 0):
        raise ValueError(f"batch_seconds={batch_seconds!r}; expected a positive, finite number of seconds such as 60.")


def _holds_plan(out: Path, plan: dict[str, Any]) -> bool:
    """Whether ``out`` already holds a finished cache whose manifest records this plan."""
    if not (out / MANIFEST_FILE).is_file():
        return False
    try:
        existing = read_json(out / MANIFEST_FILE)
    except json.JSONDecodeError:
        existing = {}
    return existing.get("plan") == plan


def _extract_pending_shards(
    writer: FeatureCacheWriter, extractor: _Extractor, plan: ExtractionPlan, *, max_samples: int,
    on_shard: Callable[[int, int], None] | None, show_progress: bool,
) -> ExtractionThroughput:
    """The throughput of computing (:func:`~edge_ser.features.sharding.compute_shard`, as a Ray
    worker does) and writing every shard the writer has not finished yet."""
    from edge_ser.features.sharding import compute_shard

    model, shards = extractor.name, plan.shards
    resumed = len(writer.finished_shards)
    threads = torch.get_num_threads()
    todo_utts = sum(len(shards[s]) for s in range(len(shards)) if not writer.is_done(s))
    bar = progress_bar(total=todo_utts, desc=f"extracting {model}", unit="utt", enabled=show_progress, leave=False)
    computed_utts, audio_s, wall_s, computed_shards = 0, 0.0, 0.0, 0
    for shard, rows in enumerate(shards):
        if writer.is_done(shard):
            continue
        start = time.perf_counter()
        result = compute_shard(extractor, shard=shard, utt_ids=[plan.utt_ids[i] for i in rows],
                               audio_paths=[plan.audio_paths[i] for i in rows], layers_stored=plan.layers_stored,
                               max_samples=max_samples, on_batch=bar.update)
        writer.write_shard(shard=shard, utt_ids=list(result.utt_ids), frames=result.frames_per_utterance(),
                           pooled=result.pooled, n_clipped=result.n_clipped)
        wall_s += time.perf_counter() - start
        audio_s += result.audio_s
        computed_utts += len(rows)
        computed_shards += 1
        if on_shard is not None:
            on_shard(shard, len(shards))
    bar.close()

    throughput = ExtractionThroughput(
        utterances=computed_utts, audio_s=round(audio_s, 3), wall_s=round(wall_s, 3),
        utterances_per_s=round(computed_utts / wall_s, 3) if wall_s > 0 else None,
        realtime_factor=round(audio_s / wall_s, 3) if wall_s > 0 else None,
        threads=threads, shards_computed=computed_shards, shards_resumed=resumed,
    )
    if show_progress and wall_s > 0:
        print(f"{model}: {computed_utts} utterances ({audio_s:.1f} s of audio) in {wall_s:.1f} s: "
              f"{throughput.utterances_per_s:.2f} utt/s, {throughput.realtime_factor:.1f}x real time "
              f"({threads} threads)", file=sys.stderr)
    return throughput


def _store_utterance_states(states: Sequence[torch.Tensor], b: int, t: int, *, row: int, pooled: np.ndarray,
                            frames: dict[int, Any], layers_stored: Sequence[int]) -> int:
    """Write batch item ``b``'s first ``t`` frames into ``pooled[row]`` (mean of every state) and
    ``frames[k][row]`` (float16, each stored layer); returns how many values were clipped to the
    float16 range (they would have become inf)."""
    for k in range(len(states)):
        pooled[row, k] = states[k][b, :t].float().mean(dim=0).numpy()
    clipped = 0
    for k in layers_stored:
        values = states[k][b, :t].float().numpy()
        over = np.abs(values) > FLOAT16_MAX
        if over.any():
            clipped += int(over.sum())
            values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)
        frames[k][row] = values.astype(np.float16)
    return clipped


__all__ = ["MFBF0_MODEL", "ExtractionThroughput", "StreamFeatures", "available_models", "extract_features"]

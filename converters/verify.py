"""`verify_artifact`: run a converted artifact and its PyTorch reference on the same audio.

The reference is rebuilt from the training run with the front end, layer and window the
artifact's manifest records (its ``source`` block and ``window_samples``), so what is
compared is exactly "the graph that was converted" against "the graph it came from".
Both see identical samples: every utterance goes through the runtime's own input
handling (:meth:`edge_ser.runtime.EmotionModel.prepare`, ``windows`` and window fitting),
each window is run through both, and window outputs are averaged per utterance with the
runtime's weights (real samples per window), so the comparison is at the level an app sees.

Reports (:class:`edge_ser.runtime.parity.ParityReport`, tolerances as the artifact's target
declares them for its precision, :mod:`edge_ser.runtime.targets`):

- ``"artifact vs PyTorch reference"``: always first; its pass/fail is the verdict;
- for int8 artifacts whose arithmetic depends on the CPU (ONNX int8): the artifact as each
  other CPU class's int8 kernels compute it (``"artifact with <path> int8 accumulation
  (emulated) vs PyTorch reference"``, :mod:`edge_ser.converters.int8_emulation`); these count
  towards the verdict, since a user's device may be any of them;
- with ``baseline`` (an fp32 artifact of the same run and window):
  ``"artifact vs fp32 artifact"`` (quantization error, the artifact's tolerance) and
  ``"fp32 artifact vs PyTorch reference"`` (conversion error, the fp32 tolerance of the
  baseline's target).

A **streaming** artifact (``edge-ser convert --stream-hop``) is verified the way an app runs it:
each clip is pushed through :meth:`edge_ser.runtime.EmotionModel.stream` from the initial state
and flushed (the last partial hop zero-padded), at most one segment of it (the first
``max_segment_hops`` hops: no segment reset inside a clip). The reference is what the stream
must return over the same samples, computed without streaming
(:func:`edge_ser.converters.streaming.offline_stream_reference`: the run's foundation model and
its training head over every frame so far). The first report compares each utterance's final
estimate (the one that pools the whole clip, and the one scored against the labels); a second,
:data:`STREAM_HOPS_COMPARISON`, compares every hop's estimate, the timeline an app shows. Both
decide the verdict.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_ser.cpu_features import cpu_features
from edge_ser.errors import CorpusError, ManifestError
from edge_ser.progress import progress_bar
from edge_ser.runtime.artifact import OUTPUT_NAMES
from edge_ser.runtime.parity import ParityReport, compare
from edge_ser.train.runs import RunInfo, read_run_info

__all__ = ["VerifyResult", "verify_artifact", "verify_robustness", "robustness_table", "REFERENCE_COMPARISON",
           "QUANTIZATION_COMPARISON", "CONVERSION_COMPARISON", "STREAM_HOPS_COMPARISON"]

REFERENCE_COMPARISON = "artifact vs PyTorch reference"
QUANTIZATION_COMPARISON = "artifact vs fp32 artifact"
CONVERSION_COMPARISON = "fp32 artifact vs PyTorch reference"
KERNEL_PATH_COMPARISON_PREFIX = "artifact with "
STREAM_HOPS_COMPARISON = "streamed artifact vs offline computation, every hop"


def kernel_path_comparison(path: str) -> str:
    return f"{KERNEL_PATH_COMPARISON_PREFIX}{path} int8 accumulation (emulated) vs PyTorch reference"

Outputs = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_artifact` measured.

    ``reports[0]`` is the artifact-vs-reference report (the verdict); with a baseline,
    ``reports[1]`` is the quantization and ``reports[2]`` the conversion comparison.
    ``n_windows``: model calls per candidate: windows (>= ``n_utterances``; long clips span several),
    or hops for a streaming artifact (``hop_s`` set).
    """

    artifact: str
    run: str
    corpus: str
    split: str
    n_utterances: int
    n_windows: int
    reports: tuple[ParityReport, ...]
    baseline: str | None = None
    wall_s: float = 0.0
    cpu: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """:func:`edge_ser.cpu_features.cpu_features` of the machine that verified."""
    fold: int | None = None
    """The run's held-out fold when it is a k-fold run: ``split`` is then that fold's assignment."""
    hop_s: float | None = None
    """A streaming artifact's hop (each clip streamed hop by hop); None for a windowed artifact."""

    @property
    def verdict(self) -> ParityReport:
        """The failing deciding report if any (reference comparison, then each kernel path), else the first."""
        return next((r for r in self._deciding() if not r.passed), self.reports[0])

    def _deciding(self) -> list[ParityReport]:
        return [r for r in self.reports if r.comparison.split(" [")[0] == REFERENCE_COMPARISON
                or r.comparison.startswith((STREAM_HOPS_COMPARISON, KERNEL_PATH_COMPARISON_PREFIX))]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self._deciding())

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact, "baseline": self.baseline, "run": self.run, "corpus": self.corpus,
            "split": self.split, "fold": self.fold, "n_utterances": self.n_utterances, "n_windows": self.n_windows,
            "hop_s": self.hop_s, "passed": self.passed, "wall_s": self.wall_s, "cpu": dict(self.cpu),
            "reports": [r.to_dict() for r in self.reports],
        }


def _reference_model(*, run_dir: Path, source: Mapping[str, Any], window_samples: int) -> Any:
    """The eager fused model of the run, cut and windowed as the artifact's manifest says."""
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.labels import SAMPLE_RATE

    # The reference is the trained module itself (nn.GRU), not an export variant of it.
    fused = build_fused_model(run_dir=run_dir, window_s=window_samples / SAMPLE_RATE)
    rebuilt = fused.source
    for key in ("feature_model", "layer"):
        if key in source and source[key] is not None and str(rebuilt.get(key)) != str(source[key]):
            raise ManifestError(
                f"the artifact records {key}={source[key]!r}, but run {run_dir} rebuilds {key}={rebuilt.get(key)!r}; "
                "expected the run the artifact was converted from. Re-convert the run."
            )
    if fused.window_samples != int(window_samples):
        raise ManifestError(
            f"the reference window is {fused.window_samples} samples, the artifact's {window_samples}; "
            "expected a window that is a whole number of samples at 16 kHz. Re-convert with --window-s."
        )
    # build_fused_model checked the rebuilt weights against the run's feature cache; the artifact's
    # recorded weights must be those too (same rule, read from the artifact's manifest).
    got = (rebuilt.get("weights_source") or {}).get("sha256") if isinstance(rebuilt.get("weights_source"), dict) else None
    RunInfo.check_foundation_weights({"model": source.get("feature_model"), "weights_source": source.get("weights_source")},
                                     got, loaded_from=f"the reference rebuilt from run {run_dir}",
                                     recorded_by="the artifact was converted")
    return fused.eval()


def _torch_runner(fused: Any) -> Callable[[np.ndarray], Outputs]:
    import torch

    def run(window: np.ndarray) -> Outputs:
        with torch.no_grad():
            outputs = fused(torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).reshape(1, -1))
        return {name: out.numpy().astype(np.float32) for name, out in zip(OUTPUT_NAMES, outputs)}

    return run


def _select_rows(corpus: Any, *, split: str, max_utterances: int, seed: int, run: RunInfo) -> tuple[Any, str]:
    table = run.splits_as_trained(corpus)  # a k-fold run: its own fold's test speakers, not fold 0's
    rows = table[table["split"] == split]
    used = split
    if len(rows) == 0:
        rows, used = table, "all"
    if len(rows) == 0:
        raise CorpusError(f"corpus {corpus.root} has no utterances; expected a prepared corpus with audio rows.")
    if len(rows) > max_utterances:
        # A seeded sample rather than the first rows: the first rows are often one speaker.
        rows = rows.sample(n=max_utterances, random_state=seed).sort_index()
    return rows, used


def verify_artifact(
    *,
    artifact: str | os.PathLike,
    run_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    max_utterances: int = 200,
    split: str = "test",
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
    kernel_paths: bool = True,
    condition: str | None = None,
) -> VerifyResult:
    """Compare an artifact with the PyTorch reference of ``run_dir`` on a corpus split.

    Args:
        artifact: artifact folder (``manifest.json`` + model file); its sha256s are checked.
        run_dir: the training run it was converted from (``model.safetensors`` sha256 must
            match the manifest's ``source.run_sha256``, else :class:`ManifestError`).
        corpus_dir: a prepared corpus folder; ``split`` rows are used (all rows when the split
            is empty), at most ``max_utterances`` (a seeded sample when there are more).
        baseline: optional fp32 artifact of the same run and window: adds the quantization and
            conversion comparisons.
        threads: intra-op threads of the artifact runtimes (default: torch's setting).
        condition: a recording condition applied to every clip first (``gain+20dB``,
            ``telephone``; :mod:`edge_ser.data.conditions`), so an artifact is checked on the
            audio a user would give it; reference and artifact see the same transformed audio.
        kernel_paths: also run the artifact as other CPUs' int8 kernels compute it, where the
            target's int8 arithmetic depends on the CPU (ONNX int8); slower (int32 emulation).

    Returns a :class:`VerifyResult`; it does not raise on a parity breach (the caller decides:
    ``edge_ser.runtime.parity.check(result.verdict)`` raises ``ParityError``).
    """
    from edge_ser.data.table import load_corpus
    from edge_ser.runtime import load

    if int(max_utterances) < 1:
        raise ValueError(f"max_utterances={max_utterances}; expected a positive number of utterances (e.g. 200).")
    start = time.perf_counter()
    artifact, run_dir = Path(artifact), Path(run_dir)
    model = load(artifact, threads=threads)
    run = read_run_info(run_dir)
    source = dict(model.manifest.raw.get("source") or {})
    run.check_artifact(source, artifact=model.manifest.root, role="artifact")
    base_model = None if baseline is None else _load_baseline(Path(baseline), model, run, threads=threads)

    fused = _reference_model(run_dir=run_dir, source=source, window_samples=model.window_samples)
    transform = _condition_transform(condition)
    corpus = load_corpus(corpus_dir)
    rows, used_split = _select_rows(corpus, split=split, max_utterances=int(max_utterances), seed=seed, run=run)
    task_inputs = _task_inputs(rows, model.manifest.labels)
    if model.manifest.streaming is None:
        candidates = _candidates(model, _torch_runner(fused), base_model, kernel_paths=kernel_paths, threads=threads)
        outputs, n_windows = _run_candidates(model, candidates, corpus, rows, transform=transform, progress=progress)
        reports = _parity_reports(model, base_model, outputs, task_inputs)
    else:
        streams = _stream_candidates(model, fused, base_model, kernel_paths=kernel_paths, threads=threads)
        hops = _run_stream_candidates(model, streams, corpus, rows, transform=transform, progress=progress)
        finals = {name: {o: np.stack([clip[-1][o] for clip in clips]) for o in OUTPUT_NAMES}
                  for name, clips in hops.items()}
        reports = _parity_reports(model, base_model, finals, task_inputs)
        every = {name: {o: np.concatenate([np.stack([h[o] for h in clip]) for clip in clips]) for o in OUTPUT_NAMES}
                 for name, clips in hops.items()}
        n_windows = len(every["artifact"]["probs"])
        reports.insert(1, compare(every["reference"], every["artifact"], target=model.manifest.target,
                                  precision=model.manifest.precision,
                                  comparison=f"{STREAM_HOPS_COMPARISON} ({n_windows} hops in {len(rows)} streams)"))
    if condition is not None:
        reports = [dataclasses.replace(r, comparison=f"{r.comparison} [{condition}]") for r in reports]
    return VerifyResult(
        artifact=str(artifact), run=str(run_dir), corpus=str(Path(corpus_dir)), split=used_split,
        n_utterances=len(rows), n_windows=n_windows, reports=tuple(reports),
        baseline=None if baseline is None else str(baseline), wall_s=round(time.perf_counter() - start, 3),
        cpu=cpu_features().to_dict(), fold=run.fold,
        hop_s=None if model.manifest.streaming is None else model.manifest.hop_samples / model.sample_rate,
    )


def _load_baseline(baseline: Path, model: Any, run: RunInfo, *, threads: int | None) -> Any:
    """The fp32 baseline artifact, loaded, after checking it is fp32, has the artifact's window and
    comes from the same run."""
    from edge_ser.runtime import load

    base_model = load(baseline, threads=threads)
    bm = base_model.manifest
    if bm.precision != "fp32":
        raise ValueError(
            f"baseline {bm.root} has precision {bm.precision!r}; expected an fp32 artifact (quantization error is "
            "measured against float). Convert the run with --precision fp32 and pass that folder."
        )
    kind, base_kind = _artifact_kind(model.manifest), _artifact_kind(bm)
    if kind != base_kind:
        raise ValueError(
            f"baseline {bm.root} is {base_kind}, the artifact {kind}; expected the same kind. Convert the baseline "
            "with the artifact's --stream-hop and --stream-fm (or neither).")
    if bm.window_samples != model.window_samples or bm.sample_rate != model.sample_rate:
        raise ValueError(
            f"baseline {bm.root} takes {bm.window_samples} samples at {bm.sample_rate} Hz, the artifact "
            f"{model.window_samples} at {model.sample_rate} Hz; expected the same window. Convert the baseline "
            "with the same --window-s."
        )
    run.check_artifact(dict(bm.raw.get("source") or {}), artifact=bm.root, role="baseline")
    return base_model


def _artifact_kind(manifest: Any) -> str:
    """``windowed``, or ``streaming (hop H samples, fm_mode M)``: what a baseline must match."""
    block = manifest.streaming
    if block is None:
        return "windowed"
    return f"streaming (hop {block['hop_samples']} samples, fm_mode {block.get('fm_mode', 'window')!r})"


def _candidates(model: Any, reference: Callable[[np.ndarray], Outputs], base_model: Any, *, kernel_paths: bool,
                threads: int | None) -> dict[str, Callable[[np.ndarray], Outputs]]:
    """Name -> window runner: ``reference``, ``artifact``, ``baseline`` (if any), then one per
    emulated int8 kernel path where the artifact's target has them."""
    candidates: dict[str, Callable[[np.ndarray], Outputs]] = {"reference": reference, "artifact": model.run_window}
    if base_model is not None:
        candidates["baseline"] = base_model.run_window
    if kernel_paths:
        from edge_ser.converters.backends import get_backend

        backend = get_backend(model.manifest.target)
        emulated = backend.kernel_path_runners(model.manifest.root,
                                               precision=backend.precision(model.manifest.precision),
                                               num_threads=threads or 1)
        for path, runner in emulated.items():
            candidates[path] = lambda w, run=runner.run: run(np.asarray(w, dtype=np.float32).reshape(1, -1))
    return candidates


StreamRunner = Callable[[np.ndarray], list[Outputs]]
"""A streaming candidate: one clip (mono, the artifact's rate, whole hops) -> each hop's outputs."""


def _stream_candidates(model: Any, fused: Any, base_model: Any, *, kernel_paths: bool,
                       threads: int | None) -> dict[str, StreamRunner]:
    """Name -> clip streamer for a streaming artifact: ``reference`` (the offline computation over
    the same samples), ``artifact`` and ``baseline`` through :meth:`EmotionModel.stream` (the app's
    state loop), then one per emulated int8 kernel path (its runner in the same loop)."""
    from edge_ser.converters.streaming import offline_stream_reference, stream_outputs

    block = model.manifest.streaming
    hop, fm_mode = int(block["hop_samples"]), block.get("fm_mode", "window")

    def reference(clip: np.ndarray) -> list[Outputs]:
        return [dict(zip(OUTPUT_NAMES, out)) for out in
                offline_stream_reference(fused, clip, hop_samples=hop, fm_mode=fm_mode)]

    candidates: dict[str, StreamRunner] = {"reference": reference, "artifact": lambda clip: _app_stream(model, clip)}
    if base_model is not None:
        candidates["baseline"] = lambda clip: _app_stream(base_model, clip)
    if kernel_paths:
        from edge_ser.converters.backends import get_backend

        backend = get_backend(model.manifest.target)
        emulated = backend.kernel_path_runners(model.manifest.root,
                                               precision=backend.precision(model.manifest.precision),
                                               num_threads=threads or 1)
        initial = [np.zeros(state["shape"], np.float32) for state in block["state"]]
        for path, runner in emulated.items():
            candidates[path] = lambda clip, run_all=runner.run_all: [
                dict(zip(OUTPUT_NAMES, out)) for out in stream_outputs(run_all, clip, initial_state=initial,
                                                                       hop_samples=hop)]
    return candidates


def _app_stream(model: Any, clip: np.ndarray) -> list[Outputs]:
    """``clip`` pushed through ``model.stream()`` and flushed: each hop's outputs as arrays."""
    stream = model.stream()
    points = stream.push(clip) + stream.flush()
    return [{"probs": np.array([p.prediction.probabilities[name] for name in model.manifest.labels], np.float32),
             "avd": np.array([p.prediction.arousal, p.prediction.valence, p.prediction.dominance], np.float32),
             "embedding": p.prediction.embedding} for p in points]


def _run_stream_candidates(model: Any, candidates: Mapping[str, StreamRunner], corpus: Any, rows: Any, *,
                           transform: Callable[[np.ndarray], np.ndarray] | None,
                           progress: bool) -> dict[str, list[list[Outputs]]]:
    """Every row's clip through the runtime's input handling, cut to one segment and zero-padded to
    whole hops (what :meth:`EmotionStream.flush` runs), then streamed by every candidate.
    Returns ``{candidate: [each clip's hop outputs]}``."""
    from edge_ser.audio import load_audio
    from edge_ser.fm.stream import pad_to_whole_hops

    block = model.manifest.streaming
    hop = int(block["hop_samples"])
    max_hops = block.get("max_segment_hops")
    collected: dict[str, list[list[Outputs]]] = {name: [] for name in candidates}
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc="streaming", unit="utt", enabled=progress,
                               leave=False):
        wave = load_audio(corpus.audio_path(row.to_dict()))
        clip = model.prepare(wave if transform is None else transform(wave), model.sample_rate)
        if max_hops is not None:
            clip = clip[: int(max_hops) * hop]
        clip = pad_to_whole_hops(clip, hop)
        n_hops = len(clip) // hop
        for name, run in candidates.items():
            hops = run(clip)
            if len(hops) != n_hops:
                raise RuntimeError(f"candidate {name!r} returned {len(hops)} hops for a clip of {n_hops}; expected "
                                   "one output per hop.")
            collected[name].append([{o: np.asarray(h[o], dtype=np.float64).reshape(-1) for o in OUTPUT_NAMES}
                                    for h in hops])
    return collected


def _condition_transform(condition: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The recording condition as a waveform -> waveform function, or None for clean audio."""
    if condition is None:
        return None
    from edge_ser.data.conditions import apply_condition, parse_condition

    parsed = parse_condition(condition)
    return lambda wave: apply_condition(wave, parsed)[0]


def _run_candidates(model: Any, candidates: Mapping[str, Callable[[np.ndarray], Outputs]], corpus: Any, rows: Any,
                    *, transform: Callable[[np.ndarray], np.ndarray] | None,
                    progress: bool) -> tuple[dict[str, Outputs], int]:
    """Every row's clip through the runtime's input handling and windows, each window through every
    candidate, window outputs merged per utterance as :meth:`EmotionModel.predict` merges them.
    Returns ``({candidate: {output: (n_utterances, size)}}, windows run per candidate)``."""
    from edge_ser.audio import load_audio

    collected: dict[str, dict[str, list[np.ndarray]]] = {k: {o: [] for o in OUTPUT_NAMES} for k in candidates}
    n_windows = 0
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc="verifying", unit="utt", enabled=progress,
                               leave=False):
        wave = load_audio(corpus.audio_path(row.to_dict()))
        clip = model.prepare(wave if transform is None else transform(wave), model.sample_rate)
        spans = model.windows(clip)
        windows = [model.fit_window(clip[s:e]) for s, e in spans]
        # Same merge as EmotionModel.predict: weights = real samples per window.
        weights = np.array([e - s for s, e in spans], dtype=np.float64)
        weights /= weights.sum()
        n_windows += len(windows)
        for name, run in candidates.items():
            outs = [run(w) for w in windows]
            for o in OUTPUT_NAMES:
                merged = sum(wt * np.asarray(out[o], dtype=np.float64).reshape(-1) for wt, out in zip(weights, outs))
                collected[name][o].append(merged)
    return {name: {o: np.stack(v) for o, v in outs.items()} for name, outs in collected.items()}, n_windows


def _task_inputs(rows: Any, labels: Sequence[str]) -> dict[str, Any]:
    """The task-level parity inputs of ``rows`` (:func:`edge_ser.runtime.parity.compare`'s
    ``label_idx``, ``dims``, ``score_classes``): reference labels in the artifact's ``labels``,
    A/V/D targets where the corpus has them, and the classes present."""
    from edge_ser.labels import DIMENSIONS

    label_idx = reference_label_indices(rows, labels)
    dims = None
    if all(d in rows.columns for d in DIMENSIONS):
        dims = rows.loc[:, list(DIMENSIONS)].to_numpy(dtype=np.float64)
        if not np.isfinite(dims).any():
            dims = None
    present = sorted(int(c) for c in set(label_idx.tolist()) if c >= 0)
    return {"label_idx": label_idx if present else None, "dims": dims, "score_classes": present or None}


def _parity_reports(model: Any, base_model: Any, outputs: Mapping[str, Outputs],
                    task_kwargs: Mapping[str, Any]) -> list[ParityReport]:
    """The reports of :class:`VerifyResult`, in its order: artifact vs reference, then with a
    baseline the quantization and conversion comparisons, then each emulated kernel path."""
    m = model.manifest
    reports = [compare(outputs["reference"], outputs["artifact"], target=m.target, precision=m.precision,
                       comparison=REFERENCE_COMPARISON, **task_kwargs)]
    if base_model is not None:
        bm = base_model.manifest
        reports.append(compare(outputs["baseline"], outputs["artifact"], target=m.target, precision=m.precision,
                               comparison=QUANTIZATION_COMPARISON, **task_kwargs))
        reports.append(compare(outputs["reference"], outputs["baseline"], target=bm.target, precision="fp32",
                               comparison=CONVERSION_COMPARISON, **task_kwargs))
    for path in (name for name in outputs if name not in ("reference", "artifact", "baseline")):
        reports.append(compare(outputs["reference"], outputs[path], target=m.target, precision=m.precision,
                               comparison=kernel_path_comparison(path), **task_kwargs))
    return reports


CLEAN = "clean"


def verify_robustness(
    *,
    artifact: str | os.PathLike,
    run_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    conditions: Sequence[str] | None = None,
    noisy_dirs: Sequence[str | os.PathLike] = (),
    max_utterances: int = 200,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, VerifyResult]:
    """The artifact (and its PyTorch reference) under each recording condition: ``clean``, the
    standard gain sweep and telephone band by default (:data:`edge_ser.data.conditions.STANDARD_CONDITIONS`),
    plus any noisy corpus copies in ``noisy_dirs`` (``edge-ser data noisy``, named by SNR).
    Returns ``{condition: VerifyResult}`` in sweep order; :func:`robustness_table` tabulates it."""
    from edge_ser.data.conditions import STANDARD_CONDITIONS
    from edge_ser.data.table import load_corpus

    names = [CLEAN, *STANDARD_CONDITIONS] if conditions is None else list(conditions)
    results: dict[str, VerifyResult] = {}
    for name in names:
        results[name] = verify_artifact(
            artifact=artifact, run_dir=run_dir, corpus_dir=corpus_dir, max_utterances=max_utterances,
            threads=threads, progress=progress, kernel_paths=False, condition=None if name == CLEAN else name)
    for folder in noisy_dirs:
        noisy = load_corpus(folder).manifest.get("noisy") or {}
        name = f"snr{float(noisy['snr_db']):g}dB" if noisy.get("snr_db") is not None else Path(folder).name
        results[name] = verify_artifact(artifact=artifact, run_dir=run_dir, corpus_dir=folder,
                                        max_utterances=max_utterances, threads=threads, progress=progress,
                                        kernel_paths=False)
    return results


def robustness_table(results: Mapping[str, VerifyResult]) -> str:
    """Markdown: per condition, UAR of the reference and of the artifact (change vs clean),
    top-1 agreement and the parity verdict."""
    clean = results.get(CLEAN)
    base = None if clean is None else clean.reports[0].task.uar_candidate
    lines = ["| condition | n | UAR reference | UAR artifact | vs clean (points) | top-1 agreement | parity |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        task = result.reports[0].task
        ref = "–" if task.uar_reference is None else f"{100 * task.uar_reference:.1f}"
        art = "–" if task.uar_candidate is None else f"{100 * task.uar_candidate:.1f}"
        delta = ("–" if base is None or task.uar_candidate is None or name == CLEAN
                 else f"{100 * (task.uar_candidate - base):+.1f}")
        lines.append(f"| {name} | {result.n_utterances} | {ref} | {art} | {delta} | {task.top1_agreement:.3f} | "
                     f"{'pass' if result.passed else 'FAIL'} |")
    return "\n".join(lines)


def reference_label_indices(rows: Any, labels: Sequence[str]) -> np.ndarray:
    """(n,) index of each row's reference label in the artifact's ``labels``, -1 where none.

    An artifact over the paper's 9 categories reads the corpus's mapped ``label`` column; one
    trained on a corpus vocabulary (``--labels corpus``) reads the corpus's own ``source_label``.
    """
    from edge_ser.labels import CATEGORIES

    column = "label" if tuple(labels) == CATEGORIES else "source_label"
    values = rows[column].tolist() if column in rows.columns else [None] * len(rows)
    position = {name: i for i, name in enumerate(labels)}
    return np.array([position.get(v.strip(), -1) if isinstance(v, str) else -1 for v in values], dtype=np.int64)

"""One conversion flow for every target: truncate -> fuse -> (quantize) -> lower -> validate -> save.

Truncation and fusion happen in :func:`edge_ser.converters.fused.build_fused_model`;
:func:`convert` takes the fused model and does the rest, with the target's backend only
lowering (and, where it cannot run here, verifying structurally). The artifact folder is
built in a temporary folder next to ``out`` and renamed into place only when it is complete
and its parity check passed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from edge_ser.progress import progress_bar

from edge_ser.converters.backends import Backend, Lowered, PrecisionSpec, Runner, get_backend
from edge_ser.converters.backend_base import DEFAULT_IO_NAMES, IONames
from edge_ser.converters.fused import OUTPUT_NAMES, FusedSER, build_fused_model, fit_to_window
from edge_ser.converters.streaming import (
    StreamingSER,
    build_streaming_model,
    offline_stream_reference,
    stream_outputs,
    streaming_calibration_inputs,
)
from edge_ser.labels import SAMPLE_RATE
from edge_ser.runtime.artifact import stream_io_names, stream_states
from edge_ser.converters.manifest import PARITY_FILE, build_manifest, tensor_specs, write_manifest
from edge_ser.converters.quantize import calibration_set, calibration_tensors
from edge_ser.cpu_features import cpu_features
from edge_ser.errors import CorpusError, ManifestError
from edge_ser.runtime.parity import ParityError, ParityReport, compare
from edge_ser.train.runs import read_run_info
from edge_ser.io import write_json_atomic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` produced: the artifact folder and its manifest."""

    out: Path
    target: str
    precision: str
    size_bytes: int
    manifest: Mapping[str, Any]
    parity: Mapping[str, Any]
    timings_s: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "target": self.target, "precision": self.precision,
                "size_bytes": self.size_bytes, "parity": dict(self.parity), "timings_s": dict(self.timings_s)}


# ---------------------------------------------------------------------------------------
# validate


def validate(
    artifact_runner: Runner | Callable[[np.ndarray], Sequence[np.ndarray]],
    reference_module: torch.nn.Module,
    waveforms: Sequence[torch.Tensor | np.ndarray],
    *,
    target: str,
    precision: str,
    comparison: str = "artifact vs PyTorch reference (conversion check)",
) -> ParityReport:
    """Run the artifact and the eager model on the same ``(1, S)`` waveforms and compare them
    with the runtime's parity check (:func:`edge_ser.runtime.parity.compare`, the tolerance the
    target declares for the precision, :mod:`edge_ser.runtime.targets`). Returns the report; does not raise."""
    reference: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
    candidate: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
    reference_module.eval()
    for wave in progress_bar(waveforms, desc="validating", unit="utt", leave=False):
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1)
        with torch.no_grad():
            ref = [t.numpy() for t in reference_module(x)]
        out = artifact_runner(x.numpy())
        out = [out[name] for name in OUTPUT_NAMES] if isinstance(out, Mapping) else list(out)
        for name, r, o in zip(OUTPUT_NAMES, ref, out):
            reference[name].append(np.asarray(r, dtype=np.float64).reshape(-1))
            candidate[name].append(np.asarray(o, dtype=np.float64).reshape(-1))
    return compare({k: np.stack(v) for k, v in reference.items()}, {k: np.stack(v) for k, v in candidate.items()},
                   target=target, precision=precision, comparison=comparison)


def convert(
    *,
    fused: FusedSER,
    target: str,
    precision: str,
    out: str | os.PathLike,
    calibration_waveforms: Sequence[np.ndarray | torch.Tensor],
    validation_waveforms: Sequence[np.ndarray | torch.Tensor],
    source_info: Mapping[str, Any],
    overwrite: bool = False,
    num_threads: int = 1,
    hop_s: float | None = None,
    fm_mode: str = "auto",
) -> ConversionResult:
    """Quantize (if the precision calls for it), lower, validate and save one artifact folder.

    ``hop_s``: write the streaming variant instead (:mod:`edge_ser.converters.streaming`): one hop
    of ``hop_s`` seconds per call with the state carried between calls, the window as the FM's
    context. Its parity check streams each validation clip from the initial state (one segment each),
    through the artifact and compares every hop's estimate with the offline computation over the
    same samples. ``fm_mode`` (streaming only): ``"window"`` (the FM reruns the whole window every
    hop), ``"cached"`` (the FM runs on the hop's frames with a key/value cache; Whisper) or
    ``"auto"`` (the default: cached for Whisper, window for the others), see docs/streaming.md.

    ``calibration_waveforms``: real utterances from the run's training split, each one window
    (``fused.window_samples``) long; used only by calibrated precisions (ExecuTorch int8).
    ``validation_waveforms``: held-out utterances, one window each, for the parity check.
    ``source_info``: the manifest's ``source`` block (run, run_sha256, feature_model, layer,
    n_layers_full, weights_source) plus optional ``calibration`` {split, corpus}.

    Raises ``FileExistsError`` if ``out`` exists and not ``overwrite``, ``ValueError`` for an
    unknown target/precision, :class:`ParityError` when the artifact misses its tolerance
    (nothing is written to ``out`` then).
    """
    backend = get_backend(target)
    spec = backend.precision(precision)
    out = Path(out)
    _refuse_existing(out, overwrite=overwrite)
    _refuse_unoffered_streaming(spec, target=target, hop_s=hop_s)
    _check_fm_mode_option(fm_mode, hop_s=hop_s)
    validation = calibration_tensors(validation_waveforms, window_samples=fused.window_samples)
    if not validation:
        raise ValueError("got no validation waveforms; expected at least one held-out utterance, one window long.")
    calibration = list(calibration_waveforms)
    timings: dict[str, float] = {}
    fused = fused.eval()
    graph = _export_for_target(fused, backend, spec, hop_s=hop_s, fm_mode=fm_mode, calibration=calibration,
                               timings=timings)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_folders(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        start = time.perf_counter()
        lowered = backend.lower(graph.exported, precision=spec, out_dir=tmp, io_names=graph.io_names)
        timings["lower"] = time.perf_counter() - start
        start = time.perf_counter()
        verification = backend.verify(tmp, lowered=lowered, precision=spec)
        parity, report = _check_parity(backend, spec, tmp, fused=fused, graph=graph, validation=validation,
                                       num_threads=num_threads)
        timings["validate"] = time.perf_counter() - start
        write_json_atomic(tmp / PARITY_FILE, {"target": target, "precision": precision, "parity": parity,
                                               "verification": verification, "cpu": cpu_features().to_dict()})
        manifest = _write_artifact_manifest(tmp, backend=backend, spec=spec, fused=fused, graph=graph,
                                            lowered=lowered, parity=parity, verification=verification,
                                            calibration=calibration, source_info=source_info)
        if report is not None and not report.passed:
            raise ParityError(report)
        if not verification.get("passed", True):
            raise ManifestError(
                f"{target}/{precision} artifact failed structural verification (inputs/outputs or dequantized "
                f"weights): {_verification_summary(verification)}. Convert at a higher precision or report a bug."
            )
        _move_into_place(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%d bytes)", out, manifest["size_bytes"])
    return ConversionResult(out=out, target=target, precision=precision, size_bytes=int(manifest["size_bytes"]),
                            manifest=manifest, parity=parity, timings_s={k: round(v, 3) for k, v in timings.items()})


@dataclasses.dataclass(frozen=True)
class _TargetGraph:
    """The fused model as one target exports it: the program to lower, its example inputs and
    outputs (for the manifest's tensor specs), its input/output names, and the streaming form
    (None for a windowed artifact)."""

    exported: Any
    examples: tuple[torch.Tensor, ...]
    example_outputs: Sequence[torch.Tensor]
    io_names: IONames
    streaming: StreamingSER | None


def _export_for_target(fused: FusedSER, backend: Backend, spec: PrecisionSpec, *, hop_s: float | None,
                       fm_mode: str = "auto", calibration: Sequence[Any],
                       timings: dict[str, float]) -> _TargetGraph:
    """The target's GRU form, its quantization step (:meth:`Backend.quantize_before_export`) and
    ``torch.export``; adds the ``quantize`` and ``export`` times to ``timings``."""
    # The target's GRU form (ONNX: nn.GRU; Core ML: per frame; ExecuTorch: scan). Validation
    # compares the artifact with `fused` as given, so a form change is part of the measured error.
    streaming = (build_streaming_model(fused, hop_s=hop_s, gru_form=backend.gru_form, fm_mode=fm_mode)
                 if hop_s is not None else None)
    lowered_model = (fused.with_gru_form(backend.gru_form).with_front_form(backend.whisper_front_form)
                     if streaming is None else streaming)
    examples = (fused.example_input(),) if streaming is None else tuple(streaming.example_inputs())
    io_names = DEFAULT_IO_NAMES if streaming is None else stream_io_names(streaming.fm_mode)
    start = time.perf_counter()
    inputs = calibration_inputs(calibration, window_samples=fused.window_samples,
                                streaming=streaming) if spec.calibrated else []
    module = backend.quantize_before_export(lowered_model, precision=spec, examples=examples,
                                            calibration_inputs=inputs)
    if spec.calibrated:
        timings["quantize"] = time.perf_counter() - start
    with torch.no_grad():
        example_outputs = lowered_model(*examples)
    start = time.perf_counter()
    with torch.no_grad():  # an inference graph: the scan GRU's backward is not traced
        exported = torch.export.export(module, examples, strict=False)
    timings["export"] = time.perf_counter() - start
    return _TargetGraph(exported=exported, examples=examples, example_outputs=example_outputs, io_names=io_names,
                        streaming=streaming)


def calibration_inputs(waveforms: Sequence[np.ndarray | torch.Tensor], *, window_samples: int,
                       streaming: StreamingSER | None = None) -> list[tuple[torch.Tensor, ...]]:
    """What a calibrated precision runs through the prepared graph, one tuple of inputs per call.

    ``waveforms``: real training utterances, one window each (at least
    :data:`~edge_ser.converters.quantize.MIN_CALIBRATION_UTTERANCES`). Windowed model: one call per
    window. Streaming model: the utterances joined into one stream and cut into hops, each hop with
    the states the eager streaming model carries into it
    (:func:`edge_ser.converters.streaming.streaming_calibration_inputs`), so the states' ranges are
    those of a real stream, not of zeros or noise."""
    windows = calibration_set(waveforms, window_samples=window_samples)
    if streaming is None:
        return [(t,) for t in windows]
    return streaming_calibration_inputs(streaming, torch.cat([t.reshape(-1) for t in windows]))


def _check_parity(backend: Backend, spec: PrecisionSpec, artifact_dir: Path, *, fused: FusedSER,
                  graph: _TargetGraph, validation: Sequence[torch.Tensor],
                  num_threads: int) -> tuple[dict[str, Any], ParityReport | None]:
    """Run the lowered artifact with the runtime's runner against ``fused`` (streamed for a streaming
    artifact, under each emulated int8 kernel path where the backend has them). Returns the parity
    record for parity.json and the deciding report, or ``(record, None)`` where this platform cannot
    run the target."""
    target, precision = backend.name, spec.name
    if graph.streaming is not None:
        streaming = graph.streaming
        runner = backend.load_runner(artifact_dir, num_threads=num_threads)
        if runner is not None:
            report = validate_stream(runner.run_all, fused, streaming, validation, target=target,
                                     precision=precision)
            parity = {**report.to_dict(), "ran": True}
            report = _validate_kernel_paths(
                backend, artifact_dir, spec=spec, native=report, parity=parity, num_threads=num_threads,
                check=lambda path_runner, comparison: validate_stream(
                    path_runner.run_all, fused, streaming, validation, target=target, precision=precision,
                    comparison=comparison))
            return parity, report
    else:
        run = backend.runner(artifact_dir, num_threads=num_threads)
        if run is not None:
            report = validate(run, fused, validation, target=target, precision=precision)
            parity = {**report.to_dict(), "ran": True}
            report = _validate_kernel_paths(
                backend, artifact_dir, spec=spec, native=report, parity=parity, num_threads=num_threads,
                check=lambda path_runner, comparison: validate(path_runner.run, fused, validation, target=target,
                                                               precision=precision, comparison=comparison))
            return parity, report
    return {"ran": False, "passed": None,
            "reason": f"{target} artifacts cannot run on {sys.platform}; verified structurally instead"}, None


def _write_artifact_manifest(artifact_dir: Path, *, backend: Backend, spec: PrecisionSpec, fused: FusedSER,
                             graph: _TargetGraph, lowered: Lowered, parity: Mapping[str, Any],
                             verification: Mapping[str, Any], calibration: Sequence[Any],
                             source_info: Mapping[str, Any]) -> dict[str, Any]:
    """Build and write the artifact's manifest.json (:mod:`edge_ser.converters.manifest`); returns it."""
    manifest = build_manifest(
        artifact_dir=artifact_dir, target=backend.name, precision=spec.name, backend=backend.versions(),
        source=_manifest_source(source_info), window_samples=fused.window_samples,
        inputs=tensor_specs(graph.io_names[0], graph.examples),
        outputs=tensor_specs(graph.io_names[1], graph.example_outputs),
        model_files=lowered.files, quantization=_quantization_block(spec, calibration, source_info),
        parity=_parity_summary(parity), delegation=lowered.info.get("delegation"),
        verification=_verification_summary(verification) if verification else None,
        labels=fused.labels or (),
    )
    manifest["backend"]["lowering"] = {k: v for k, v in lowered.info.items() if k != "delegation"}
    # How the graph was written before lowering (same outputs either way; parity measured the form).
    manifest["backend"]["graph_forms"] = {"gru": backend.gru_form, "whisper_front": (
        backend.whisper_front_form if graph.streaming is None else f"streaming-{graph.streaming.fm_mode}")}
    manifest["converted_on"] = cpu_features().to_dict()
    if graph.streaming is not None:
        manifest["streaming"] = streaming_manifest_block(graph.streaming)
    write_manifest(artifact_dir, manifest)
    return manifest


def validate_stream(
    run_all: Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]],
    fused: FusedSER,
    streaming: StreamingSER,
    waveforms: Sequence[torch.Tensor | np.ndarray],
    *,
    target: str,
    precision: str,
    comparison: str | None = None,
) -> ParityReport:
    """Stream each of ``waveforms`` from the initial state through a streaming artifact (``run_all``:
    its runner's, every input -> every output, the state fed back each hop) and compare every hop's
    outputs with :func:`edge_ser.converters.streaming.offline_stream_reference` (the same samples, no
    streaming, the training head over the clip's frames). Same tolerance table as :func:`validate`.

    One stream per clip, not the clips joined: the reference reruns the head over every frame since
    the stream's start at each hop, so its cost grows with the square of a stream's length (240
    validation windows joined would be 1,440 hops of 0.5 s and hours of reference); per clip it is
    linear in the number of clips, and every hop is still compared with the state carried in."""
    hop = streaming.hop_samples
    longest = max((len(np.asarray(w).reshape(-1)) for w in waveforms), default=0)
    if longest < 2 * hop:
        raise ValueError(f"the longest validation clip holds {longest} samples; expected at least two hops "
                         f"({2 * hop} samples) to check the carried state.")
    initial = [s.numpy() for s in streaming.initial_state()]
    reference: list = []
    candidate: list = []
    streams = 0
    for waveform in waveforms:
        clip = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if streaming.max_segment_hops is not None:  # one segment: the reference has no segment resets
            clip = clip[: streaming.max_segment_hops * hop]
        if len(clip) < hop:
            continue
        reference += offline_stream_reference(fused, clip, hop_samples=hop, fm_mode=streaming.fm_mode)
        candidate += stream_outputs(run_all, clip, initial_state=initial, hop_samples=hop)
        streams += 1
    stack = lambda rows, i: np.stack([np.asarray(r[i], dtype=np.float64).reshape(-1) for r in rows])  # noqa: E731
    return compare({name: stack(reference, i) for i, name in enumerate(OUTPUT_NAMES)},
                   {name: stack(candidate, i) for i, name in enumerate(OUTPUT_NAMES)},
                   target=target, precision=precision,
                   comparison=f"{comparison or 'streamed artifact vs offline computation over the same samples'} "
                              f"({len(reference)} hops of {hop / SAMPLE_RATE:g} s in {streams} streams, "
                              "state carried)")


def streaming_manifest_block(streaming: StreamingSER) -> dict[str, Any]:
    """The manifest's ``streaming`` block: hop, states and what a call computes (docs/streaming.md)."""
    g = streaming.geometry
    head = streaming.head
    cached = streaming.fm_mode == "cached"
    meaning = {
        "audio_in": ("the previous window - hop samples (the FM's left context); zeros at the start" if not cached else
                     f"the previous {g.audio_context_samples} samples (the left receptive field of Whisper's conv "
                     "stem); zeros at the start"),
        "h_in": "the GRU state of every layer after the last finished frame",
        "ctx_in": "the last two normalised feature frames (the conv's left context and the frame still "
                  "waiting for its look-ahead)",
        "pool_in": "sum of the finished frames' GRU outputs (top layer) since the start",
        "count_in": "number of finished frames since the start (float32; 0 marks the first call)",
        "kv_in": (f"keys and values (blocks, 2, {g.context_frames} frames, width) of the previous "
                  f"{g.context_frames} frames in every block up to the cut; slots from before the segment start "
                  "are masked out"),
        "stats_in": ("frames since the segment start (Whisper position of the hop's first frame), sum of squared "
                     "samples and number of samples since the segment start (the running level), running maximum "
                     "of the log-mel (log10 units; Whisper's floor is this - 8)"),
    }
    shapes = streaming.state_shapes()
    audio_state = stream_states(streaming.fm_mode)[0][0]
    block: dict[str, Any] = {
        "fm_mode": streaming.fm_mode,
        "hop_samples": g.hop_samples, "hop_s": g.hop_samples / SAMPLE_RATE,
        "context_samples": g.context_samples, "window_samples": g.window_samples,
        "audio_context_samples": g.audio_context_samples,
        "hop_frames": g.hop_frames, "window_frames": g.window_frames,
        "frame_s": g.hop_samples / g.hop_frames / SAMPLE_RATE,
        "state": [{"input": i, "output": o, "shape": list(shapes[i]), "dtype": "float32", "initial": "zeros",
                   "on_segment_reset": "keep" if i == audio_state else "zeros",
                   "holds": meaning[i]} for i, o in stream_states(streaming.fm_mode)],
        "gru_layers": head.gru_layers, "gru_hidden": head.gru_hidden,
        "foundation_model_per_hop": (
            f"runs on the whole {g.window_samples}-sample window (audio_in + the hop); only its newest "
            f"{g.hop_frames} frames feed the head. The stream starts with {g.context_samples} samples of zeros."
            if not cached else
            f"runs on the hop's {g.hop_frames} frames only: level from the mean power since the segment start, "
            f"log-mel and conv stem on audio_in + the hop (newest {g.hop_frames} frames), Whisper positions counted "
            f"since the segment start, and every block attends from the new frames to themselves and to the cached "
            f"keys/values of the previous {g.context_frames} frames (kv_in)."),
        "estimate": (
            "probs/avd/embedding after each hop are the TC-GRU's outputs over every frame since the start: the mean "
            "of the GRU outputs of all finished frames plus the newest frame computed with zero look-ahead (it is "
            "redone with its real neighbour on the next hop). A segment reset sets every state whose "
            "on_segment_reset is 'zeros' back to zeros."),
        "offline_equivalent": (
            "the same windows through the foundation model, their newest frames joined in time, and the training "
            "TC-GRU over frames 0..k (edge_ser.converters.streaming.offline_stream_reference); the parity check "
            "compares every hop with it" if not cached else
            "per hop the running level and log-mel maximum from cumulative sums, torch.stft log-mel and the conv "
            "stem, then the encoder's blocks once over all frames with positions 0..T-1 and a block mask (frame t of "
            "hop k attends to frames kM - C .. (k+1)M - 1), and the training TC-GRU over frames 0..k "
            "(edge_ser.converters.streaming.offline_stream_reference, fm_mode='cached'); the parity check compares "
            "every hop of one segment with it"),
        "latency_s": {"first_estimate": g.hop_samples / SAMPLE_RATE,
                      "finished_frames_lag": g.hop_samples / g.hop_frames / SAMPLE_RATE},
    }
    if cached:
        block["max_segment_hops"] = streaming.max_segment_hops
        block["max_segment_s"] = streaming.max_segment_hops * g.hop_samples / SAMPLE_RATE
    return block


def _validate_kernel_paths(backend: Any, artifact_dir: Path, *, spec: Any, native: ParityReport,
                           parity: dict[str, Any], num_threads: int,
                           check: Callable[[Any, str], ParityReport]) -> ParityReport:
    """Parity of the artifact as other CPUs' int8 kernels compute it (the backend's emulations;
    ``check(runner, comparison)`` runs one the way the native artifact was checked); records each
    in ``parity["kernel_paths"]`` and returns the first failing report, else ``native``."""
    runners = backend.kernel_path_runners(artifact_dir, precision=spec, num_threads=num_threads)
    if not runners:
        return native
    parity["kernel_paths"] = {"this_cpu": cpu_features().onnxruntime_u8s8_path}
    worst = native
    for path, path_runner in runners.items():
        report = check(path_runner, f"artifact with {path} int8 accumulation (emulated) vs PyTorch reference")
        parity["kernel_paths"][path] = _parity_summary({**report.to_dict(), "ran": True})
        if worst.passed and not report.passed:
            worst = report
    parity["passed"] = parity["passed"] and worst.passed
    return worst


def _remove_stale_temp_folders(out: Path) -> list[Path]:
    """Delete the half-built folders (``.<name>.tmp-<pid>-*``) that a killed conversion into ``out``
    left behind; a folder whose process is still running (a conversion in progress) is kept."""
    removed = []
    for folder in out.parent.glob(f".{out.name}.tmp-*"):
        pid_text = folder.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue  # not written by this version: leave it
        try:
            os.kill(int(pid_text), 0)
            continue  # that process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # runs as another user
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d half-built folder(s) of killed conversions: %s", len(removed), removed)
    return removed


def _refuse_unoffered_streaming(spec: PrecisionSpec, *, target: str, hop_s: float | None) -> None:
    if hop_s is not None and not spec.streaming:
        raise ValueError(f"{target}/{spec.name} streaming artifacts are not offered (the target declares "
                         f"streaming=False for {spec.name}); convert the streaming variant at another precision, or "
                         f"the windowed one at {spec.name}.")


def _check_fm_mode_option(fm_mode: str, *, hop_s: float | None) -> None:
    from edge_ser.converters.stream_fm import FM_MODE_CHOICES

    if fm_mode not in FM_MODE_CHOICES:
        raise ValueError(f"fm_mode={fm_mode!r}; expected one of {', '.join(FM_MODE_CHOICES)}.")
    if hop_s is None and fm_mode not in ("auto", "window"):
        raise ValueError(f"fm_mode={fm_mode!r} applies to streaming artifacts only; pass hop_s (--stream-hop) too, "
                         "or leave fm_mode out for a windowed artifact.")


def _refuse_existing(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"artifact folder {out} already exists; expected a new path. Pass overwrite=True (--overwrite) "
            "to replace it, or choose another --out."
        )


def _move_into_place(tmp: Path, out: Path, *, overwrite: bool) -> None:
    _refuse_existing(out, overwrite=overwrite)
    if out.exists():
        # Swap by renames so a reader never sees a half-replaced folder.
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _manifest_source(source_info: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("run", "run_sha256", "feature_model", "layer", "n_layers_full", "weights_source")
    return {k: source_info.get(k) for k in keys} | {k: v for k, v in source_info.items()
                                                    if k not in keys and k != "calibration"}


def _quantization_block(spec: Any, calibration: Sequence[Any], source_info: Mapping[str, Any]) -> dict[str, Any] | None:
    if spec.scheme == "none":
        return None
    block: dict[str, Any] = {"scheme": spec.scheme, "description": spec.description}
    if spec.calibrated:
        cal = dict(source_info.get("calibration") or {})
        block["calibration"] = {"utterances": len(calibration), "split": cal.get("split", "train"),
                                "source": cal.get("corpus")}
    else:
        block["calibration"] = None
    return block


def _parity_summary(parity: Mapping[str, Any]) -> dict[str, Any]:
    if not parity.get("ran"):
        return {"ran": False, "passed": None, "reason": parity.get("reason")}
    outputs = {o["name"]: o for o in parity["outputs"]}
    return {"ran": True, "passed": parity["passed"], "n": parity["n_utterances"],
            "max_abs_error_of_scale": {k: o["max_rel_of_scale"] for k, o in outputs.items()},
            "psnr_db": {k: o["psnr_db"] for k, o in outputs.items()},
            "embedding_cosine": outputs["embedding"]["cosine"],
            "top1_agreement": parity["task"]["top1_agreement"],
            "top1_agreement_decisive": parity["task"]["top1_agreement_decisive"],
            "tolerance": parity["tolerance"],
            **({"kernel_paths": _kernel_paths_summary(parity["kernel_paths"])} if "kernel_paths" in parity else {})}


def _kernel_paths_summary(kernel_paths: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict, probs PSNR and decisive agreement per emulated path; ``this_cpu`` names this CPU's path."""
    keep = ("passed", "psnr_db", "top1_agreement_decisive")
    return {path: {k: entry[k] for k in keep} if isinstance(entry, Mapping) else entry
            for path, entry in kernel_paths.items()}


def _verification_summary(verification: Mapping[str, Any]) -> dict[str, Any]:
    return {"passed": verification.get("passed"), "io": verification.get("io"),
            "summary": verification.get("summary")}


# ---------------------------------------------------------------------------------------
# from a training run


def convert_run(
    *,
    run_dir: str | os.PathLike,
    target: str,
    precision: str,
    out: str | os.PathLike,
    window_s: float = 3.0,
    calibration_utterances: int = 32,
    validation_utterances: int = 240,
    overwrite: bool = False,
    seed: int = 0,
    hop_s: float | None = None,
    fm_mode: str = "auto",
) -> ConversionResult:
    """Convert a training run folder: fuse its feature model and head, calibrate on its
    training split, validate on its validation split (the corpus the run's feature cache
    was extracted from), write the artifact. What ``edge-ser convert`` calls. ``hop_s``: the
    streaming variant, ``fm_mode`` how its foundation model runs per hop (see :func:`convert`)."""
    run_dir = Path(run_dir)
    spec = get_backend(target).precision(precision)  # fail on bad names before loading any model
    _refuse_unoffered_streaming(spec, target=target, hop_s=hop_s)
    _check_fm_mode_option(fm_mode, hop_s=hop_s)
    _refuse_existing(Path(out), overwrite=overwrite)
    fused = build_fused_model(run_dir=run_dir, window_s=window_s)
    provenance = fused.source["provenance"]
    check_stream_features(provenance.get("stream"), run_dir=run_dir, hop_s=hop_s, window_s=window_s, fm_mode=fm_mode)
    corpus_dir = Path(provenance["corpus_dir"] or "")
    if not provenance["corpus_dir"] or not corpus_dir.is_dir():
        raise CorpusError(
            f"the run's feature cache {provenance['feature_dir']} points to corpus {provenance['corpus_dir']!r}, which "
            "is not a folder; expected the prepared corpus the features were extracted from (calibration and "
            "validation audio come from it). Restore it, or re-extract features from an existing corpus."
        )
    fold = provenance.get("fold")
    calibration = run_waveforms(corpus_dir=corpus_dir, split="train", n=calibration_utterances, fold=fold,
                                window_samples=fused.window_samples, seed=seed) if spec.calibrated else []
    validation = run_waveforms(corpus_dir=corpus_dir, split="valid", n=validation_utterances, fold=fold,
                               window_samples=fused.window_samples, seed=seed + 1)
    source = {k: v for k, v in fused.source.items() if k != "provenance"}
    source.update({"run": run_dir.name, "run_sha256": read_run_info(run_dir).weights_sha256,
                   "feature_dir": provenance["feature_dir"], "fold": fold,
                   "calibration": {"split": "train", "corpus": str(corpus_dir)}})
    return convert(fused=fused, target=target, precision=precision, out=out, calibration_waveforms=calibration,
                   validation_waveforms=validation, source_info=source, overwrite=overwrite, hop_s=hop_s,
                   fm_mode=fm_mode)


def check_stream_features(stream: Mapping[str, Any] | None, *, run_dir: Path, hop_s: float | None, window_s: float,
                          fm_mode: str) -> None:
    """A run trained on stream features (``features extract --stream-hop``) converts only to the
    streaming artifact those features came from: same hop, same context (``window_s``), ``cached``
    foundation model; raises ValueError saying which options to pass. A run trained on whole-clip or
    window features converts to either kind, with a warning for a streaming one."""
    if stream is None:
        if hop_s is not None:
            log.warning("run %s was trained on whole-clip or window features; a streaming artifact feeds its head frames "
                        "computed hop by hop (attention to the past only, running level), which it never saw: expect "
                        "lower accuracy than its windowed artifact, more the deeper the cut (docs/streaming.md). For a "
                        "stream-faithful head, train on `edge-ser features extract --stream-hop %g` features.",
                        run_dir, hop_s)
        return
    want_hop, want_context = float(stream["hop_s"]), float(stream["context_s"])
    options = f"--stream-hop {want_hop:g} --window-s {want_context:g}"
    if hop_s is None:
        raise ValueError(
            f"run {run_dir} was trained on stream features ({want_hop:g} s hops, {want_context:g} s context: what a "
            f"streaming artifact computes); a windowed artifact would feed its head whole-window features it never saw. "
            f"Convert it with {options}, or train on features extracted without --stream-hop for a windowed artifact.")
    if abs(float(hop_s) - want_hop) > 1e-9 or abs(float(window_s) - want_context) > 1e-9 or fm_mode == "window":
        raise ValueError(
            f"run {run_dir} was trained on the features of a cached stream with {want_hop:g} s hops and {want_context:g} s "
            f"context; got --stream-hop {float(hop_s):g} --window-s {float(window_s):g} --stream-fm {fm_mode}. Convert "
            f"with {options} (--stream-fm auto or cached), or extract and train on stream features of this geometry.")


def run_waveforms(
    *, corpus_dir: Path, split: str, n: int, window_samples: int, fold: int | None = None, seed: int = 0,
) -> list[np.ndarray]:
    """Up to ``n`` utterances of ``split`` (random, seeded), each center-cropped / zero-padded to one
    window. ``fold``: for k-fold runs, splits come from that fold's assignment, not the table's column."""
    from edge_ser.audio import load_audio
    from edge_ser.data.table import load_corpus

    corpus = load_corpus(corpus_dir)
    table = corpus.table
    if fold is not None:
        from edge_ser.data.splits import fold_assignment

        table = fold_assignment(table, fold=int(fold))
    rows = table[table["split"] == split]
    if len(rows) == 0:
        raise CorpusError(
            f"corpus {corpus_dir} has no utterances in split {split!r} (splits present: "
            f"{sorted(set(table['split'].dropna()))}); expected train/valid splits assigned at preparation."
        )
    picked = rows.sample(n=min(n, len(rows)), random_state=seed)
    waves = []
    for _, row in progress_bar(picked.iterrows(), total=len(picked), desc=f"loading {split} audio", unit="utt",
                               leave=False):
        wave = load_audio(corpus.audio_path(row.to_dict()))
        waves.append(fit_to_window(wave, window_samples))
    return waves

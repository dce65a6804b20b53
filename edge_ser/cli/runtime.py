"""`edge-ser predict`, `edge-ser verify`, `edge-ser bench`: the runtime side."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_ser.cli.options import CORPUS_DIR, FiniteFloatRange, VocabularyCommand, one_line_errors, progress_option


def register(root: click.Group) -> None:
    root.add_command(predict)
    root.add_command(verify)
    root.add_command(bench)


@click.command()
@click.option("--artifact", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="How many labels to print.")
@click.option("--timeline", "hop_s", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Print a timeline with windows every HOP_S s (at most the artifact's window).")
@click.option("--strict", is_flag=True, help="Refuse stereo or other-rate audio instead of converting it.")
@click.option("--stream", "stream", is_flag=True,
              help="Stream each file through a streaming artifact (edge-ser convert --stream-hop) in 0.1 s chunks, "
                   "as a live capture would deliver them; prints one estimate per hop.")
@click.option("--segment-s", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="With --stream: restart the head's state every SEGMENT_S seconds (a whole number of hops); "
                   "default: every estimate pools the whole file so far.")
@one_line_errors
def predict(artifact: Path, audio: tuple[Path, ...], top: int, hop_s: float | None, strict: bool, stream: bool,
            segment_s: float | None) -> None:
    """Classify audio files with an artifact."""
    from edge_ser.audio import load_audio
    from edge_ser.runtime import load

    if segment_s is not None and not stream:
        raise click.BadParameter("--segment-s applies to --stream only; add --stream.", param_hint="--segment-s")
    if stream and hop_s is not None:
        raise click.BadParameter("--timeline runs a windowed artifact, --stream a streaming one; pass one of them.",
                                 param_hint="--timeline")
    model = load(artifact, strict=strict, resample=not strict)
    if stream and model.manifest.streaming is None:
        raise click.BadParameter(
            f"{artifact} is a windowed artifact; --stream needs a streaming one. Convert with "
            "`edge-ser convert ... --stream-hop 1.0`, or use --timeline HOP_S with this one.", param_hint="--stream")
    for path in audio:
        if stream:
            for point in model.stream_file(path, chunk_s=0.1, segment_s=segment_s):
                p = point.prediction
                ranked = ", ".join(f"{name} {prob:.2f}" for name, prob in p.top_k(top))
                click.echo(f"{path.name} {point.start_s:6.2f}-{point.end_s:6.2f}s (since {point.segment_start_s:.2f}s)"
                           f"  {ranked} | A {p.arousal:.2f} V {p.valence:.2f} D {p.dominance:.2f}")
            continue
        if hop_s is not None:
            clip = load_audio(path, target_sr=model.sample_rate, strict=strict)
            for point in model.timeline(clip, model.sample_rate, hop_s=hop_s):
                p = point.prediction
                click.echo(f"{path.name} {point.start_s:6.2f}-{point.end_s:6.2f}s  {p.label:9s} "
                           f"A {p.arousal:.2f} V {p.valence:.2f} D {p.dominance:.2f}")
            continue
        p = model.predict_file(path)
        ranked = ", ".join(f"{name} {prob:.2f}" for name, prob in p.top_k(top))
        click.echo(f"{path.name}: {ranked} | A {p.arousal:.2f} V {p.valence:.2f} D {p.dominance:.2f}")


@click.command(cls=VocabularyCommand, old_spellings={"--test": "--corpus-dir", "--out": "--json"})
@click.option("--artifact", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The training run the artifact was converted from (the PyTorch reference).")
@click.option("--corpus-dir", "test_dir", type=CORPUS_DIR, required=True,
              help="A prepared corpus folder; its test split is used (all rows if it has none).")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An fp32 artifact: also report quantization error (this artifact vs the baseline).")
@click.option("--max-utterances", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--condition", default=None,
              help="Apply a recording condition to every clip first: gain+<dB>dB, gain-<dB>dB or telephone "
                   "(edge_ser.data.conditions), e.g. to check an artifact on louder audio than the corpus.")
@click.option("--robustness", is_flag=True,
              help="Sweep: clean, gain -20/-10/+10/+20 dB and telephone band (plus --noisy copies); prints one "
                   "table of UAR and agreement per condition; exit 1 if any condition breaches parity.")
@click.option("--noisy", "noisy_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --robustness: noisy copies of the test corpus (edge-ser data noisy) to add to the sweep.")
@click.option("--kernel-paths/--no-kernel-paths", default=True, show_default=True,
              help="Also check the artifact as other CPUs' int8 kernels compute it (ONNX int8; emulated, slower).")
@click.option("--json", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report to this JSON file.")
@progress_option
@one_line_errors
def verify(artifact: Path, run_dir: Path, test_dir: Path, baseline: Path | None, max_utterances: int,
           condition: str | None, robustness: bool, noisy_dirs: tuple[Path, ...], kernel_paths: bool,
           out: Path | None, progress: bool) -> None:
    """Run the artifact and the PyTorch reference on the same audio; exit 1 on a parity breach.

    Prints the CPU it verified on: int8 kernels differ between instruction sets (AVX2,
    AVX-512/VNNI, ARM), so run it again on the device class you ship to."""
    from edge_ser.cpu_features import cpu_features
    from edge_ser.data.conditions import parse_condition

    if condition is not None:
        try:
            parse_condition(condition)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--condition") from None
    from edge_ser.converters.verify import verify_artifact
    from edge_ser.io import write_json_atomic
    from edge_ser.runtime.parity import ParityError

    click.echo(f"verifying on CPU: {cpu_features().to_text()}")
    if robustness:
        from edge_ser.converters.verify import robustness_table, verify_robustness

        results = verify_robustness(artifact=artifact, run_dir=run_dir, corpus_dir=test_dir,
                                    noisy_dirs=noisy_dirs, max_utterances=max_utterances, progress=progress)
        click.echo(robustness_table(results))
        if out:
            write_json_atomic(out, {name: r.to_dict() for name, r in results.items()})
        failed = [name for name, r in results.items() if not r.passed]
        if failed:
            raise click.ClickException(f"parity breached under {', '.join(failed)}; see the table above.")
        return
    result = verify_artifact(artifact=artifact, run_dir=run_dir, corpus_dir=test_dir, baseline=baseline,
                             max_utterances=max_utterances, kernel_paths=kernel_paths, condition=condition,
                             progress=progress)
    if result.hop_s is not None:
        click.echo(f"streaming artifact: each clip streamed from the initial state in {result.hop_s:g} s hops "
                   f"(model.stream(), then flush); the final estimate per utterance and every hop compared")
    for report in result.reports:
        click.echo(report.to_text())
    if out:
        write_json_atomic(out, result.to_dict())
    if not result.passed:  # the reference and kernel-path reports decide; the others explain
        raise click.ClickException(str(ParityError(result.verdict)))


@click.command(cls=VocabularyCommand, old_spellings={"--out": "--json"})
@click.option("--artifact", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--json", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this JSON file instead of printing it.")
@one_line_errors
def bench(artifact: Path, runs: int, warmup: int, threads: int, out: Path | None) -> None:
    """Latency of one window through an artifact (p50/p90/p99, real-time factor)."""
    from edge_ser.io import write_json_atomic
    from edge_ser.runtime.latency import bench_artifact

    report = bench_artifact(artifact, runs=runs, warmup=warmup, threads=threads)
    click.echo(report.to_text())
    if out:
        write_json_atomic(out, report.to_dict())
    else:
        click.echo(json.dumps(report.to_dict(), indent=2))

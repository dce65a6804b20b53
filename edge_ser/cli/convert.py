"""`edge-ser convert`: a training run -> an on-device artifact folder (Core ML, ExecuTorch, ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_ser.audio import MIN_DURATION_S
from edge_ser.cli.options import FiniteFloatRange, one_line_errors, overwrite_option, progress_option


MIN_WINDOW_S = MIN_DURATION_S
"""The shortest window: the shortest clip the models accept (edge_ser.audio.MIN_DURATION_S)."""
MAX_WINDOW_S = 60.0
"""The longest window --window-s takes: one graph call per minute of audio is already far past what a
device answers interactively; longer audio is cut into windows by the runtime anyway."""


def register(root: click.Group) -> None:
    root.add_command(convert)


def _targets() -> list[str]:
    from edge_ser.converters.backends import TARGETS

    return sorted(TARGETS)


def _precisions() -> list[str]:
    from edge_ser.converters.backends import all_precisions

    return all_precisions()


def _fm_modes() -> list[str]:
    from edge_ser.runtime.artifact import STREAM_FM_CHOICES

    return list(STREAM_FM_CHOICES)


@click.command("convert")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Training run folder (config.json, model.safetensors, run.json).")
@click.option("--target", type=click.Choice(_targets()), required=True, help="Artifact format.")
@click.option("--precision", type=click.Choice(_precisions()), default="fp32", show_default=True,
              help="Weights/activations precision; each target offers a subset (see docs).")
@click.option("--window-s", type=FiniteFloatRange(min=MIN_WINDOW_S, max=MAX_WINDOW_S), default=3.0,
              show_default=True, help=f"Fixed input length in seconds ({MIN_WINDOW_S:g} to {MAX_WINDOW_S:g}).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Artifact folder to write.")
@overwrite_option
@click.option("--calibration-utterances", type=click.IntRange(min=2), default=32, show_default=True,
              help="Training-split utterances run through the PT2E-prepared graph (ExecuTorch int8; "
                   "activations are quantized dynamically per call).")
@click.option("--validation-utterances", type=click.IntRange(min=1), default=240, show_default=True,
              help="Validation-split utterances compared against the eager model (a seeded sample; the whole "
                   "split when it has fewer). The int8 gate's top-1 rule needs a few hundred to tell a 3 % "
                   "flip rate from 5 % (docs/parity.md, 'How many validation utterances').")
@click.option("--stream-hop", "hop_s", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Write the streaming variant: one hop of HOP_S seconds per call (a multiple of 0.02, at most "
                   "half the window), the GRU state carried between calls, the window as the FM's context "
                   "(docs/streaming.md).")
@click.option("--stream-fm", "fm_mode", type=click.Choice(_fm_modes()), default="auto", show_default=True,
              help="With --stream-hop: how the foundation model runs per hop. 'window': on the whole window every hop "
                   "(any model); 'cached': on the hop's frames only, attending to cached keys/values of the rest "
                   "of the window, positions counted since the segment start (Whisper); 'auto': cached for "
                   "Whisper, window for the others (docs/streaming.md).")
@progress_option
@one_line_errors
def convert(run_dir: Path, target: str, precision: str, window_s: float, out: Path, overwrite: bool,
            calibration_utterances: int, validation_utterances: int, hop_s: float | None, fm_mode: str,
            progress: bool) -> None:
    """Fuse a run's truncated feature model and head, quantize, lower, validate and save."""
    from edge_ser.converters.backends import get_backend
    from edge_ser.converters.pipeline import convert_run
    from edge_ser.runtime.parity import ParityError

    try:
        get_backend(target).precision(precision)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None
    if out.exists() and not overwrite:
        raise click.BadParameter(f"{out} already exists; pass --overwrite to replace it.", param_hint="--out")
    if hop_s is None and fm_mode not in ("auto", "window"):
        raise click.BadParameter("--stream-fm applies to streaming artifacts; pass --stream-hop too.",
                                 param_hint="--stream-fm")
    try:
        result = convert_run(run_dir=run_dir, target=target, precision=precision, out=out, window_s=window_s,
                             calibration_utterances=calibration_utterances,
                             validation_utterances=validation_utterances, overwrite=overwrite, hop_s=hop_s,
                             fm_mode=fm_mode)
    except ParityError as exc:  # the message is the full report (per-output errors, agreement, failures)
        raise click.ClickException(f"{target}/{precision} artifact is outside its parity tolerance; nothing was "
                                   f"written.\n{exc}") from None
    parity = result.parity
    verdict = ("parity passed" if parity.get("passed") else "parity not run: " + str(parity.get("reason")))
    click.echo(f"{result.out}: {target}/{precision}, {result.size_bytes / 1e6:.2f} MB, {verdict}")

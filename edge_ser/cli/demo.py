"""`edge-ser demo`: the whole chain on the built-in default (or a real corpus)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_ser.cli.options import VocabularyCommand, model_names, progress_option, resume_option

EXIT_ARTIFACTS_REFUSED = 3
"""Exit status: the chain finished and MODEL_CARD.md was written, but parity refused at least one
artifact (0 = every artifact passed, 1 = an error stopped the demo, 2 = bad command line)."""


def register(root: click.Group) -> None:
    root.add_command(demo)


@click.command(cls=VocabularyCommand, old_spellings={"--data": "--raw-root", "--fresh": "--no-resume"}, epilog=(
    "\b\nExit status:\n"
    "  0  the chain finished, every artifact passed parity; MODEL_CARD.md written\n"
    "  1  an error stopped the demo (no model card); run again to continue\n"
    "  2  bad command-line options\n"
    f"  {EXIT_ARTIFACTS_REFUSED}  the chain finished and MODEL_CARD.md was written, but parity refused\n"
    "     N artifact(s): listed in the card and on stderr with their reasons"))
@click.pass_context
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder of the whole chain: steps/, every stage's folder, MODEL_CARD.md.")
@click.option("--raw-root", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="RAVDESS speech folder, as distributed; default: the built-in synthetic corpus.")
@click.option("--model", type=click.Choice(model_names()), default=None,
              help="Foundation model (default: whisper-base when its weights are installed, else tiny-whisper with "
                   "random weights, said so in the model card).")
@resume_option("Continue the chain in --out after its last finished step, or (--no-resume) remove --out and start "
               "over.")
@click.option("--quick", is_flag=True, help="Smaller corpus and fewer epochs (used by the test suite).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Train on the corpus plus one augmented copy of its training rows (noise, telephone band, gain); "
                   "--no-augment trains on the corpus alone.")
@click.option("--windows/--whole-clips", default=True, show_default=True,
              help="Train on the windows the artifact runs (device windows plus 2 random positions per clip, each "
                   "through the foundation model on its own; edge-ser data windows) or on whole clips.")
@click.option("--artifacts", default=None,
              help="Comma-separated target:precision pairs to convert (default: "
                   "onnx:fp32,onnx:int8,executorch:int8,coreml:palette4).")
@progress_option
def demo(ctx: click.Context, out: Path, data_root: Path | None, model: str | None, resume: bool, quick: bool,
         augment: bool, windows: bool, artifacts: str | None, progress: bool) -> None:
    """Run data -> features -> saliency -> training -> evaluation -> conversion -> parity -> benchmark -> model card.

    A failed step stops with its error and keeps the outputs of the earlier steps;
    running the command again continues from the last finished step. An artifact that
    parity refuses (at conversion or verification) does not stop the chain: the others
    go on and the model card lists it with its reasons (see the exit status below).
    """
    from edge_ser.converters.backends import get_backend
    from edge_ser.demo import DEMO_ARTIFACTS, DemoConfig, run_demo

    pairs = DEMO_ARTIFACTS
    if artifacts:
        try:
            pairs = tuple(tuple(item.strip().split(":", 1)) for item in artifacts.split(",") if item.strip())
            for target, precision in pairs:
                get_backend(target).precision(precision)
        except ValueError as exc:
            raise click.BadParameter(f"{artifacts!r}: {exc} Expected e.g. onnx:fp32,executorch:int8.",
                                     param_hint="--artifacts") from None
    result = run_demo(DemoConfig(out=out, data_root=data_root, model=model, quick=quick, artifacts=pairs,
                                 augment=augment, windows=windows),
                      fresh=not resume)
    click.echo(result.to_text())
    if result.refused:
        click.echo(f"{len(result.refused)} artifact(s) refused by parity; the model card lists them:", err=True)
        for refusal in result.refused:
            click.echo(f"  {refusal.to_text()}", err=True)
        ctx.exit(EXIT_ARTIFACTS_REFUSED)

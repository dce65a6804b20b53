"""`edge-ser demo`: the whole chain on the built-in default (or a real corpus)."""

from __future__ import annotations

from pathlib import Path

import click


def register(root: click.Group) -> None:
    root.add_command(demo)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="RAVDESS speech folder; default: the built-in synthetic corpus.")
@click.option("--model", default=None, help="Foundation model (default: whisper-base when its weights are "
              "installed, else tiny-whisper with random weights, said so in the model card).")
@click.option("--fresh", is_flag=True, help="Start over instead of continuing after the last finished step.")
@click.option("--quick", is_flag=True, help="Smaller corpus and fewer epochs (used by the test suite).")
@click.option("--artifacts", default=None,
              help="Comma-separated target:precision pairs to convert (default: "
                   "onnx:fp32,onnx:int8,executorch:int8,coreml:palette4).")
def demo(out: Path, data_root: Path | None, model: str | None, fresh: bool, quick: bool,
         artifacts: str | None) -> None:
    """Run data -> features -> saliency -> training -> evaluation -> conversion -> parity -> benchmark -> model card.

    A failed step stops with its error and keeps the outputs of the earlier steps;
    running the command again continues from the last finished step.
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
    result = run_demo(DemoConfig(out=out, data_root=data_root, model=model, quick=quick, artifacts=pairs),
                      fresh=fresh)
    click.echo(result.to_text())

"""The `edge-ser` command line: a thin layer over library functions (STYLE.md).

Each subcommand group lives in its own module under ``edge_ser/cli/`` and is listed
in :data:`COMMAND_MODULES`; a module exposes ``register(root: click.Group)``. Options
are parsed here; the work is done by library functions with the same names that
Python users call directly.
"""

from __future__ import annotations

import importlib
import logging

import click

from edge_ser import __version__
from edge_ser.cli.extras import guard_registered, is_first_party, needs_extra_command
from edge_ser.progress import quiet_third_party_bars
from edge_ser.quiet import silence_known_noise

# Before _register_all imports the command modules and with them torch, torchao, coremltools
# and tqdm: some warn at import, and tqdm reads its settings then.
silence_known_noise()
quiet_third_party_bars()

# Command module -> the commands it registers -> the extra they need (None: the base install).
# Listed here, not read from the modules, because a module whose extra is missing cannot be
# imported; tests/test_packaging.py checks the names against what each register() adds.
COMMAND_MODULES: dict[str, dict[str, str | None]] = {
    "edge_ser.cli.data": {"data": "train"},
    "edge_ser.cli.features": {"features": "train", "saliency": "train"},
    "edge_ser.cli.train": {"train": "train", "ensemble": "train"},
    "edge_ser.cli.evaluate": {"evaluate": "train"},
    "edge_ser.cli.convert": {"convert": "convert"},
    # predict and bench need only the artifact's backend runtime ([onnx] or [executorch]);
    # verify also runs the PyTorch reference.
    "edge_ser.cli.runtime": {"predict": None, "verify": "train", "bench": None},
    "edge_ser.cli.demo": {"demo": "all"},
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-ser")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def root(verbose: int) -> None:
    """edge-ser: speech emotion recognition from research to devices."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_all() -> None:
    for name, commands in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or is_first_party(exc.name):
                raise
            # An optional dependency is missing: keep the commands visible, each saying what to install.
            for command, extra in commands.items():
                root.add_command(needs_extra_command(command, extra, exc.name))
            continue
        module.register(root)
        guard_registered(root, commands)


_register_all()


def main() -> None:  # console-script entry point
    """Run the CLI; edge-ser's own errors become one clean message and exit code 1.

    A command that ends with ``ctx.exit(code)`` (e.g. ``edge-ser demo``'s status 3) exits with that code.
    """
    from edge_ser.errors import EdgeSerError

    try:
        code = root(standalone_mode=False)  # not standalone: returns ctx.exit's code instead of exiting
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        raise SystemExit(1) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except EdgeSerError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)

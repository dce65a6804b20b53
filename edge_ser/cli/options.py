"""What every command shares: the vocabulary of docs/cli.md, old spellings, ranges, one ``Error:`` line.

- :data:`overwrite_option`, :func:`progress_option`, :func:`resume_option`: the options that mean the
  same thing in every command (STYLE.md: one CLI vocabulary; the table is docs/cli.md).
- :class:`VocabularyCommand`: a click command that still accepts the old spellings of its options
  (and an old positional argument) for one release: each is rewritten to the new spelling before
  parsing, prints one deprecation line to stderr, and is listed nowhere in ``--help``.
- :class:`FiniteFloatRange`: ``click.FloatRange`` that also refuses NaN and infinities (a NaN
  compares false with every bound, so a plain range lets it through).
- :func:`one_line_errors`: click ranges catch most bad values before any work; some can only be
  judged by the library (a layer number against the model's depth, a window against the run's
  frame rate). The library raises ``ValueError`` (``OverflowError`` for absurd magnitudes) with
  what was received, what was expected and the fix; this shows that message the way edge-ser
  shows its own errors and exits 1. edge-ser's own errors (``EdgeSerError``) are left to the
  entry point, which already prints them as one line. With ``-vv`` the traceback is logged.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import click

from edge_ser.errors import EdgeSerError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a finished folder already at --out (its old files are removed first); without it the "
         "command refuses before doing any work.",
)


CORPUS_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
"""A prepared corpus folder (edge-ser data prepare/synth/noisy/...): audio/, utterances.csv, manifest.json."""

corpus_dir_option = click.option(
    "--corpus-dir", type=CORPUS_DIR, required=True,
    help="Prepared corpus folder (edge-ser data prepare/synth, or a copy made by another data command).",
)


def model_names() -> list[str]:
    """``--model`` choices: the foundation-model registry, plus mfbf0 (the hand-crafted front end)."""
    from edge_ser.features.extract import available_models

    try:
        return available_models()
    except ImportError:  # the fm registry is not importable: only the hand-crafted front end works
        from edge_ser.features.extract import MFBF0_MODEL

        return [MFBF0_MODEL]


def progress_option(func: F) -> F:
    """``--progress/--no-progress`` (default on), passed to the command as ``progress``.

    With ``--no-progress`` the command runs inside :func:`edge_ser.progress.progress_shown` (False), so
    every bar of the library calls it makes is off, including those of functions without a ``progress``
    parameter; on, bars follow :mod:`edge_ser.progress` (a live bar on a terminal, one line in a log).
    """
    from edge_ser.progress import progress_shown

    @functools.wraps(func)
    def wrapper(*args: Any, progress: bool, **kwargs: Any) -> Any:
        with progress_shown(progress):
            return func(*args, progress=progress, **kwargs)

    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress (a bar on a terminal, one summary line per loop in a log).")(wrapper)  # type: ignore[return-value]


def engine_options(engine_help: str) -> Callable[[F], F]:
    """``--engine`` (help: what runs where) and the Ray options ``--address``, ``--workers`` and
    ``--device``, worded the same for every command that can run its foundation model on Ray."""
    from edge_ser.features.ray_engine import DEVICES, ENGINES  # constants only: Ray is imported when asked for

    options = (
        click.option("--engine", type=click.Choice(list(ENGINES)), default="local", show_default=True,
                     help=engine_help),
        click.option("--address", default=None,
                     help="--engine ray: 'auto' (the cluster of this node) or HOST:PORT of a Ray head node. "
                          "Default: start a local Ray instance for this run."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="--engine ray: Ray actors, each holding one copy of the model.  [default: 2]"),
        click.option("--device", type=click.Choice(list(DEVICES)), default=None,
                     help="--engine ray: where each worker runs the model; cuda takes one GPU per worker "
                          "(untested on a GPU so far).  [default: cpu]"),
    )

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def resume_option(help: str) -> Callable[[F], F]:
    """``--resume/--no-resume`` (default on; docs/cli.md says why), with the command's own ``help``."""
    return click.option("--resume/--no-resume", default=True, show_default=True, help=help)


class VocabularyCommand(click.Command):
    """A command that accepts, for one release, the old spellings of renamed options.

    ``old_spellings``: old option -> new option, e.g. ``{"--test": "--corpus-dir", "--fresh": "--no-resume"}``;
    the value (if any) follows the old spelling as it follows the new one (``--old V`` or ``--old=V``).
    ``old_positional``: a new option that also used to be given as a positional argument
    (``edge-ser data stats DIR`` -> ``--corpus-dir DIR``). The old forms are rewritten before click parses
    the line, so they are checked exactly like the new ones, and each prints one line to stderr::

        edge-ser evaluate: --test is deprecated, use --corpus-dir (the old spelling is removed in the next release)
    """

    def __init__(self, *args: Any, old_spellings: Mapping[str, str] | None = None,
                 old_positional: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old_spellings = dict(old_spellings or {})
        self.old_positional = old_positional
        names = {opt for param in self.params for opt in (*param.opts, *param.secondary_opts)}
        for old, new in self.old_spellings.items():
            if old in names:
                raise ValueError(f"{self.name}: deprecated spelling {old} is still an option of the command.")
            if new not in names:
                raise ValueError(f"{self.name}: deprecated {old} points at {new}, which is not an option "
                                 f"(options: {sorted(names)}).")
        if old_positional is not None and old_positional not in names:
            raise ValueError(f"{self.name}: the old positional argument points at {old_positional}, not an option.")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.rewrite_deprecated(ctx, args))

    def rewrite_deprecated(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``args`` with every old spelling replaced by its new one (a deprecation line for each)."""
        takes_values = {opt: (0 if param.is_flag or param.count else param.nargs)
                        for param in self.params if isinstance(param, click.Option)
                        for opt in (*param.opts, *param.secondary_opts)}
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                out.extend(args[i:])
                break
            name, eq, value = token.partition("=")
            if name in self.old_spellings:
                new = self.old_spellings[name]
                self._warn(ctx, name, new)
                name, token = new, new + eq + value
            if name in takes_values:
                skip = 0 if eq else takes_values[name]
                out.extend([token, *args[i + 1:i + 1 + skip]])
                i += 1 + skip
                continue
            if self.old_positional is not None and not token.startswith("-"):
                self._warn(ctx, f"a positional {token!r}", f"{self.old_positional} {token}")
                out.extend([self.old_positional, token])
            else:
                out.append(token)
            i += 1
        return out

    def _warn(self, ctx: click.Context, old: str, new: str) -> None:
        click.echo(f"{ctx.command_path}: {old} is deprecated, use {new} (the old spelling is removed in the next "
                   "release)", err=True)


class FiniteFloatRange(click.FloatRange):
    """A float in a range that is also finite (no nan, inf or -inf)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super(click.FloatRange, self).convert(value, param, ctx)  # the plain float conversion
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; expected {self._describe_range()}.", param, ctx)
        return super().convert(number, param, ctx)


def one_line_errors(func: F) -> F:
    """Decorate a click command's function (below the ``@click`` decorators)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, EdgeSerError):
            raise
        except (ValueError, OverflowError) as exc:
            log.debug("%s failed", func.__name__, exc_info=True)
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


__all__ = ["CORPUS_DIR", "FiniteFloatRange", "VocabularyCommand", "corpus_dir_option", "engine_options", "model_names", "one_line_errors", "overwrite_option", "progress_option",
           "resume_option"]

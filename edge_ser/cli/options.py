"""What every command shares: ``--overwrite``, finite number ranges, and one ``Error:`` line.

- :data:`overwrite_option`: the one ``--overwrite`` flag (STYLE.md: one CLI vocabulary): replace
  a finished output folder; without it a command refuses before doing any work.
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
from typing import Any, Callable, TypeVar

import click

from edge_ser.errors import EdgeSerError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a finished folder already at --out (its old files are removed first); without it the "
         "command refuses before doing any work.",
)


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


__all__ = ["FiniteFloatRange", "one_line_errors", "overwrite_option"]

"""Progress display that suits where the output goes: a live bar on a terminal, one line in a log.

On a terminal (or in a notebook) :func:`progress_bar` is a tqdm bar. Anywhere else (a log file,
a pipe, CI) a bar's redraws would be hundreds of lines, so nothing is redrawn: a loop whose bar
would stay on screen (``leave=True``) writes one summary line when it ends, and a transient one
(``leave=False``, e.g. the batches inside an epoch) writes nothing.

>>> import io
>>> log = io.StringIO()
>>> sum(progress_bar(range(3), desc="adding", unit="number", file=log, clock=lambda: 0.0))
3
>>> log.getvalue()
'adding: 3/3 number in 0.0 s\\n'
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("edge_ser_progress_shown", default=True)


@contextlib.contextmanager
def progress_shown(shown: bool) -> Iterator[None]:
    """Inside the block, ``shown=False`` switches off every :func:`progress_bar` (``--no-progress``),
    including those of library functions that take no ``progress`` argument; ``True`` changes nothing.

    >>> import io
    >>> log = io.StringIO()
    >>> with progress_shown(False):
    ...     sum(progress_bar(range(3), desc="adding", file=log))
    3
    >>> log.getvalue()
    ''
    """
    token = _SHOWN.set(_SHOWN.get() and shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def is_interactive(file: TextIO | None = None) -> bool:
    """True where a redrawn bar is readable: ``file`` (default stderr) is a terminal, or we run in a notebook."""
    file = sys.stderr if file is None else file
    try:
        if file.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules and file is sys.stderr


class LineProgress:
    """The non-terminal stand-in for a tqdm bar: counts, and writes one line on close if ``leave``.

    Supports what edge-ser's loops use of tqdm: iteration, ``update``, ``set_postfix``, ``close``
    and ``with``.
    """

    def __init__(self, iterable: Iterable[Any] | None, *, desc: str, total: int | None, unit: str,
                 initial: int, leave: bool, file: TextIO | None, clock: Callable[[], float]) -> None:
        self.iterable = iterable
        self.desc, self.unit, self.leave, self.file = desc, unit, leave, file
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial  # tqdm counts `initial` into a given total, not a derived one
        self.total = total
        self.n = initial
        self._initial = initial
        self._postfix: dict[str, Any] = {}
        self._clock = clock
        self._start = clock()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError(f"progress_bar(desc={self.desc!r}) was made without an iterable; call update() instead.")
        try:
            for item in self.iterable:
                self.n += 1  # counted when started, so a loop left by `break` reports what it ran
                yield item
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.leave or self.n == self._initial:
            return
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        line = f"{self.desc}: {count} {self.unit} in {self._clock() - self._start:.1f} s"
        if self._postfix:
            line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self._postfix.items())) + ")"
        print(line, file=self.file if self.file is not None else sys.stderr, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
                 enabled: bool = True, leave: bool = True, initial: int = 0, file: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> Any:
    """A progress display over ``iterable`` (or, without one, driven by ``update(n)``).

    ``enabled=False`` (``--no-progress``, or inside ``progress_shown(False)``) shows nothing at all. Otherwise: a tqdm bar where
    :func:`is_interactive` says the output is read live; else a :class:`LineProgress` that writes
    at most one line (``desc: n/total unit in s (postfix)``), only when ``leave`` is True.
    ``file``: where to write (default stderr); ``clock``: seconds, for tests.
    """
    enabled = enabled and _SHOWN.get()
    if enabled and is_interactive(file):
        from tqdm.auto import tqdm

        # disable=False explicitly: TQDM_DISABLE (quiet_third_party_bars) is meant for other libraries' bars.
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial, file=file,
                    disable=False)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave and enabled,
                        file=file, clock=clock)


def quiet_third_party_bars() -> None:
    """Outside a terminal, switch off the tqdm bars other libraries draw (coremltools' MIL passes, ...).

    tqdm reads ``TQDM_*`` environment variables once, when it is imported, so this must run before
    anything imports tqdm (the ``edge-ser`` command calls it first); a ``TQDM_DISABLE`` the user set wins.
    """
    if not is_interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")

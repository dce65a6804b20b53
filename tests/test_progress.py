"""Progress display: a bar on a terminal, at most one line per loop anywhere else."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from edge_ser.progress import LineProgress, is_interactive, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ticks():
    t = iter(range(1000))
    return lambda: float(next(t))


def test_not_a_terminal_prints_one_line_per_kept_loop_and_none_for_transient_ones():
    log = io.StringIO()
    assert not is_interactive(log)
    epochs = progress_bar(range(1, 4), desc="train run", unit="epoch", total=3, file=log, clock=_ticks())
    for epoch in epochs:
        for _ in progress_bar(range(50), desc=f"epoch {epoch}", unit="batch", leave=False, file=log):
            pass
        epochs.set_postfix(loss=f"{0.1 * epoch:.2f}")
    epochs.close()
    assert log.getvalue() == "train run: 3/3 epoch in 1.0 s (loss=0.30)\n"


def test_update_driven_and_early_exit_loops_report_what_ran():
    log = io.StringIO()
    with progress_bar(total=10, desc="extracting", unit="utt", file=log, clock=_ticks()) as bar:
        bar.update(4)
        bar.update(2)
    for epoch in progress_bar(range(1, 51), desc="train", unit="epoch", file=log, initial=0, clock=_ticks()):
        if epoch == 5:  # early stop after epoch 5 ran
            break
    assert log.getvalue().splitlines() == ["extracting: 6/10 utt in 1.0 s", "train: 5/50 epoch in 1.0 s"]


def test_disabled_prints_nothing_and_a_terminal_gets_a_tqdm_bar():
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="quiet", enabled=False, file=log)) == [0, 1, 2]
    assert log.getvalue() == ""

    terminal = _Terminal()
    bar = progress_bar(range(3), desc="live", file=terminal)
    assert not isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]
    assert "live" in terminal.getvalue()


def test_iterating_without_an_iterable_says_what_to_do():
    with pytest.raises(TypeError, match="call update"):
        list(progress_bar(desc="nothing", file=io.StringIO()))


def test_a_terminal_bar_shows_even_when_third_party_bars_are_off():
    """TQDM_DISABLE (set by quiet_third_party_bars when stderr is not a terminal) is for other libraries only."""
    script = ("import io\nfrom edge_ser.progress import progress_bar\n"
              "class T(io.StringIO):\n    def isatty(self):\n        return True\n"
              "t = T()\nlist(progress_bar(range(3), desc='live', file=t))\nprint('live: 100%' in t.getvalue())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.stdout.strip() == "True", done.stderr

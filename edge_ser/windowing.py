"""How a clip becomes fixed-length model windows: one rule for the runtime, training and evaluation.

An artifact runs on windows of exactly ``window`` samples. :func:`window_spans` cuts a clip into
the sample ranges the runtime runs (windows every ``hop`` samples, the last one aligned to the
clip's end so nothing is padded when the clip is long enough), and :func:`fit_window` turns one
range into exactly ``window`` samples (cut, or for a short clip repeated or zero-padded).
``edge_ser.runtime`` predicts with them, and ``edge-ser data windows`` writes the same windows as
a corpus so that a head can be trained and scored on what the device computes. numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["PadMode", "PAD_MODES", "window_spans", "fit_window", "span_weights"]

PadMode = Literal["repeat", "zeros"]
PAD_MODES: tuple[str, ...] = ("repeat", "zeros")


def window_spans(n_samples: int, window: int, *, hop: int | None = None) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering a clip of `n_samples` with windows of `window` samples.

    A clip no longer than one window gives one range, the whole clip. Otherwise windows start every
    `hop` samples (default: `window`, no overlap) and, when the last one would stop short of the
    end, one more window ends exactly at the clip's end.
    """
    if window < 1:
        raise ValueError(f"window={window}; expected a positive number of samples.")
    hop = hop or window
    if hop < 1:
        raise ValueError(f"hop={hop}; expected a positive number of samples.")
    if n_samples <= window:
        return [(0, int(n_samples))]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return [(s, s + window) for s in starts]


def fit_window(clip: np.ndarray, window: int, *, pad: PadMode = "repeat") -> np.ndarray:
    """Exactly `window` samples from a clip: its first `window` samples, or for a shorter clip the
    clip repeated (``pad="repeat"``) or followed by zeros (``pad="zeros"``)."""
    if pad not in PAD_MODES:
        raise ValueError(f"pad={pad!r}; expected one of {PAD_MODES}.")
    if len(clip) == 0:
        raise ValueError("cannot fit an empty clip into a window; expected at least one sample.")
    if len(clip) >= window:
        return clip[:window]
    if pad == "repeat":
        return np.tile(clip, int(np.ceil(window / len(clip))))[:window]
    return np.pad(clip, (0, window - len(clip)))


def span_weights(spans: list[tuple[int, int]]) -> np.ndarray:
    """How the runtime averages the windows of one clip: weights proportional to each span's length."""
    lengths = np.asarray([e - s for s, e in spans], dtype=np.float64)
    return lengths / lengths.sum()

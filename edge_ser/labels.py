"""The label vocabulary and the other constants every stage shares.

One source of truth: the 9 categories in SPEC.md's fixed order (MSP-Podcast primary
emotions), the 6 categories the paper scores, the three emotional dimensions, and
the internal audio format.
"""

from __future__ import annotations

SAMPLE_RATE: int = 16_000
"""Every waveform inside edge-ser is mono float32 at this rate (Hz)."""

CATEGORIES: tuple[str, ...] = (
    "neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt", "other",
)
"""The 9 trained categories, in output order (SPEC.md section 1)."""

REPORTED_CATEGORIES: tuple[str, ...] = ("neutral", "happy", "angry", "sad", "contempt", "surprise")
"""The 6 categories the paper scores; fear, disgust and other are trained, not scored."""

DIMENSIONS: tuple[str, ...] = ("arousal", "valence", "dominance")
"""Emotional dimensions in output order (activation = arousal)."""

DIMENSION_SCALE: tuple[float, float] = (1.0, 7.0)
"""Raw grader scale of the dimensions (MSP-Podcast); targets are mapped to [0, 1]."""

CATEGORY_INDEX: dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}


def category_index(name: str) -> int:
    """Index of a category name in :data:`CATEGORIES`.

    >>> category_index("sad")
    2
    """
    try:
        return CATEGORY_INDEX[name]
    except KeyError:
        raise ValueError(
            f"unknown emotion category {name!r}; expected one of {list(CATEGORIES)}. "
            "Map corpus-specific labels onto this vocabulary first (see edge_ser.data)."
        ) from None


def normalize_dimension(score: float) -> float:
    """Map a raw 1..7 grader score to [0, 1] with (s - 1) / 6 (SPEC.md section 7 item 5).

    >>> normalize_dimension(4.0)
    0.5
    """
    lo, hi = DIMENSION_SCALE
    return (float(score) - lo) / (hi - lo)

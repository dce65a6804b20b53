"""The label vocabulary and the other constants every stage shares.

One source of truth: the 9 categories in SPEC.md's fixed order (MSP-Podcast primary
emotions), the 6 categories the paper scores, the three emotional dimensions, and
the internal audio format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


# ----------------------------------------------------------------------------------- vocabularies

LABEL_VOCABULARIES: tuple[str, ...] = ("paper", "corpus")
"""``paper``: the 9 :data:`CATEGORIES` with soft targets from grader votes (default, SPEC.md).
``corpus``: the corpus's own labels (the ``source_label`` column, e.g. RAVDESS's 8 emotions with
calm), one-hot targets; every stage reads the class list from run.json / the artifact manifest."""


@dataclass(frozen=True)
class Vocabulary:
    """The categorical output space of a run: class names in output order.

    ``kind`` is ``paper`` (the 9 categories; scoring defaults to the 6 of the paper) or ``corpus``
    (the corpus's own labels; scoring defaults to all of them).
    """

    kind: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in LABEL_VOCABULARIES:
            raise ValueError(f"unknown label vocabulary kind {self.kind!r}; expected one of {list(LABEL_VOCABULARIES)}.")
        names = tuple(str(c) for c in self.classes)
        if len(names) < 2 or len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise ValueError(f"a label vocabulary needs at least 2 distinct non-empty class names; got {list(names)}.")
        if self.kind == "paper" and names != CATEGORIES:
            raise ValueError(f"the paper vocabulary is {list(CATEGORIES)} in that order; got {list(names)}.")
        object.__setattr__(self, "classes", names)

    @property
    def reported(self) -> tuple[str, ...]:
        """Classes scored by default: the paper's 6, or every class of a corpus vocabulary."""
        return REPORTED_CATEGORIES if self.kind == "paper" else self.classes

    def index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ValueError(f"unknown class {name!r}; this run's {self.kind} vocabulary is {list(self.classes)}.") from None

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: object) -> "Vocabulary":
        """Read the record written by :meth:`to_dict`; ``None`` (records older than vocabularies) is the paper's."""
        if data is None:
            return PAPER_VOCABULARY
        if not isinstance(data, dict) or "kind" not in data or "classes" not in data:
            raise ValueError(f"label vocabulary record {data!r}; expected {{'kind': 'paper'|'corpus', 'classes': [...]}}.")
        return cls(str(data["kind"]), tuple(data["classes"]))  # type: ignore[arg-type]

    @classmethod
    def from_corpus_labels(cls, labels: Iterable[object]) -> "Vocabulary":
        """The corpus vocabulary of a set of ``source_label`` values: distinct non-empty names, sorted.

        Sorted so that every fold and every re-run of one corpus gets the same output order.
        """
        names = sorted({str(v).strip() for v in labels if v is not None and str(v).strip() not in ("", "nan")})
        if len(names) < 2:
            raise ValueError(
                f"--labels corpus needs the corpus's own labels in the source_label column; found {names}. "
                "Prepare the corpus with a reader that keeps them (edge-ser data prepare), or train with --labels paper."
            )
        return cls("corpus", tuple(names))


PAPER_VOCABULARY = Vocabulary("paper", CATEGORIES)

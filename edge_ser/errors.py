"""Exception types. Every message says what was received, what was expected, and the fix."""

from __future__ import annotations


class EdgeSerError(Exception):
    """Base class for errors raised by edge-ser on bad input or state."""


class AudioError(EdgeSerError, ValueError):
    """A waveform or audio file is unusable (empty, NaN, wrong shape, unreadable, ...)."""


class CorpusError(EdgeSerError, ValueError):
    """A corpus folder, label file or utterance table is missing or malformed."""


class ManifestError(EdgeSerError, ValueError):
    """A manifest is missing, from another version, or does not match its files."""

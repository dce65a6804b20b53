"""Atomic file writes, hashing and manifest reading. Nothing edge-ser writes is ever half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator

from edge_ser import __version__
from edge_ser.errors import EdgeSerError, ManifestError


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto `path` on success.

    The temp file lives in the same directory so the final ``os.replace`` is atomic.
    On an exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        if tmp_path.exists() and not tmp_path.is_dir():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON (indented, sorted keys off, trailing newline) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_versioned_manifest(
    path: str | os.PathLike,
    *,
    kind: str,
    expected_format: str,
    supported_versions: Collection[int],
    fix: str,
    name_reader: bool = False,
    missing_error: type[EdgeSerError] = ManifestError,
) -> dict[str, Any]:
    """Read a folder's ``manifest.json`` and check its ``format`` and ``format_version``.

    The single place where the corpus, feature-cache and artifact readers refuse a
    manifest; each reader keeps its own checks of the content (sha256 and so on).

    Args:
        path: the manifest file, e.g. ``corpus/manifest.json``.
        kind: what the folder should be, as a noun phrase: ``"a prepared corpus folder"``.
        expected_format: the ``format`` value the reader understands, e.g. ``"edge-ser-corpus"``.
        supported_versions: the ``format_version`` values the reader understands, e.g. ``(1,)``.
        fix: one or more sentences saying how to get a good folder; ends every message.
        name_reader: say "this edge-ser (<version>) reads" instead of "expected" on a format
            mismatch. The runtime sets it: its app usually runs another edge-ser install than
            the one that wrote the artifact, so both versions are the useful facts there.
        missing_error: the error raised when the manifest file is missing.

    Returns:
        The parsed manifest.

    Raises:
        ManifestError: the manifest is not valid JSON, not an object, of another format or of
            an unsupported version. `missing_error` when the file does not exist.

    >>> read_versioned_manifest("nowhere/manifest.json", kind="a prepared corpus folder",
    ...                         expected_format="edge-ser-corpus", supported_versions=(1,),
    ...                         fix="Make it with `edge-ser data prepare`.")
    Traceback (most recent call last):
    ...
    edge_ser.errors.ManifestError: nowhere has no manifest.json; expected a prepared corpus folder. Make it with `edge-ser data prepare`.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_error(f"{path.parent} has no {path.name}; expected {kind}. {fix}")
    try:
        manifest = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); expected the manifest of {kind}. {fix}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path} holds a JSON {type(manifest).__name__}; expected an object with 'format' and "
            f"'format_version', the manifest of {kind}. {fix}"
        )
    found_format, version = manifest.get("format"), manifest.get("format_version")
    # bool is an int subclass: `true` must not pass for version 1.
    version_ok = isinstance(version, int) and not isinstance(version, bool) and version in supported_versions
    if found_format == expected_format and version_ok:
        return manifest
    expects = f"this edge-ser ({__version__}) reads" if name_reader else "expected"
    versions = " or ".join(str(v) for v in sorted(supported_versions))
    message = f"{path} has format {found_format!r} version {version!r}; {expects} {expected_format!r} version {versions}"
    if found_format != expected_format:
        raise ManifestError(f"{message}, the manifest of {kind}. {fix}")
    written_by = manifest.get("edge_ser_version")
    newer = isinstance(version, int) and not isinstance(version, bool) and version > max(supported_versions)
    if newer:
        note = f" Or upgrade edge-ser: the manifest was written by edge-ser {written_by!r} in a newer format."
    else:
        note = f" The manifest was written by edge-ser {written_by!r}." if written_by is not None else ""
    raise ManifestError(f"{message}. {fix}{note}")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths show up in reports; serialise them plainly.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")

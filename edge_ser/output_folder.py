"""Output folders: a finished folder is replaced only when asked (``overwrite=True``, CLI ``--overwrite``).

Every step that writes a folder with a ``manifest.json`` (``data synth``, ``data prepare``,
``data noisy``, ``data conditions``, ``features extract``; ``convert`` has its own swap)
calls :func:`claim_output_folder` before doing any work:

- a new or empty folder, or one without ``manifest.json`` (an unfinished earlier run of the
  step, which it writes over), is used as is;
- a finished folder (it has ``manifest.json``) is refused without ``overwrite``;
- with ``overwrite`` the step's own files are removed first (so no stale audio or shard is
  left behind), and only those: a folder whose manifest belongs to another kind of folder
  (a corpus given as ``--out`` of a feature extraction, say) is refused even then, since
  nothing says its files are ours to delete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_ser.errors import EdgeSerError

MANIFEST_FILE = "manifest.json"


class OutputExistsError(EdgeSerError, FileExistsError):
    """An output folder already holds a finished result and overwriting was not asked for."""


def read_existing_manifest(out: Path) -> dict[str, Any] | None:
    """The JSON object in ``out/manifest.json``; None when there is none; {} when it is unreadable."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def claim_output_folder(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    kind: str,
    expected_format: str,
    owned: Callable[[dict[str, Any]], Iterable[str]],
    describe: Callable[[dict[str, Any]], str] | None = None,
) -> Path:
    """Check that `out` may be written by a step producing `kind`; with `overwrite`, clear our old files.

    Args:
        out: the output folder.
        overwrite: replace a finished folder of the same kind.
        kind: what the step writes, as a noun phrase: ``"a prepared corpus"``.
        expected_format: the manifest ``format`` of that kind (e.g. ``"edge-ser-corpus"``).
        owned: manifest -> the names (relative to `out`) the old folder's step wrote; removed
            with `overwrite`. Names with a path separator or ``..`` are never removed.
        describe: manifest -> a short description for the message (e.g. "40 utterances").

    Returns:
        `out` as a Path (not created here).

    Raises:
        OutputExistsError: `out` holds a finished folder and not `overwrite`, or its manifest
            is of another kind (or unreadable), which `overwrite` does not touch.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; expected a folder for {kind}. Choose another --out.")
    manifest = read_existing_manifest(out)
    if manifest is None:
        return out
    found = manifest.get("format")
    if found != expected_format:
        what = f"a manifest.json of format {found!r}" if found else "a manifest.json that is not an edge-ser manifest"
        raise OutputExistsError(
            f"{out} holds {what}; expected a new folder for {kind} ({expected_format!r}). It is not ours to "
            "replace, so --overwrite does not apply: choose another --out (or delete that folder yourself)."
        )
    if not overwrite:
        detail = ""
        if describe is not None:
            try:
                detail = f" ({describe(manifest)})"
            except Exception:  # the description is a courtesy; a malformed manifest must not hide the refusal
                detail = ""
        raise OutputExistsError(
            f"{out} already holds {kind}{detail}; expected a new or empty folder. Pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out."
        )
    for name in owned(manifest):
        name = str(name)
        if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
            continue
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    return out


__all__ = ["OutputExistsError", "claim_output_folder", "read_existing_manifest"]

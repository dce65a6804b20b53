"""The artifact folder's ``manifest.json`` (format "edge-ser-artifact" v1, docs/architecture.md).

Written by the conversion pipeline, read and checked by the runtime: what the graph takes
and returns, which labels, which precision and backend, where it came from, the sha256
and size of every file (each file inside a ``.mlpackage`` directory separately), and
``manifest_sha256``, the digest of the manifest's own content, so that no field can be
edited without the runtime refusing the artifact (docs/security.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge_ser import __version__
from edge_ser.io import _json_default, sha256_file, write_json_atomic
from edge_ser.labels import CATEGORIES, DIMENSIONS, SAMPLE_RATE

from edge_ser.runtime.artifact import (  # the one reader
    ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MANIFEST_DIGEST_KEY, MANIFEST_FILE, manifest_digest,
)

PARITY_FILE = "parity.json"


def file_hashes(artifact_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{relative/posix/path: {"sha256", "bytes"}}`` for every file under the folder except
    the manifest itself, in sorted order (directories are walked, so a ``.mlpackage`` lists
    each file it contains)."""
    root = Path(artifact_dir)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_FILE:
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def tensor_specs(names: Sequence[str], arrays: Sequence[Any]) -> list[dict[str, Any]]:
    """``[{"name", "shape", "dtype"}]`` from example arrays/tensors."""
    specs = []
    for name, array in zip(names, arrays):
        dtype = str(array.dtype).replace("torch.", "")
        specs.append({"name": name, "shape": [int(d) for d in array.shape], "dtype": dtype})
    return specs


def build_manifest(
    *,
    artifact_dir: str | os.PathLike,
    target: str,
    precision: str,
    backend: Mapping[str, Any],
    source: Mapping[str, Any],
    window_samples: int,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    model_files: Sequence[str],
    quantization: Mapping[str, Any] | None,
    parity: Mapping[str, Any],
    delegation: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
    latency: Mapping[str, Any] | None = None,
    labels: Sequence[str] = CATEGORIES,
) -> dict[str, Any]:
    """Assemble the manifest for a finished artifact folder (hashes its files now).

    ``labels``: the class names of the ``probs`` output in order (the 9 categories, or a run's
    corpus vocabulary); the runtime and the starters read them from here.

    ``model_files``: the backend's files/directories (``size_bytes`` is their total size).
    """
    files = file_hashes(artifact_dir)
    model_bytes = sum(info["bytes"] for rel, info in files.items()
                      if any(rel == m or rel.startswith(m.rstrip("/") + "/") for m in model_files))
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "edge_ser_version": __version__,
        "backend": dict(backend),
        "target": target,
        "precision": precision,
        "source": dict(source),
        "sample_rate": SAMPLE_RATE,
        "window_samples": int(window_samples),
        "window_s": window_samples / SAMPLE_RATE,
        "inputs": [dict(i) for i in inputs],
        "outputs": [dict(o) for o in outputs],
        "labels": [str(c) for c in labels],
        "dimensions": list(DIMENSIONS),
        "model_files": list(model_files),
        "files": files,
        "size_bytes": model_bytes,
        "quantization": dict(quantization) if quantization else None,
        "parity": dict(parity),
    }
    if delegation is not None:
        manifest["delegation"] = dict(delegation)
    if verification is not None:
        manifest["verification"] = dict(verification)
    if latency is not None:
        manifest["latency"] = dict(latency)
    return manifest


def write_manifest(artifact_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write the manifest with its ``manifest_sha256``: the digest of its content as it will be read
    back (JSON round trip), which binds labels, rate, window and file hashes to the artifact."""
    content = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST_KEY},
                                    default=_json_default))
    content[MANIFEST_DIGEST_KEY] = manifest_digest(content)
    return write_json_atomic(Path(artifact_dir) / MANIFEST_FILE, content)

"""The artifact folder contract: manifest reading, version and sha256 checks.

An artifact folder holds ``manifest.json`` plus the model file(s) of one target
(``model.pte``, ``model.onnx`` or ``model.mlpackage/``). The converters write it
(`edge_ser.converters`); this module is the single reader. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from edge_ser.errors import ManifestError
from edge_ser.io import read_versioned_manifest, sha256_file

ARTIFACT_FORMAT = "edge-ser-artifact"
ARTIFACT_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILES: dict[str, str] = {"executorch": "model.pte", "onnx": "model.onnx", "coreml": "model.mlpackage"}
OUTPUT_NAMES: tuple[str, ...] = ("probs", "avd", "embedding")
INPUT_NAME = "waveform"


@dataclasses.dataclass(frozen=True)
class ArtifactManifest:
    """The parsed ``manifest.json`` of an artifact folder."""

    root: Path
    target: str
    precision: str
    sample_rate: int
    window_samples: int
    labels: tuple[str, ...]
    dimensions: tuple[str, ...]
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILES[self.target]

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def size_bytes(self) -> int:
        return int(sum(int(rec["bytes"]) for rec in self.files.values()))


def read_manifest(artifact_dir: str | os.PathLike, *, verify: bool = True) -> ArtifactManifest:
    """Read and check an artifact's manifest; with `verify`, check every file's sha256.

    Raises ManifestError for a missing/invalid manifest, another format version, an
    unknown target, or a file whose bytes do not match (tampered or half-copied).
    """
    root = Path(artifact_dir)
    path = root / MANIFEST_FILE
    raw = read_versioned_manifest(
        path, kind="an edge-ser artifact folder", expected_format=ARTIFACT_FORMAT,
        supported_versions=(ARTIFACT_FORMAT_VERSION,),
        fix="Re-convert the run with this version of edge-ser: `edge-ser convert --run R --target T --out A`.",
        name_reader=True,
    )
    target = raw.get("target")
    if target not in MODEL_FILES:
        raise ManifestError(f"{path}: unknown target {target!r}; expected one of {sorted(MODEL_FILES)}.")
    missing = [key for key in ("precision", "sample_rate", "window_samples", "labels", "files", "outputs")
               if key not in raw]
    if missing:
        raise ManifestError(f"{path} lacks {missing}; the artifact is incomplete. Re-run `edge-ser convert`.")
    manifest = ArtifactManifest(
        root=root,
        target=target,
        precision=str(raw["precision"]),
        sample_rate=int(raw["sample_rate"]),
        window_samples=int(raw["window_samples"]),
        labels=tuple(raw["labels"]),
        dimensions=tuple(raw.get("dimensions", ("arousal", "valence", "dominance"))),
        inputs=tuple(raw.get("inputs", ())),
        outputs=tuple(raw["outputs"]),
        files=dict(raw["files"]),
        raw=raw,
    )
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: ArtifactManifest) -> None:
    """Check that every file the manifest lists exists with the recorded sha256, and that the
    folder holds no file it does not list (a stale or injected file)."""
    on_disk = {p.relative_to(manifest.root).as_posix() for p in manifest.root.rglob("*") if p.is_file()}
    unlisted = sorted(on_disk - set(manifest.files) - {MANIFEST_FILE})
    if unlisted:
        raise ManifestError(
            f"{manifest.root} holds unlisted {unlisted}; expected exactly the files of its manifest. Re-run "
            "`edge-ser convert --overwrite` or copy the artifact folder again."
        )
    for rel, record in manifest.files.items():
        path = manifest.root / rel
        if not path.is_file():
            raise ManifestError(
                f"artifact file {path} is missing; the manifest lists it. Copy the whole artifact folder "
                "or re-run `edge-ser convert`."
            )
        actual = sha256_file(path)
        if actual != record.get("sha256"):
            raise ManifestError(
                f"artifact file {path} has sha256 {actual[:16]}..., the manifest records "
                f"{str(record.get('sha256'))[:16]}...: the file was modified or only partly copied. "
                "Re-copy the artifact folder or re-run `edge-ser convert`."
            )
    if not manifest.model_path.exists():
        raise ManifestError(f"{manifest.model_path} is missing for target {manifest.target!r}.")

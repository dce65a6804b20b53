"""The artifact folder contract: manifest reading, version, binding and sha256 checks.

An artifact folder holds ``manifest.json`` plus the model file(s) of one target
(``model.pte``, ``model.onnx`` or ``model.mlpackage/``). The converters write it
(`edge_ser.converters`); this module is the single reader. See docs/architecture.md
and docs/security.md.

What :func:`read_manifest` guarantees (each refusal is an :class:`ArtifactError`):

- integrity: the manifest's own fields are bound to it by ``manifest_sha256`` (a digest of
  its canonical JSON), and every file it lists by its sha256 and size, so an edited label
  list, sample rate or window, or a modified model file, is refused;
- consistency: labels are distinct strings, one per class probability; the window, the
  sample rate and the declared tensor shapes agree (the runtime then checks them against
  the model's real inputs and outputs, :func:`edge_ser.runtime.load`);
- containment: every listed file is a regular file inside the folder (no ``..``, no
  absolute path, no symlink), and the folder holds nothing the manifest does not list.

It is not a signature: whoever can rewrite the model, every sha256 and the digest can make
a different artifact that passes (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from edge_ser.errors import ManifestError
from edge_ser.io import read_versioned_manifest, sha256_file

ARTIFACT_FORMAT = "edge-ser-artifact"
ARTIFACT_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST_KEY = "manifest_sha256"
OUTPUT_NAMES: tuple[str, ...] = ("probs", "avd", "embedding")
"""The fused graph's outputs, in order: the one definition the converters, runners, parity and apps read."""
INPUT_NAME = "waveform"
STREAM_STATES: tuple[tuple[str, str], ...] = (
    ("audio_in", "audio_out"), ("h_in", "h_out"), ("ctx_in", "ctx_out"), ("pool_in", "pool_out"),
    ("count_in", "count_out"),
)
"""A streaming artifact's carried states as (input, output) name pairs, in graph order: each call's
``*_out`` is the next call's ``*_in``, all zeros at the start (the manifest's ``streaming.state``
says what each holds)."""
STREAM_INPUT_NAMES: tuple[str, ...] = (INPUT_NAME, *(i for i, _ in STREAM_STATES))
STREAM_OUTPUT_NAMES: tuple[str, ...] = (*OUTPUT_NAMES, *(o for _, o in STREAM_STATES))
CACHED_FM_STATES: tuple[tuple[str, str], ...] = (("kv_in", "kv_out"), ("stats_in", "stats_out"))
"""The extra states of a streaming artifact whose foundation model runs on each hop's frames only
(manifest ``streaming.fm_mode == "cached"``): its key/value cache and its running statistics
(frames since the segment start, level, log-mel maximum). They come after :data:`STREAM_STATES`, so
the first five states have the same names and places in both layouts."""
STREAM_FM_MODES: tuple[str, ...] = ("window", "cached")
"""``streaming.fm_mode`` values: ``window`` (the FM reruns its whole context window every hop; manifests
without the key are this) or ``cached`` (the FM runs on the hop's frames with a key/value cache)."""
STREAM_FM_CHOICES: tuple[str, ...] = ("auto", *STREAM_FM_MODES)
"""What ``convert(fm_mode=...)`` and ``edge-ser convert --stream-fm`` take: a mode, or ``auto`` (the
default): ``cached`` for Whisper, where it is cheaper per hop and closer to whole-clip features
(docs/streaming.md, measured), ``window`` for the other families. Manifests record the mode."""


def stream_states(fm_mode: str = "window") -> tuple[tuple[str, str], ...]:
    """A streaming artifact's (input, output) state pairs, in graph order, for its ``fm_mode``."""
    if fm_mode not in STREAM_FM_MODES:
        raise ValueError(f"fm_mode={fm_mode!r}; expected one of {', '.join(STREAM_FM_MODES)}.")
    return STREAM_STATES if fm_mode == "window" else STREAM_STATES + CACHED_FM_STATES


def stream_io_names(fm_mode: str = "window") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A streaming graph's (input names, output names) for its ``fm_mode``."""
    states = stream_states(fm_mode)
    return (INPUT_NAME, *(i for i, _ in states)), (*OUTPUT_NAMES, *(o for _, o in states))
ARTIFACT_SAMPLE_RATES: tuple[int, ...] = (16_000,)
"""Rates an artifact's graph may take: every edge-ser model reads 16 kHz audio."""

_FIX = "Restore the artifact folder from where it came from (copy it again) or re-run `edge-ser convert`."
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ManifestError):
    """An artifact folder is not what its manifest says: edited, corrupted, incomplete, or pointing
    outside itself. The runtime refuses it instead of running it."""


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, compact), without ``manifest_sha256``.

    The converters store it as ``manifest_sha256``; :func:`read_manifest` recomputes it, so any
    edit of the manifest's fields (labels, rate, window, file hashes) is refused.
    """
    body = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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
        """The target's model file (or package folder) in the artifact folder."""
        return self.root / _model_file(self.target)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def streaming(self) -> dict[str, Any] | None:
        """The ``streaming`` block of a streaming artifact (hop, states), None for a windowed one."""
        block = self.raw.get("streaming")
        return block if isinstance(block, dict) else None

    @property
    def hop_samples(self) -> int | None:
        """Samples per call of a streaming artifact; None for a windowed one."""
        return int(self.streaming["hop_samples"]) if self.streaming else None

    @property
    def size_bytes(self) -> int:
        return int(sum(int(rec["bytes"]) for rec in self.files.values()))


def read_manifest(artifact_dir: str | os.PathLike, *, verify: bool = True) -> ArtifactManifest:
    """Read and check an artifact's manifest; with `verify`, check every file's sha256.

    Raises ArtifactError (a ManifestError) for a missing/invalid manifest, another format
    version, a manifest edited after conversion, inconsistent fields, an unknown target, a
    listed path outside the folder, or a file whose bytes do not match (tampered or half-copied).
    The manifest's own checks run with or without `verify`; `verify` adds the file hashes.
    """
    root = Path(artifact_dir)
    path = root / MANIFEST_FILE
    try:
        raw = read_versioned_manifest(
            path, kind="an edge-ser artifact folder", expected_format=ARTIFACT_FORMAT,
            supported_versions=(ARTIFACT_FORMAT_VERSION,),
            fix="Re-convert the run with this version of edge-ser: `edge-ser convert --run R --target T --out A`.",
            name_reader=True,
        )
    except ArtifactError:
        raise
    except ManifestError as exc:
        raise ArtifactError(str(exc)) from None
    _check_digest(raw, path)
    target = raw.get("target")
    known = _known_targets()
    if not isinstance(target, str) or target not in known:
        raise ArtifactError(f"{path}: unknown target {target!r}; expected one of {known}. {_FIX}")
    missing = [key for key in ("precision", "sample_rate", "window_samples", "labels", "files", "outputs")
               if key not in raw]
    if missing:
        raise ArtifactError(f"{path} lacks {missing}; the artifact is incomplete. Re-run `edge-ser convert`.")
    manifest = ArtifactManifest(
        root=root,
        target=target,
        precision=str(raw["precision"]),
        sample_rate=_positive_int(raw, "sample_rate", path),
        window_samples=_positive_int(raw, "window_samples", path),
        labels=_names(raw, "labels", path),
        dimensions=_names({"dimensions": raw.get("dimensions", ["arousal", "valence", "dominance"])},
                          "dimensions", path),
        inputs=_tensor_specs(raw.get("inputs", []), "inputs", path),
        outputs=_tensor_specs(raw["outputs"], "outputs", path),
        files=_file_records(raw["files"], path),
        raw=raw,
    )
    check_consistency(manifest)
    check_containment(manifest)
    if verify:
        verify_files(manifest)
    return manifest


# The target table is imported inside these two functions, not at the top: the target modules
# import this module's names (OUTPUT_NAMES, ArtifactError).
def _known_targets() -> list[str]:
    from edge_ser.runtime.targets import TARGETS

    return sorted(TARGETS)


def _model_file(target: str) -> str:
    """The model file of ``target``, from its declaration in the target table."""
    from edge_ser.runtime.targets import get_target

    return get_target(target).model_file


def _check_digest(raw: dict[str, Any], path: Path) -> None:
    recorded = raw.get(MANIFEST_DIGEST_KEY)
    if recorded is None:
        raise ArtifactError(
            f"{path} has no {MANIFEST_DIGEST_KEY!r}, so an edit of its labels, sample rate or window could not be "
            f"detected; expected a manifest bound to its content by that digest (it says it was written by edge-ser "
            f"{raw.get('edge_ser_version')!r}; older versions did not write one, and removing it is an edit too). "
            "Re-convert the run with this edge-ser: `edge-ser convert --run R --target T --out A`."
        )
    actual = manifest_digest(raw)
    if recorded != actual:
        raise ArtifactError(
            f"{path} was edited after conversion: its content hashes to {actual[:16]}..., its "
            f"{MANIFEST_DIGEST_KEY} records {str(recorded)[:16]}...; expected the manifest as converted (an edited "
            f"label list, sample rate or window would mislabel the model's outputs or feed it other audio). {_FIX}"
        )


def _positive_int(raw: Mapping[str, Any], key: str, path: Path) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArtifactError(f"{path}: {key}={value!r}; expected a positive integer. {_FIX}")
    return value


def _names(raw: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = raw[key]
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)):
        raise ArtifactError(f"{path}: {key}={value!r}; expected a list of distinct, non-empty names. {_FIX}")
    return tuple(value)


def _tensor_specs(value: Any, key: str, path: Path) -> tuple[dict[str, Any], ...]:
    ok = isinstance(value, list) and all(
        isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("shape"), list)
        and len(spec["shape"]) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in spec["shape"])
        for spec in value)
    if not ok:
        raise ArtifactError(f"{path}: {key} is {value!r:.200}; expected a list of {{name, shape, dtype}} with positive "
                            f"integer shapes. {_FIX}")
    return tuple(value)


def _file_records(value: Any, path: Path) -> dict[str, dict[str, Any]]:
    ok = isinstance(value, dict) and all(
        isinstance(rel, str) and isinstance(rec, dict) and isinstance(rec.get("sha256"), str)
        and _SHA256.fullmatch(rec["sha256"]) is not None
        and isinstance(rec.get("bytes"), int) and not isinstance(rec.get("bytes"), bool) and rec["bytes"] >= 0
        for rel, rec in value.items())
    if not ok:
        raise ArtifactError(f"{path}: files is {value!r:.200}; expected {{relative path: {{sha256 (64 hex digits), "
                            f"bytes}}}}. {_FIX}")
    return dict(value)


def check_consistency(manifest: ArtifactManifest) -> None:
    """The manifest's fields agree with each other: rate, window, input shape, one label per class
    probability, one dimension per A/V/D output. Raises ArtifactError."""
    where = manifest.root / MANIFEST_FILE
    problems = []
    if manifest.sample_rate not in ARTIFACT_SAMPLE_RATES:
        problems.append(f"sample_rate {manifest.sample_rate} Hz is not a rate edge-ser models take "
                        f"({list(ARTIFACT_SAMPLE_RATES)})")
    by_name = {spec["name"]: spec for spec in manifest.outputs}
    absent = [name for name in OUTPUT_NAMES if name not in by_name]
    if absent:
        problems.append(f"outputs lack {absent} (expected {list(OUTPUT_NAMES)})")
    else:
        if by_name["probs"]["shape"][-1] != len(manifest.labels):
            problems.append(f"{len(manifest.labels)} labels for {by_name['probs']['shape'][-1]} class probabilities")
        if by_name["avd"]["shape"][-1] != len(manifest.dimensions):
            problems.append(f"{len(manifest.dimensions)} dimensions for {by_name['avd']['shape'][-1]} A/V/D outputs")
    streaming = manifest.streaming
    if streaming is not None:
        problems.extend(_streaming_problems(manifest, streaming))
    elif manifest.inputs:
        shape = manifest.inputs[0]["shape"]
        if shape[-1] != manifest.window_samples:
            problems.append(f"input shape {shape} does not end in window_samples={manifest.window_samples}")
    window_s = manifest.raw.get("window_s")
    if isinstance(window_s, (int, float)) and not (
            math.isfinite(window_s) and abs(window_s - manifest.window_samples / manifest.sample_rate) < 1e-6):
        problems.append(f"window_s={window_s} is not window_samples / sample_rate = "
                        f"{manifest.window_samples / manifest.sample_rate:g}")
    if problems:
        raise ArtifactError(f"{where} is inconsistent: {'; '.join(problems)}. {_FIX}")


def _streaming_problems(manifest: ArtifactManifest, streaming: Mapping[str, Any]) -> list[str]:
    """A streaming manifest's hop, state list and tensor lists agree with each other."""
    problems = []
    hop = streaming.get("hop_samples")
    if isinstance(hop, bool) or not isinstance(hop, int) or not 0 < hop < manifest.window_samples:
        return [f"streaming.hop_samples={hop!r} is not a sample count below window_samples={manifest.window_samples}"]
    fm_mode = streaming.get("fm_mode", "window")
    if fm_mode not in STREAM_FM_MODES:
        return [f"streaming.fm_mode={fm_mode!r} is not one of this runtime's {list(STREAM_FM_MODES)}"]
    expected_states = stream_states(fm_mode)
    expected_in, expected_out = stream_io_names(fm_mode)
    states = streaming.get("state")
    pairs = [(st.get("input"), st.get("output")) for st in states] if isinstance(states, list) and all(
        isinstance(st, dict) for st in states) else None
    if pairs != list(expected_states):
        return [f"streaming.state pairs {pairs} are not this runtime's {list(expected_states)} (fm_mode {fm_mode})"]
    in_names = [spec["name"] for spec in manifest.inputs]
    out_names = [spec["name"] for spec in manifest.outputs]
    if in_names != list(expected_in) or out_names != list(expected_out):
        return [f"inputs {in_names} / outputs {out_names} are not the streaming graph's "
                f"{list(expected_in)} / {list(expected_out)}"]
    max_hops = streaming.get("max_segment_hops")
    if fm_mode == "cached" and (isinstance(max_hops, bool) or not isinstance(max_hops, int) or max_hops < 1):
        problems.append(f"streaming.max_segment_hops={max_hops!r} is not a positive hop count (fm_mode cached)")
    if manifest.inputs[0]["shape"] != [1, hop]:
        problems.append(f"input {INPUT_NAME!r} has shape {manifest.inputs[0]['shape']}, expected one hop [1, {hop}]")
    shapes_in = {spec["name"]: spec["shape"] for spec in manifest.inputs}
    shapes_out = {spec["name"]: spec["shape"] for spec in manifest.outputs}
    for st in states:
        if not (st.get("shape") == shapes_in[st["input"]] == shapes_out[st["output"]]):
            problems.append(f"state {st['input']}/{st['output']} has shapes {st.get('shape')}, "
                            f"{shapes_in[st['input']]} and {shapes_out[st['output']]}; expected one shape")
    audio_context = streaming.get("audio_context_samples", manifest.window_samples - hop)
    if shapes_in["audio_in"] != [1, audio_context]:
        problems.append(f"audio_in has shape {shapes_in['audio_in']}, expected [1, {audio_context}] (window_samples - "
                        "hop_samples, or streaming.audio_context_samples)")
    return problems


def check_containment(manifest: ArtifactManifest) -> None:
    """Every listed file is a relative path to a regular file inside the artifact folder (no ``..``,
    no absolute path, no symlink), and the model file is listed. Raises ArtifactError."""
    root = manifest.root.resolve()
    for rel in manifest.files:
        pure = PurePosixPath(rel)
        if (not rel or rel.startswith("/") or "\\" in rel or pure.is_absolute() or ".." in pure.parts
                or re.match(r"^[A-Za-z]:", rel) or rel == MANIFEST_FILE):
            raise ArtifactError(
                f"{manifest.root / MANIFEST_FILE} lists the file {rel!r}; expected a relative path inside the artifact "
                f"folder (no '..', no absolute path, not the manifest itself). Nothing outside an artifact is read. "
                f"{_FIX}"
            )
        path = manifest.root / rel
        parts = [manifest.root.joinpath(*pure.parts[:i + 1]) for i in range(len(pure.parts))]
        linked = next((p for p in parts if p.is_symlink()), None)
        if linked is not None or not path.resolve().is_relative_to(root):
            raise ArtifactError(
                f"artifact file {path} is a symbolic link (to {os.path.realpath(linked or path)}); expected regular "
                f"files inside {manifest.root}. Nothing outside an artifact is read. Copy the folder with its files "
                "(cp -rL) or re-run `edge-ser convert`."
            )
    model_file = _model_file(manifest.target)
    if not any(rel == model_file or rel.startswith(model_file + "/") for rel in manifest.files):
        raise ArtifactError(f"{manifest.root / MANIFEST_FILE} does not list {model_file}, the model file of target "
                            f"{manifest.target!r}, so its bytes could not be checked. {_FIX}")


def verify_files(manifest: ArtifactManifest) -> None:
    """Check that every file the manifest lists exists with the recorded size and sha256, and that
    the folder holds no file it does not list (a stale or injected file)."""
    root = manifest.root
    on_disk = set()
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk does not follow symlinked folders
        base = Path(dirpath)
        linked = [d for d in dirnames if (base / d).is_symlink()]
        on_disk.update((base / name).relative_to(root).as_posix() for name in filenames + linked)
    unlisted = sorted(on_disk - set(manifest.files) - {MANIFEST_FILE})
    if unlisted:
        raise ArtifactError(
            f"{manifest.root} holds unlisted {unlisted}; expected exactly the files of its manifest. Re-run "
            "`edge-ser convert --overwrite` or copy the artifact folder again."
        )
    for rel, record in manifest.files.items():
        path = manifest.root / rel
        if not path.is_file():
            raise ArtifactError(
                f"artifact file {path} is missing; the manifest lists it. Copy the whole artifact folder "
                "or re-run `edge-ser convert`."
            )
        actual, size = sha256_file(path), path.stat().st_size
        if actual != record["sha256"] or size != record["bytes"]:
            raise ArtifactError(
                f"artifact file {path} has sha256 {actual[:16]}... ({size} bytes), the manifest records "
                f"{record['sha256'][:16]}... ({record['bytes']} bytes): the file was modified or only partly copied. "
                "Re-copy the artifact folder or re-run `edge-ser convert`."
            )
    if not manifest.model_path.exists():
        raise ArtifactError(f"{manifest.model_path} is missing for target {manifest.target!r}.")

"""The runtime on hostile input (issue 17): edited manifests, corrupted model files with valid hashes,
paths and links out of the artifact, implausible sample rates and durations, bad CLI values, and a
seeded fuzz of the artifact loader.

The tiny ONNX and ExecuTorch fp32 artifacts are built once for this module with the helpers of
tests/test_runtime.py (tiny random Whisper cut at block 1 + a 1-layer TC-GRU head, 0.3 s window).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edge_ser.audio import MAX_DURATION_S, SAMPLE_RATE_RANGE, load_audio, write_audio
from edge_ser.errors import AudioError
from edge_ser.labels import CATEGORIES, SAMPLE_RATE
from edge_ser.runtime import ArtifactError, get_runner, load, read_manifest
from test_runtime import TARGETS, WINDOW, artifacts, fused, voiced  # noqa: F401  (module-scoped fixtures)

MODEL_FILE = {"onnx": "model.onnx", "executorch": "model.pte"}
FIX = r"(re-run `edge-ser convert`|re-convert it|Re-convert)"


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def copy_artifact(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(art, change, *, redigest: bool = False) -> None:
    """Edit manifest.json in place; `redigest` rewrites its manifest_sha256 (as a tool that knows the
    format would), so only the content checks can refuse it."""
    from edge_ser.converters.manifest import write_manifest

    manifest = json.loads((art / "manifest.json").read_text())
    change(manifest)
    if redigest:
        write_manifest(art, manifest)
    else:
        (art / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rehash(art) -> None:
    """Recompute every file's sha256 and the manifest digest, as someone who rewrote a file would."""
    from edge_ser.converters.manifest import file_hashes, write_manifest

    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"] = file_hashes(art)
    write_manifest(art, manifest)


# ---------------------------------------------------------------------------------------
# item 2: the manifest is bound to the model


def _swap_labels(m):
    m["labels"][0], m["labels"][1] = m["labels"][1], m["labels"][0]


MANIFEST_EDITS = {
    "three_labels": lambda m: m.update(labels=["a", "b", "c"]),
    "labels_as_string": lambda m: m.update(labels="neutralhappysad"),
    "swapped_labels": _swap_labels,
    "sample_rate_8k": lambda m: m.update(sample_rate=8000),
    "window": lambda m: m.update(window_samples=m["window_samples"] // 2),
    "file_hash": lambda m: m["files"].pop("parity.json"),
}


@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_any_edit_of_the_manifest_is_refused(artifacts, tmp_path, edit):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    edit_manifest(art, MANIFEST_EDITS[edit])
    with pytest.raises(ArtifactError) as info:
        load(art)
    message = str(info.value)
    assert f"{art / 'manifest.json'} was edited after conversion" in message
    assert "its content hashes to" in message and "manifest_sha256 records" in message
    assert "would mislabel the model's outputs or feed it other audio" in message
    assert "copy it again) or re-run `edge-ser convert`" in message
    with pytest.raises(ArtifactError, match="was edited after conversion"):
        load(art, verify=False)  # the manifest's own check does not depend on hashing the files


def test_a_manifest_without_its_digest_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    edit_manifest(art, lambda m: m.pop("manifest_sha256"))
    with pytest.raises(ArtifactError, match=r"has no 'manifest_sha256'.*could not be detected.*removing it is an edit "
                                            r"too\).*Re-convert the run with this edge-ser"):
        load(art)


REDIGESTED = {  # edits a digest cannot catch because the digest was recomputed: the content checks do
    "three_labels": (lambda m: m.update(labels=["a", "b", "c"]), r"inconsistent: 3 labels for 9 class probabilities"),
    "labels_as_string": (lambda m: m.update(labels="neutral"),
                         r"labels='neutral'; expected a list of distinct, non-empty names"),
    "duplicate_labels": (lambda m: m.update(labels=["sad"] * 9), r"expected a list of distinct, non-empty names"),
    "sample_rate_8k": (lambda m: m.update(sample_rate=8000),
                       r"sample_rate 8000 Hz is not a rate edge-ser models take \(\[16000\]\)"),
    "sample_rate_bool": (lambda m: m.update(sample_rate=True), r"sample_rate=True; expected a positive integer"),
    "window": (lambda m: (m.update(window_samples=4000, window_s=0.25), m["inputs"][0].update(shape=[1, 4000])),
               r"the model takes 4800 samples, the manifest's window_samples is 4000"),
    "outputs": (lambda m: m["outputs"][0].update(shape=[1, 3]), r"3 class probabilities"),
}


@pytest.mark.parametrize("case", sorted(REDIGESTED))
def test_inconsistent_fields_are_refused_even_with_a_recomputed_digest(artifacts, tmp_path, target, case):
    art = copy_artifact(artifacts[target], tmp_path / "a")
    change, pattern = REDIGESTED[case]
    edit_manifest(art, change, redigest=True)
    with pytest.raises(ArtifactError, match=pattern) as info:
        load(art)
    assert re.search(FIX, str(info.value)), str(info.value)


# ---------------------------------------------------------------------------------------
# item 5: corrupted model files with valid hashes, paths outside the artifact


@pytest.mark.parametrize("byte", [4, 6, 7])
def test_pte_with_a_broken_identifier_and_valid_hashes_is_refused_not_aborted(artifacts, tmp_path, byte):
    # Byte 6 with the high bit flipped aborted the whole process (SIGABRT) inside ExecuTorch.
    art = copy_artifact(artifacts["executorch"], tmp_path / "a")
    data = bytearray((art / "model.pte").read_bytes())
    data[byte] ^= 0x80
    (art / "model.pte").write_bytes(bytes(data))
    rehash(art)
    with pytest.raises(ArtifactError, match=r"model.pte is not a readable ExecuTorch program: its flatbuffer "
                                            r"identifier is .*; this runtime reads \['ET12'\]\. .*corrupted"):
        load(art)


def test_pte_with_a_header_pointing_past_the_file_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["executorch"], tmp_path / "a")
    data = bytearray((art / "model.pte").read_bytes())
    data[16:24] = struct.pack("<Q", len(data) * 4)  # program_size of the extended header
    (art / "model.pte").write_bytes(bytes(data))
    rehash(art)
    with pytest.raises(ArtifactError, match=r"header declares a \d+-byte program .* in a \d+-byte file"):
        load(art)


def test_truncated_or_garbage_onnx_with_valid_hashes_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    data = (art / "model.onnx").read_bytes()
    for broken in (data[: len(data) // 3], b"\x08\x07" + bytes(range(256)) * 8):
        (art / "model.onnx").write_bytes(broken)
        rehash(art)
        with pytest.raises(ArtifactError, match=r"model.onnx is not a valid ONNX model: .*Expected the .onnx written "
                                                r"by `edge-ser convert`; the file is corrupted"):
            load(art)


def test_backend_load_errors_become_artifact_errors(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ArtifactError, match=r"model.onnx: the onnx runtime could not load it \(.*\); expected the "
                                            r"model written by `edge-ser convert`"):
        get_runner("onnx", garbage)


@pytest.mark.parametrize("listed", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.json", "C:/x"])
def test_listed_paths_outside_the_folder_are_refused_unopened(artifacts, tmp_path, monkeypatch, listed):
    import edge_ser.runtime.artifact as artifact_module

    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    edit_manifest(art, lambda m: m["files"].update({listed: {"sha256": "0" * 64, "bytes": 1}}), redigest=True)
    hashed = []
    monkeypatch.setattr(artifact_module, "sha256_file", lambda path: hashed.append(path) or "0" * 64)
    with pytest.raises(ArtifactError, match=rf"lists the file {listed!r}; expected a relative path inside the artifact "
                                            r"folder .*Nothing outside an artifact is read"):
        load(art)
    assert hashed == []  # refused before anything was opened


def test_a_symlink_out_of_the_folder_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path / "a")
    outside = tmp_path / "outside.json"
    shutil.move(art / "parity.json", outside)
    (art / "parity.json").symlink_to(outside)  # same bytes, so the sha256 alone would pass
    with pytest.raises(ArtifactError, match=rf"parity.json is a symbolic link \(to {outside}\); expected regular files "
                                            r"inside .*Nothing outside an artifact is read"):
        load(art)


# ---------------------------------------------------------------------------------------
# items 4 and 7: sample rates, durations, A/V/D range


def test_sample_rate_must_be_a_whole_plausible_number_of_hz(artifacts):
    model = load(artifacts["onnx"])
    clip = voiced(11, WINDOW)
    reference = model.predict(clip, SAMPLE_RATE)
    assert model.predict(clip, 16000.0).probabilities == reference.probabilities
    cases = [(16000.5, "is not a whole number of Hz"), (True, "is not a sample rate"),
             (np.bool_(True), "is not a sample rate"), (1, "outside the range edge-ser accepts"),
             (10**7, "outside the range"), (float("nan"), "not a whole number"), ("16000", "is not a sample rate")]
    for rate, reason in cases:
        with pytest.raises(AudioError, match=rf"sample_rate={rate!r}.* {reason}.*expected an integer number of Hz from "
                                             r"4000 to 384000, e.g. 16000"):
            model.predict(clip, rate)


def _wav_with_header_rate(path, rate: int) -> None:
    """A 16 kHz PCM_16 WAV whose header is rewritten to claim `rate` Hz (a broken or hostile file)."""
    write_audio(path, voiced(12, 24_000), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF" and data[12:16] == b"fmt "
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", rate * 2)
    path.write_bytes(bytes(data))


def test_a_file_claiming_1_hz_is_refused_before_decoding(artifacts, tmp_path):
    path = tmp_path / "one_hz.wav"
    _wav_with_header_rate(path, 1)
    assert path.stat().st_size < 50_000
    started = time.perf_counter()
    for call in (lambda: load_audio(path), lambda: load(artifacts["onnx"]).predict_file(path),
                 lambda: list(load(artifacts["onnx"]).timeline_file(path, hop_s=0.1))):
        with pytest.raises(AudioError, match=r"one_hz.wav: sample_rate=1 Hz is outside the range edge-ser accepts; "
                                             r"expected an integer number of Hz from 4000 to 384000.*re-encode"):
            call()
    assert time.perf_counter() - started < 10  # was 16,000-fold resampling: 3.7 GB and still running at 60 s
    assert SAMPLE_RATE_RANGE == (4000, 384000) and MAX_DURATION_S == 600.0


def test_longer_audio_than_the_limit_is_refused_and_streams_with_timeline_file(artifacts, tmp_path):
    clip = voiced(13, 2 * SAMPLE_RATE)
    path = write_audio(tmp_path / "two_s.wav", clip)
    limited = load(artifacts["onnx"], max_duration_s=1.5)
    for call in (lambda: limited.predict_file(path), lambda: limited.predict(clip, SAMPLE_RATE)):
        with pytest.raises(AudioError, match=r"is 2.0 s long \(32000 samples at 16000 Hz\); expected at most 1.5 s per "
                                             r"call\. Read longer recordings block by block with "
                                             r"EmotionModel.timeline_file\(path\)"):
            call()
    streamed = list(limited.timeline_file(path, hop_s=0.2, block_s=0.35))
    whole = load(artifacts["onnx"]).timeline(clip, SAMPLE_RATE, hop_s=0.2)
    assert [(p.start_s, p.end_s) for p in streamed] == [(p.start_s, p.end_s) for p in whole]
    assert all(a.prediction.probabilities == b.prediction.probabilities for a, b in zip(streamed, whole))


# ---------------------------------------------------------------------------------------
# item 6: the runtime CLI refuses bad values with one line


@pytest.mark.parametrize("args, message", [
    (["--timeline", "-1"], "Invalid value for '--timeline': -1.0 is not in the range x>0."),
    (["--timeline", "nan"], "Invalid value for '--timeline': 'nan' is not a finite number; expected x>0."),
    (["--timeline", "inf"], "Invalid value for '--timeline': 'inf' is not a finite number; expected x>0."),
    (["--timeline", "0"], "Invalid value for '--timeline': 0.0 is not in the range x>0."),
    (["--top", "0"], "Invalid value for '--top': 0 is not in the range x>=1."),
    (["--top", "-2"], "Invalid value for '--top': -2 is not in the range x>=1."),
])
def test_cli_predict_refuses_bad_values(artifacts, tmp_path, args, message):
    from edge_ser.cli import root

    path = write_audio(tmp_path / "a.wav", voiced(15, WINDOW))
    result = CliRunner().invoke(root, ["predict", "--artifact", str(artifacts["onnx"]), str(path), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_cli_predict_hop_longer_than_the_window_is_one_error_line(artifacts, tmp_path):
    from edge_ser.cli import root

    path = write_audio(tmp_path / "a.wav", voiced(16, SAMPLE_RATE))
    result = CliRunner().invoke(root, ["predict", "--artifact", str(artifacts["onnx"]), str(path), "--timeline", "2"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: hop_s=2.0 is longer than the 0.3 s window, so audio between windows would "
                                     "be skipped; use hop_s <= 0.3.")


def test_cli_bench_refuses_zero_runs(artifacts):
    from edge_ser.cli import root

    result = CliRunner().invoke(root, ["bench", "--artifact", str(artifacts["onnx"]), "--runs", "0"])
    assert result.exit_code == 2 and "Invalid value for '--runs': 0 is not in the range x>=1." in result.output


# ---------------------------------------------------------------------------------------
# the loader fuzz: every case is the untouched prediction or a clean ArtifactError


def _mutate_json(value, rng: random.Random):
    """A random edit somewhere in a JSON tree: change, delete or retype one node."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        if rng.random() < 0.15:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _mutate_json(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        if rng.random() < 0.2:
            return value[::-1] if len(value) > 1 and value[0] != value[-1] else value[:i] + value[i + 1:]
        return value[:i] + [_mutate_json(value[i], rng)] + value[i + 1:]
    choices = [None, True, 0, -1, 1.5, 1e308, "", "x", [], {}, [value], str(value)]
    if isinstance(value, bool):
        choices.append(not value)
    elif isinstance(value, int):
        choices += [value + 1, value * 2, -value]
    elif isinstance(value, float):
        choices += [value * (1 + 1e-9), -value]
    elif isinstance(value, str):
        choices += [value.upper(), value[::-1] if value[::-1] != value else value + "x", value[:-1]]
    new = rng.choice(choices)
    return new if new != value or type(new) is not type(value) else [new]


def _mutate_manifest(manifest: dict, rng: random.Random) -> dict:
    """One random edit inside the manifest object (it stays an object)."""
    key = rng.choice(sorted(manifest))
    if rng.random() < 0.1:
        return {k: v for k, v in manifest.items() if k != key}
    return {**manifest, key: _mutate_json(manifest[key], rng)}


def _outputs(model, clip):
    p = model.predict(clip, SAMPLE_RATE)
    return p.probabilities, (p.arousal, p.valence, p.dominance), p.embedding.tobytes()


@pytest.mark.parametrize("fuzz_target", TARGETS)
def test_loader_fuzz_ends_in_the_same_prediction_or_an_artifact_error(artifacts, tmp_path, fuzz_target):
    rng = random.Random(17)
    art = copy_artifact(artifacts[fuzz_target], tmp_path / "a")
    clip = voiced(17, WINDOW + 900)
    expected = _outputs(load(art), clip)
    assert list(expected[0]) == list(CATEGORIES)
    originals = {p.name: p.read_bytes() for p in art.iterdir()}
    manifest = json.loads(originals["manifest.json"])
    outcomes = {"same": 0, "refused": 0}
    for case in range(150):
        name = rng.choice(sorted(originals))
        if name == "manifest.json" and rng.random() < 0.7:  # a structural edit of the manifest
            data = json.dumps(_mutate_json(manifest, rng) if rng.random() < 0.1 else _mutate_manifest(manifest, rng),
                              indent=2).encode()
        else:  # a flipped bit somewhere in a file (the model file in half of the cases)
            name = MODEL_FILE[fuzz_target] if rng.random() < 0.5 else name
            data = bytearray(originals[name])
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        (art / name).write_bytes(bytes(data))
        try:
            got = _outputs(load(art, threads=1), clip)
        except ArtifactError as exc:
            assert str(exc) and "\n" not in str(exc).split(". ")[0], (case, name)
            outcomes["refused"] += 1
        else:
            assert got == expected, (case, name)
            outcomes["same"] += 1
        (art / name).write_bytes(originals[name])
    assert outcomes["refused"] >= 100, outcomes
    # Edits with a recomputed digest (a tool that knows the format) reach the content checks: no crash,
    # only ArtifactError or a model whose labels still name every probability.
    from edge_ser.converters.manifest import write_manifest

    for case in range(100):
        write_manifest(art, _mutate_manifest(manifest, rng))
        try:
            model = load(art, threads=1)
            probabilities = model.predict(clip, SAMPLE_RATE).probabilities
        except ArtifactError:
            outcomes["refused"] += 1
        else:
            assert list(probabilities) == list(model.manifest.labels) and len(probabilities) == len(CATEGORIES), case
        (art / "manifest.json").write_bytes(originals["manifest.json"])
    assert _outputs(load(art), clip) == expected and read_manifest(art).labels == tuple(CATEGORIES)

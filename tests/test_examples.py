"""The app-prototype examples: the two Python scripts run end to end on a freshly converted
tiny artifact, and the contract constants of the Swift and C++ starters match a converted
artifact's manifest. The C++ starter is also compiled against the installed ExecuTorch and
run on a real ``.pte`` when a C++ compiler is available.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge_ser.audio import write_audio
from edge_ser.labels import CATEGORIES, DIMENSIONS, SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SNIPPETS = {"swift": EXAMPLES / "ios" / "EmotionClassifier.swift",
            "cpp": EXAMPLES / "android" / "emotion_executorch.cpp"}
TINY_WINDOW_S = 0.5  # lowering cost grows with frames; 0.5 s keeps the conversion to seconds


def speech_like(seconds: float, *, seed: int) -> np.ndarray:
    """(samples,) float32 at 16 kHz: a gliding harmonic tone with syllable-rate bursts plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    return (0.2 * voiced * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _source_info(name: str) -> dict:
    return {"run": name, "run_sha256": None, "feature_model": name, "layer": 1, "n_layers_full": 1,
            "weights_source": None}


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory) -> Path:
    """A tiny ONNX fp32 artifact (tiny WavLM cut at layer 2 + a small TC-GRU) via the real pipeline."""
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.converters.pipeline import convert
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    fm = load_foundation_model("tiny-wavlm", random_init=True)
    # conv/GRU kept tiny for speed; embed_dim stays at its default so the manifest's
    # embedding shape is the production one the mobile starters declare.
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=1)
    fused = build_fused_model(feature_model=fm, layer=2, head=head, window_s=TINY_WINDOW_S)
    validation = [speech_like(TINY_WINDOW_S, seed=s) for s in (1, 2)]
    out = tmp_path_factory.mktemp("artifacts") / "tiny-onnx"
    convert(fused=fused, target="onnx", precision="fp32", out=out, calibration_waveforms=[],
            validation_waveforms=validation, source_info=_source_info("tiny-wavlm"))
    return out


def _run_script(script: str, argv: list[str], monkeypatch) -> int:
    """Run an example as `python examples/<script> argv...` in this process; returns its exit code."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    return int(exit_info.value.code or 0)


# ---------------------------------------------------------------------------------------
# Python examples


def test_classify_file_prints_top3_and_avd_of_the_runtime(onnx_artifact, tmp_path, monkeypatch, capsys):
    from edge_ser.runtime import load

    wav = write_audio(tmp_path / "clip.wav", speech_like(1.3, seed=3))
    assert _run_script("classify_file.py", [str(onnx_artifact), str(wav)], monkeypatch) == 0
    out = capsys.readouterr().out
    # 1.3 s with 0.5 s windows: [0, 0.5), [0.5, 1.0) and one aligned to the end, [0.8, 1.3).
    assert "3 window(s)" in out and "onnx/fp32" in out
    ranked = re.findall(r"^\s+(\d)\. (\w+)\s+([0-9.]+)$", out, flags=re.M)
    expected = load(onnx_artifact).predict_file(wav)
    assert [int(r) for r, _, _ in ranked] == [1, 2, 3]
    assert [name for _, name, _ in ranked] == [name for name, _ in expected.top_k(3)]
    printed = np.array([float(p) for _, _, p in ranked])
    assert np.all(np.diff(printed) <= 0)
    np.testing.assert_allclose(printed, [p for _, p in expected.top_k(3)], atol=6e-4)
    avd = re.search(r"arousal (-?[0-9.]+)\s+valence (-?[0-9.]+)\s+dominance (-?[0-9.]+)", out)
    assert avd, out
    np.testing.assert_allclose([float(v) for v in avd.groups()],
                               [expected.arousal, expected.valence, expected.dominance], atol=6e-4)


def test_classify_file_reports_a_missing_file(onnx_artifact, tmp_path, monkeypatch, capsys):
    code = _run_script("classify_file.py", [str(onnx_artifact), str(tmp_path / "nope.wav")], monkeypatch)
    assert code == 1
    assert "nope.wav" in capsys.readouterr().err


def test_emotion_timeline_writes_png_and_csv(onnx_artifact, tmp_path, monkeypatch, capsys):
    import matplotlib.image

    from edge_ser.runtime import load

    clip = speech_like(2.1, seed=4)
    wav = write_audio(tmp_path / "long.wav", clip)
    png = tmp_path / "plots" / "timeline.png"
    argv = [str(onnx_artifact), str(wav), "--hop", "0.25", "--out", str(png)]
    assert _run_script("emotion_timeline.py", argv, monkeypatch) == 0
    assert f"wrote {png}" in capsys.readouterr().out

    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (720, 1200)  # 10 x 6 inches at 120 dpi
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas

    with open(png.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["start_s", "end_s", "label", *CATEGORIES, *DIMENSIONS]
    # 2.1 s, 0.5 s windows every 0.25 s: starts 0 .. 1.5, then one aligned to the end at 1.6.
    starts = [float(r["start_s"]) for r in rows]
    np.testing.assert_allclose(starts, [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.6])
    np.testing.assert_allclose([float(r["end_s"]) for r in rows], np.array(starts) + TINY_WINDOW_S)
    probs = np.array([[float(r[c]) for c in CATEGORIES] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [r["label"] for r in rows] == [CATEGORIES[i] for i in probs.argmax(axis=1)]

    model = load(onnx_artifact)
    points = model.timeline(clip, SAMPLE_RATE, hop_s=0.25)
    expected = np.array([[p.prediction.probabilities[c] for c in CATEGORIES] for p in points])
    np.testing.assert_allclose(probs, expected, atol=2e-6)
    avd = np.array([[float(r[d]) for d in DIMENSIONS] for r in rows])
    np.testing.assert_allclose(avd, [[p.prediction.arousal, p.prediction.valence, p.prediction.dominance]
                                     for p in points], atol=2e-6)


def test_emotion_timeline_refuses_a_hop_longer_than_the_window(onnx_artifact, tmp_path, monkeypatch, capsys):
    wav = write_audio(tmp_path / "clip.wav", speech_like(1.0, seed=5))
    argv = [str(onnx_artifact), str(wav), "--hop", "2", "--out", str(tmp_path / "t.png")]
    assert _run_script("emotion_timeline.py", argv, monkeypatch) == 2
    assert "expected 0 < hop <= the artifact's window (0.5 s)" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


# ---------------------------------------------------------------------------------------
# Mobile starters: the `edge-ser:manifest` constants


_DTYPES = {"float32": "float32", "Float": "float32", "float16": "float16", "Half": "float16"}
REQUIRED_KEYS = {
    "sample_rate", "window_samples", "inputs.0.name", "inputs.0.shape", "inputs.0.dtype",
    "outputs.0.name", "outputs.0.shape", "outputs.1.name", "outputs.1.shape", "outputs.2.name",
    "outputs.2.shape", "outputs.*.dtype", "labels", "dimensions",
}


def _parse_constant(value: str):
    """A Swift/C++ literal as Python: numbers (with `_` separators), strings, [..]/{..} lists, dtypes."""
    enum = re.fullmatch(r"(?:MLMultiArrayDataType\.|ScalarType::)(\w+)", value)
    if enum:
        return _DTYPES.get(enum.group(1), enum.group(1))
    text = re.sub(r"(?<=\d)_(?=\d)", "", value.replace("{", "[").replace("}", "]"))
    return json.loads(text)


def contract_constants(source: str) -> dict[str, object]:
    """`key -> value` of every `NAME = VALUE  // edge-ser:manifest KEY` line."""
    found: dict[str, object] = {}
    for line in source.splitlines():
        code, _, comment = line.partition("//")
        marker = re.fullmatch(r"\s*edge-ser:manifest\s+(\S+)\s*", comment)
        if not marker:
            continue  # ordinary comments, including prose that mentions the marker
        key = marker.group(1)
        _, equals, value = code.partition("=")
        assert equals, f"marked line has no assignment: {line!r}"
        assert key not in found, f"{key} is marked twice"
        found[key] = _parse_constant(value.strip().rstrip(";").strip())
    return found


def _manifest_value(manifest: dict, key: str):
    node: object = manifest
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part == "*":
            values = [_manifest_value(item, ".".join(parts[i + 1:])) for item in node]
            assert len(set(map(json.dumps, values))) == 1, f"{key}: manifest entries differ: {values}"
            return values[0]
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def contract_mismatches(constants: dict[str, object], manifest: dict) -> list[str]:
    problems = [f"missing marker {key}" for key in sorted(REQUIRED_KEYS - set(constants))]
    for key, value in sorted(constants.items()):
        expected = _manifest_value(manifest, key)
        if value != expected:
            problems.append(f"{key}: snippet has {value!r}, manifest has {expected!r}")
    return problems


def _production_manifest(tiny_manifest: dict) -> dict:
    """The tiny artifact's manifest at the default conversion window (what `edge-ser convert`
    writes without --window-s); everything else (names, dtypes, labels, output shapes) as converted."""
    window = tiny_manifest["window_samples"]
    assert tiny_manifest["inputs"] == [{"name": "waveform", "shape": [1, window], "dtype": "float32"}]
    default_window = _production_manifest_window()
    manifest = json.loads(json.dumps(tiny_manifest))
    manifest["window_samples"] = default_window
    manifest["inputs"][0]["shape"] = [1, default_window]
    return manifest


STREAM_KEYS = {f"streaming.state.{i}.{end}" for i in range(5) for end in ("input", "output")}
"""The state names of a streaming artifact; the starters read the states' shapes from the model."""
CACHED_STREAM_KEYS = STREAM_KEYS | {f"streaming.state.{i}.{end}" for i in (5, 6) for end in ("input", "output")}
"""... of one converted with ``--stream-fm cached``: two more states after the same five."""


def _windowed(constants: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in constants.items() if not k.startswith("streaming.")}


def _streaming(constants: dict[str, object], *, states: int = 5) -> dict[str, object]:
    """The constants marked with the first ``states`` states' names (5: a window-FM streaming manifest)."""
    return {k: v for k, v in constants.items() if k.startswith("streaming.") and int(k.split(".")[2]) < states}


def stream_contract_mismatches(constants: dict[str, object], manifest: dict) -> list[str]:
    required = STREAM_KEYS if manifest["streaming"].get("fm_mode", "window") == "window" else CACHED_STREAM_KEYS
    problems = [f"missing marker {key}" for key in sorted(required - set(constants))]
    return problems + [f"{key}: snippet has {value!r}, manifest has {_manifest_value(manifest, key)!r}"
                       for key, value in sorted(constants.items()) if value != _manifest_value(manifest, key)]


@pytest.fixture(scope="module")
def streaming_pte(tmp_path_factory) -> Path:
    """A tiny ExecuTorch streaming artifact (tiny WavLM cut at layer 2, a 2-layer TC-GRU, 0.2 s hops)."""
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.converters.pipeline import convert
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    fm = load_foundation_model("tiny-wavlm", random_init=True)
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=2)
    fused = build_fused_model(feature_model=fm, layer=2, head=head, window_s=TINY_WINDOW_S)
    out = tmp_path_factory.mktemp("artifacts") / "tiny-stream-pte"
    convert(fused=fused, target="executorch", precision="fp32", out=out, calibration_waveforms=[],
            validation_waveforms=[speech_like(TINY_WINDOW_S, seed=s) for s in (1, 2)],
            source_info=_source_info("tiny-wavlm"), hop_s=0.2)
    return out


@pytest.fixture(scope="module")
def cached_streaming_pte(tmp_path_factory) -> Path:
    """A tiny ExecuTorch streaming artifact converted with fm_mode='cached' (tiny Whisper cut at layer 2)."""
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.converters.pipeline import convert
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    fm = load_foundation_model("tiny-whisper", random_init=True)
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=2)
    fused = build_fused_model(feature_model=fm, layer=2, head=head, window_s=TINY_WINDOW_S)
    out = tmp_path_factory.mktemp("artifacts") / "tiny-stream-cached"
    convert(fused=fused, target="executorch", precision="fp32", out=out, calibration_waveforms=[],
            validation_waveforms=[speech_like(TINY_WINDOW_S, seed=s) for s in (1, 2)],
            source_info=_source_info("tiny-whisper"), hop_s=0.2, fm_mode="cached")
    return out


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_mobile_starter_state_names_match_a_cached_fm_streaming_manifest(cached_streaming_pte, language):
    manifest = json.loads((cached_streaming_pte / "manifest.json").read_text())
    assert manifest["streaming"]["fm_mode"] == "cached" and len(manifest["streaming"]["state"]) == 7
    constants = _streaming(contract_constants(SNIPPETS[language].read_text()), states=7)
    assert stream_contract_mismatches(constants, manifest) == []
    swapped = _streaming(contract_constants(SNIPPETS[language].read_text().replace('"kv_in"', '"stats_in"', 1)),
                         states=7)
    assert any(p.startswith("streaming.state.5.input:") for p in stream_contract_mismatches(swapped, manifest))


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_mobile_starter_constants_match_a_converted_manifest(onnx_artifact, language):
    tiny = json.loads((onnx_artifact / "manifest.json").read_text())
    assert len(tiny["inputs"]) == 1 and len(tiny["outputs"]) == 3  # the marked indices cover every tensor
    constants = _windowed(contract_constants(SNIPPETS[language].read_text()))
    assert contract_mismatches(constants, _production_manifest(tiny)) == []


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_mobile_starter_state_names_match_a_streaming_manifest(streaming_pte, language):
    manifest = json.loads((streaming_pte / "manifest.json").read_text())
    assert len(manifest["streaming"]["state"]) == 5  # the marked indices cover every state
    constants = _streaming(contract_constants(SNIPPETS[language].read_text()))
    assert stream_contract_mismatches(constants, manifest) == []
    swapped = _streaming(contract_constants(SNIPPETS[language].read_text().replace('"h_in"', '"ctx_in"', 1)))
    assert any(p.startswith("streaming.state.1.input:") for p in stream_contract_mismatches(swapped, manifest))


def test_contract_check_catches_a_drifted_constant(onnx_artifact):
    source = SNIPPETS["swift"].read_text()
    manifest = _production_manifest(json.loads((onnx_artifact / "manifest.json").read_text()))
    swapped = source.replace('"happy", "sad"', '"sad", "happy"')
    resized = source.replace("[1, 256]", "[1, 128]")
    unmarked = re.sub(r"\s*// edge-ser:manifest dimensions", "", source)
    assert any(p.startswith("labels:") for p in contract_mismatches(_windowed(contract_constants(swapped)), manifest))
    assert any(p.startswith("outputs.2.shape:")
               for p in contract_mismatches(_windowed(contract_constants(resized)), manifest))
    assert contract_mismatches(_windowed(contract_constants(unmarked)), manifest) == ["missing marker dimensions"]


# ---------------------------------------------------------------------------------------
# The C++ starter, compiled and run against the installed ExecuTorch


class _FrameFront(nn.Module):
    """(1, S) -> (1, S / 160, 160): 10 ms frames, a stand-in front end that lowers in seconds."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform.reshape(1, -1, 160)


class _PoolHead(nn.Module):
    """(1, T, 160) -> (avd (1, 3), logits (1, 9), embedding (1, 256))."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(160, 256)
        self.avd = nn.Linear(256, 3)
        self.classes = nn.Linear(256, 9)

    def forward(self, frames: torch.Tensor):
        embedding = torch.relu(self.embed(frames)).sum(dim=1) * (1.0 / frames.shape[1])
        return self.avd(embedding), 4.0 * self.classes(embedding), embedding


def _executorch_sdk() -> tuple[Path, Path]:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found; the C++ starter is only checked for its constants here")
    import executorch.version  # executorch itself is a namespace package without __file__

    base = Path(executorch.version.__file__).parent
    include, lib = base / "include", base / "lib"
    if not (include / "executorch/extension/module/module.h").is_file() or not (lib / "libexecutorch.so").is_file():
        pytest.skip(f"this executorch wheel ships no C++ headers/libraries under {base}")
    return include, lib


@pytest.mark.slow
def test_cpp_starter_builds_and_matches_the_python_runtime(tmp_path):
    from edge_ser.converters.fused import FusedSER
    from edge_ser.converters.pipeline import convert
    from edge_ser.runtime import load

    include, lib = _executorch_sdk()
    binary = tmp_path / "emotion_executorch"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-Wall", "-Wno-deprecated-declarations", "-DC10_USING_CUSTOM_GENERATED_MACROS",
         f"-I{include}", f"-I{include}/executorch/runtime/core/portable_type/c10", str(SNIPPETS["cpp"]),
         "-o", str(binary), f"-L{lib}", "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_backend_xnnpack",
         "-lexecutorch_kernels_optimized", f"-Wl,-rpath,{lib}"],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]

    torch.manual_seed(0)
    window = _production_manifest_window()
    fused = FusedSER(_FrameFront(), _PoolHead(), window_samples=window).eval()
    artifact = tmp_path / "toy-pte"
    convert(fused=fused, target="executorch", precision="fp32", out=artifact, calibration_waveforms=[],
            validation_waveforms=[speech_like(window / SAMPLE_RATE, seed=6)], source_info=_source_info("frames"))

    clip = speech_like(4.2, seed=7)
    raw = tmp_path / "clip.f32"
    clip.astype("<f4").tofile(raw)
    run = subprocess.run([str(binary), str(artifact / "model.pte"), str(raw), "1.0"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout

    model = load(artifact)
    expected = model.predict(clip, SAMPLE_RATE)
    # 4.2 s with 3 s windows: [0, 3) and one aligned to the end, [1.2, 4.2).
    assert "2 window(s)" in out and expected.windows == 2
    ranked = re.findall(r"^  (\w+)\s+([0-9.]+)$", out, flags=re.M)
    assert [name for name, _ in ranked] == [name for name, _ in expected.top_k(3)]
    np.testing.assert_allclose([float(p) for _, p in ranked], [p for _, p in expected.top_k(3)], atol=6e-4)
    avd = re.search(r"arousal (-?[0-9.]+)\s+valence (-?[0-9.]+)\s+dominance (-?[0-9.]+)", out)
    np.testing.assert_allclose([float(v) for v in avd.groups()],
                               [expected.arousal, expected.valence, expected.dominance], atol=6e-4)
    rows = re.findall(r"^\s+([0-9.]+)-\s*([0-9.]+) s\s+(\w+)", out, flags=re.M)
    points = model.timeline(clip, SAMPLE_RATE, hop_s=1.0)
    assert [(float(s), float(e), label) for s, e, label in rows] == [
        (round(p.start_s, 2), round(p.end_s, 2), p.prediction.label) for p in points]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["streaming_pte", "cached_streaming_pte"])
def test_cpp_starter_streams_like_the_python_runtime(fixture, request, tmp_path):
    """Both state layouts: the five window-FM states, and the seven of a cached-FM artifact."""
    from edge_ser.runtime import load

    streaming_pte = request.getfixturevalue(fixture)
    include, lib = _executorch_sdk()
    binary = tmp_path / "emotion_executorch"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-Wall", "-Wno-deprecated-declarations", "-DC10_USING_CUSTOM_GENERATED_MACROS",
         f"-I{include}", f"-I{include}/executorch/runtime/core/portable_type/c10", str(SNIPPETS["cpp"]),
         "-o", str(binary), f"-L{lib}", "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_backend_xnnpack",
         "-lexecutorch_kernels_optimized", f"-Wl,-rpath,{lib}"],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    clip = speech_like(1.1, seed=8)
    raw = tmp_path / "clip.f32"
    clip.astype("<f4").tofile(raw)
    run = subprocess.run([str(binary), "--stream", str(streaming_pte / "model.pte"), str(raw), "0.07"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^\s+([0-9.]+)-\s*([0-9.]+) s\s+(\w+)\s+([0-9.]+)\s+A (-?[0-9.]+) V (-?[0-9.]+) D (-?[0-9.]+)",
                      run.stdout, flags=re.M)
    points = _pushed(load(streaming_pte), clip)
    assert len(rows) == len(points) == 5  # 1.1 s in 0.2 s hops: 5 whole hops (C++ has no flush)
    for row, point in zip(rows, points):
        p = point.prediction
        assert (float(row[0]), float(row[1]), row[2]) == (round(point.start_s, 2), round(point.end_s, 2), p.label)
        np.testing.assert_allclose([float(v) for v in row[3:]], [p.top_k(1)[0][1], p.arousal, p.valence,
                                                                  p.dominance], atol=6e-3)


def _pushed(model, clip: np.ndarray) -> list:
    stream = model.stream()
    return [p for chunk in np.array_split(clip, 16) for p in stream.push(chunk)]


def test_live_stream_example_prints_one_line_per_hop(streaming_pte, tmp_path, monkeypatch, capsys):
    from edge_ser.runtime import load

    clip = speech_like(0.9, seed=9)
    wav = write_audio(tmp_path / "live.wav", clip)
    assert _run_script("live_stream.py", [str(streaming_pte), str(wav), "--chunk", "0.05"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "hops of 0.2 s, executorch/fp32" in out
    rows = re.findall(r"^\s*([0-9.]+)-\s*([0-9.]+)\s+([0-9.]+)\s+(\w+)\s+([0-9.]+)", out, flags=re.M)
    expected = list(load(streaming_pte).stream().run([clip]))
    assert len(rows) == len(expected) == 5  # 4 whole hops and the flushed partial one
    assert [(float(r[1]), r[3]) for r in rows] == [(round(p.end_s, 2), p.prediction.label) for p in expected]


def test_live_stream_example_refuses_a_windowed_artifact(onnx_artifact, tmp_path, monkeypatch, capsys):
    wav = write_audio(tmp_path / "live.wav", speech_like(0.6, seed=10))
    assert _run_script("live_stream.py", [str(onnx_artifact), str(wav)], monkeypatch) == 1
    assert "--stream-hop" in capsys.readouterr().err


def _production_manifest_window() -> int:
    """Samples in the window `edge-ser convert` uses by default (its --window-s default)."""
    from edge_ser.converters.pipeline import convert_run

    return round(inspect.signature(convert_run).parameters["window_s"].default * SAMPLE_RATE)

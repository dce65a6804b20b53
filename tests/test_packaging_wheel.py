"""The wheel a user installs: built from this tree, checked, and installed runtime-only.

`python -m build` makes the sdist and the wheel (from the sdist); `.ci/check_dist.py` checks
their contents. Then the wheel goes into a fresh venv with only the runtime and ONNX Runtime
(`edge-ser[onnx]`, pinned by requirements/lock.txt; pip may fetch from the package registry and
reuses its wheel cache), and `edge-ser predict` there classifies a clip with an ONNX artifact
that this (full) install converted. The predictions must match the full install's runtime.

The interpreter running the tests is always tried; `EDGE_SER_WHEEL_PYTHONS` (paths separated
by the OS path separator) adds others (`.ci/wheel_check.sh` passes 3.12 and 3.13 when found).
About 30 s per interpreter on 2 cores, hence `slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
WINDOW_S = 0.5


def _check_dist():
    spec = importlib.util.spec_from_file_location("check_dist", REPO / ".ci" / "check_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    return result


def _interpreters() -> list[str]:
    extra = [p for p in os.environ.get("EDGE_SER_WHEEL_PYTHONS", "").split(os.pathsep) if p]
    missing = [p for p in extra if not Path(p).is_file()]
    assert not missing, f"EDGE_SER_WHEEL_PYTHONS names {missing}, which do not exist; expected interpreter paths"
    return [sys.executable, *extra]


def _python_id(path: str) -> str:
    if path == sys.executable:
        return f"py{sys.version_info.major}.{sys.version_info.minor}"
    match = re.search(r"python(\d+\.\d+)", path)
    return f"py{match.group(1)}" if match else Path(path).name


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with this venv's setuptools instead of downloading one per build.
    result = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=REPO)
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {out}: {list(out.iterdir())}"
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory) -> dict:
    """A tiny ONNX fp32 artifact converted by this install, a clip, and the full install's prediction."""
    import torch

    import edge_ser.runtime
    from edge_ser.audio import write_audio
    from edge_ser.converters.fused import build_fused_model
    from edge_ser.converters.pipeline import convert
    from edge_ser.fm import load_foundation_model
    from edge_ser.train.model import TCGRU

    torch.manual_seed(0)
    fm = load_foundation_model("tiny-whisper", random_init=True, seed=0)
    head = TCGRU(fm.spec.hidden_size, conv_channels=8, gru_hidden=8, gru_layers=1)
    with torch.no_grad():
        head.class_head.weight.mul_(20.0)  # a random head is near-uniform: sharpen it so the top-3 is no tie
    fused = build_fused_model(feature_model=fm, layer=1, head=head.eval(), window_s=WINDOW_S)
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * 16000)) / 16000
    clip = (0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    root = tmp_path_factory.mktemp("wheel-artifact")
    validation = [clip[: int(WINDOW_S * 16000)], clip[-int(WINDOW_S * 16000):]]
    convert(fused=fused, target="onnx", precision="fp32", out=root / "onnx", calibration_waveforms=[],
            validation_waveforms=validation,
            source_info={"run": "wheel-test", "run_sha256": None, "feature_model": "tiny-whisper", "layer": 1,
                         "n_layers_full": 2, "weights_source": None})
    write_audio(root / "clip.wav", clip)
    prediction = edge_ser.runtime.load(root / "onnx").predict_file(root / "clip.wav")
    return {"artifact": root / "onnx", "clip": root / "clip.wav", "prediction": prediction}


def test_sdist_and_wheel_hold_the_sources_only(dist):
    problems = _check_dist().check_wheel(str(dist["wheel"])) + _check_dist().check_sdist(str(dist["sdist"]))
    assert problems == []


def test_the_dist_check_catches_a_test_a_data_file_and_a_top_level_runtime(dist, tmp_path):
    bad = tmp_path / dist["wheel"].name
    with zipfile.ZipFile(dist["wheel"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("edge_ser/tests/test_x.py", "")
        dst.writestr("edge_ser/data/clip.wav", b"RIFF")
        dst.writestr("runtime/__init__.py", "")
    problems = "\n".join(_check_dist().check_wheel(str(bad)))
    assert "test or benchmark: edge_ser/tests/test_x.py" in problems
    assert "non-source file: edge_ser/data/clip.wav" in problems
    assert "top level" in problems


@pytest.mark.slow
@pytest.mark.parametrize("python", _interpreters(), ids=_python_id)
def test_runtime_only_wheel_install_predicts_on_an_onnx_artifact(python, dist, onnx_artifact, tmp_path):
    venv = tmp_path / "venv"
    made = _run([python, "-m", "venv", "--without-pip", venv])
    assert made.returncode == 0, f"could not make a venv with {python}: {made.stderr}"
    venv_python = venv / "bin" / "python"
    # This venv's pip installs into the new one (--python): no pip inside it to measure or bootstrap.
    install = _run([sys.executable, "-m", "pip", "--python", venv_python, "install", "--quiet",
                    "-c", LOCK, f"{dist['wheel']}[onnx]"])
    assert install.returncode == 0, (
        f"pip install edge-ser[onnx] into a fresh venv failed (needs the package registry or a wheel cache):\n"
        f"{install.stdout[-3000:]}\n{install.stderr[-3000:]}")

    probe = _run([venv_python, "-c",
                  "import importlib.util, json, sys, edge_ser.runtime, edge_ser.cli\n"
                  "heavy = ['torch', 'pandas', 'transformers', 'executorch', 'onnx', 'coremltools', 'matplotlib']\n"
                  "print(json.dumps({'installed': [m for m in heavy if importlib.util.find_spec(m)],\n"
                  "                  'imported': [m for m in heavy if m in sys.modules]}))"], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"installed": [], "imported": []}, "the runtime-only install pulled in more"

    edge_ser = venv / "bin" / "edge-ser"
    listing = _run([edge_ser, "--help"], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"train\s+\(needs pip install 'edge-ser\[train\]'\)", listing.stdout), listing.stdout
    assert re.search(r"predict\s+Classify audio", listing.stdout), listing.stdout

    refused = _run([edge_ser, "train", "--features", "x"], cwd=tmp_path)
    assert refused.returncode == 1
    assert "pip install 'edge-ser[train]'" in refused.stderr and "Traceback" not in refused.stderr

    predicted = _run([edge_ser, "predict", "--artifact", onnx_artifact["artifact"], onnx_artifact["clip"],
                      "--top", "3"], cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    expected = onnx_artifact["prediction"]
    names = [name for name, _ in expected.top_k(3)]
    line = predicted.stdout.strip()
    assert line.startswith("clip.wav: "), line
    assert [part.split()[0] for part in line.split(": ", 1)[1].split(" | ")[0].split(", ")] == names, (
        f"runtime-only top-3 {line!r} differs from the full install's {expected.top_k(3)}")
    assert f"A {expected.arousal:.2f} V {expected.valence:.2f} D {expected.dominance:.2f}" in line



def test_full_install_loads_and_runs_an_onnx_artifact_without_importing_torch(onnx_artifact):
    """In a full install (torch present) the runtime still never imports torch to run an ONNX
    artifact: importing it costs ~2 s of an app's cold start (the thread count used to come from it)."""
    script = ("import sys, edge_ser.runtime\n"
              f"model = edge_ser.runtime.load({str(onnx_artifact['artifact'])!r})\n"
              f"model.predict_file({str(onnx_artifact['clip'])!r})\n"
              "assert 'torch' not in sys.modules, 'running an ONNX artifact imported torch'\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]

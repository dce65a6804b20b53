"""Runtime benchmark: latency, size and peak memory of every artifact kind that runs here.

For each window (``EDGE_SER_BENCH_WINDOWS``, default 1, 3 and 10 s) and each
(target, precision) in ``EDGE_SER_BENCH_TARGETS``: the fused model (foundation model cut at a
middle block + a random TC-GRU head; no training needed for latency) is converted once into
a cached artifact folder (lowering times recorded), loaded with the runtime shim and timed
window by window (threads pinned, warm-up, p50/p90). Eager PyTorch fp32 is the reference,
the full (uncut) foundation model in eager PyTorch gives the truncation ratio, and Core ML
artifacts are converted for their size only (prediction needs macOS). Peak memory is the
RSS high-water mark of a fresh subprocess that loads the artifact and runs it.

All numbers of one session land in ``benchmarks/results/runtime.{md,json,png}`` with the
ratios int8/fp32 (ExecuTorch, ONNX), ExecuTorch/eager and truncated/full (see report.py).
Compare ratios from one run only: the machine is shared. Configuration: benchmarks/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edge_ser.labels import SAMPLE_RATE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import RuntimeBenchConfig  # noqa: E402

CONFIG = RuntimeBenchConfig.from_env()
ARTIFACT_PAIRS = [p for p in CONFIG.pairs if p[0] != "coreml"]
COREML_PAIRS = [p for p in CONFIG.pairs if p[0] == "coreml"]

_PEAK_RSS_SCRIPT = """
import resource, sys
import numpy as np
from edge_ser.runtime import load
if sys.argv[1] != "-":
    m = load(sys.argv[1], threads=int(sys.argv[2]))
    x = (0.1 * np.random.default_rng(0).standard_normal(m.window_samples)).astype(np.float32)
    for _ in range(3):
        m.run_window(x)
else:
    import importlib
    importlib.import_module(sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
_RUNTIME_MODULE = {"executorch": "executorch.runtime", "onnx": "onnxruntime"}


def speechlike(seed: int, n_samples: int) -> np.ndarray:
    """Harmonic tone with vibrato and a syllable envelope plus noise: speech-like activation ranges
    for calibration (the head is random, so real recordings would add nothing to latency)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    phase = 2 * np.pi * rng.uniform(90, 260) * (t + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.2 + np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    return (rng.uniform(0.1, 0.3) * tone * envelope + 0.01 * rng.standard_normal(n_samples)).astype(np.float32)


def peak_rss_mb(artifact: Path | None, *, threads: int, target: str) -> float:
    """ru_maxrss (MB) of a fresh Python that loads and runs `artifact` (or, for None, only imports
    the target's runtime: the baseline to subtract)."""
    args = [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(artifact) if artifact else "-", str(threads),
            _RUNTIME_MODULE.get(target, "edge_ser.runtime")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env, timeout=600)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0  # Linux reports KiB


# ---------------------------------------------------------------------------------------
# models and artifacts (built once per session, artifacts cached on disk)


@pytest.fixture(scope="module")
def foundation():
    from edge_ser.fm import load_foundation_model

    weights = None
    if CONFIG.model == "whisper-base":
        from edge_ser.fm.weights import installed_whisper_base_ct2

        weights = installed_whisper_base_ct2()
    fm = load_foundation_model(CONFIG.model, weights=weights, random_init=weights is None, seed=0)
    layer = CONFIG.layer or max(1, fm.spec.n_layers // 2)
    return fm, layer


@pytest.fixture(scope="module")
def head(foundation):
    from edge_ser.train.model import TCGRU

    fm, _ = foundation
    torch.manual_seed(0)
    if CONFIG.head == "tiny":
        return TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=16).eval()
    return TCGRU(fm.spec.hidden_size).eval()


_FUSED: dict[tuple[int, float], Any] = {}


def fused_model(foundation, head, *, window_s: float, full: bool = False):
    from edge_ser.converters.fused import build_fused_model

    fm, layer = foundation
    k = fm.spec.n_layers if full else layer
    key = (k, window_s)
    if key not in _FUSED:
        _FUSED[key] = build_fused_model(feature_model=fm, layer=k, head=head, window_s=window_s)
    return _FUSED[key]


def weights_tag(fm) -> str:
    source = fm.weights_source
    sha = getattr(source, "sha256", None) or (source.get("sha256") if isinstance(source, dict) else None)
    return sha[:10] if sha else "random"


def code_tag() -> str:
    """Hash of the sources that shape an artifact (converters, model, front ends, foundation
    models): a cached artifact from older conversion code is never timed as the current one."""
    import hashlib

    import edge_ser
    import edge_ser.converters

    digest = hashlib.sha256()
    roots = [Path(edge_ser.converters.__file__).parent, Path(edge_ser.__file__).parent / "fm"]
    files = [Path(edge_ser.__file__).parent / rel for rel in ("train/model.py", "frontend.py")]
    for path in sorted(files + [f for root in roots for f in root.glob("*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def artifact_for(foundation, head, *, target: str, precision: str, window_s: float) -> tuple[Path, dict]:
    """The cached artifact folder (converted now if missing or unreadable) and its conversion timings."""
    from edge_ser.converters.pipeline import convert
    from edge_ser.io import read_json, write_json_atomic
    from edge_ser.runtime import read_manifest

    fm, layer = foundation
    name = f"{CONFIG.model}-L{layer}-{CONFIG.head}-{weights_tag(fm)}-{code_tag()}-w{window_s:g}-{target}-{precision}"
    out = CONFIG.build_dir / name
    timings_path = CONFIG.build_dir / f"{name}.timings.json"
    try:
        read_manifest(out)
        return out, read_json(timings_path) if timings_path.is_file() else {}
    except Exception:  # noqa: BLE001 - missing or stale cache: convert again
        pass
    fused = fused_model(foundation, head, window_s=window_s)
    n = fused.window_samples
    start = time.perf_counter()
    result = convert(fused=fused, target=target, precision=precision, out=out, overwrite=True,
                     calibration_waveforms=[speechlike(s, n) for s in range(8)],
                     validation_waveforms=[speechlike(s, n) for s in range(100, 103)],
                     source_info={**fused.source, "run": "benchmark (random head)"},
                     num_threads=CONFIG.threads)
    timings = {**result.timings_s, "total": round(time.perf_counter() - start, 2)}
    write_json_atomic(timings_path, timings)
    return out, timings


def _context(rows_and_context) -> None:
    from edge_ser.runtime.latency import machine_info

    _, context = rows_and_context
    if not context:
        context.update({"model": CONFIG.model, "head": CONFIG.head, "threads": CONFIG.threads, "runs": CONFIG.runs,
                        "warmup": CONFIG.warmup, **machine_info()})


def _percentiles(benchmark) -> dict[str, float]:
    data = np.asarray(benchmark.stats.stats.data, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(data, 50)), "p90_ms": float(np.percentile(data, 90)),
            "min_ms": float(data.min())}


# ---------------------------------------------------------------------------------------
# benchmarks

WINDOW_IDS = [f"{w:g}s" for w in CONFIG.windows_s]


@pytest.mark.parametrize("window_s", CONFIG.windows_s, ids=WINDOW_IDS)
@pytest.mark.parametrize(("target", "precision"), ARTIFACT_PAIRS, ids=[f"{t}-{p}" for t, p in ARTIFACT_PAIRS])
def test_artifact_latency(benchmark, foundation, head, runtime_rows, target, precision, window_s):
    from edge_ser.converters.pipeline import ParityError
    from edge_ser.runtime import load

    _context(runtime_rows)
    fm, layer = foundation
    label = f"{target}/{precision}"
    try:
        art, timings = artifact_for(foundation, head, target=target, precision=precision, window_s=window_s)
    except ParityError as exc:
        # A random head + quantization can miss the converter's parity gate; record it rather than hide it.
        runtime_rows[0].append({"label": label, "window_s": window_s, "error": str(exc)[:300]})
        pytest.skip(f"{label} at {window_s:g} s was not written: {exc}")
    model = load(art, threads=CONFIG.threads)
    x = speechlike(0, model.window_samples)
    benchmark.pedantic(model.run_window, args=(x,), rounds=CONFIG.runs, warmup_rounds=CONFIG.warmup, iterations=1)
    manifest = model.manifest.raw
    delegation = manifest.get("delegation") or {}
    rss = peak_rss_mb(art, threads=CONFIG.threads, target=target)
    rss_base = peak_rss_mb(None, threads=CONFIG.threads, target=target)
    row = {
        "label": label, "window_s": window_s, **_percentiles(benchmark),
        "size_bytes": int(manifest["size_bytes"]), "peak_rss_mb": rss, "peak_rss_over_runtime_mb": rss - rss_base,
        "lowering_s": (manifest.get("backend", {}).get("lowering") or {}).get("lowering_s"),
        "conversion_s": timings, "delegated_share": delegation.get("delegated_share"),
        "portable_ops": delegation.get("portable_ops"), "model": CONFIG.model, "layer": layer,
        "n_layers": fm.spec.n_layers,
    }
    row["rtf"] = row["p50_ms"] / 1e3 / window_s
    runtime_rows[0].append(row)
    benchmark.extra_info.update({**row, "threads": CONFIG.threads, "torch": torch.__version__,
                                 "backend": manifest.get("backend")})


@pytest.mark.parametrize("window_s", CONFIG.windows_s, ids=WINDOW_IDS)
@pytest.mark.parametrize("full", [False, True], ids=["truncated", "full"])
def test_eager_latency(benchmark, foundation, head, runtime_rows, window_s, full):
    _context(runtime_rows)
    fm, layer = foundation
    torch.set_num_threads(CONFIG.threads)
    fused = fused_model(foundation, head, window_s=window_s, full=full)
    x = torch.from_numpy(speechlike(0, fused.window_samples)).reshape(1, -1)

    def run():
        with torch.no_grad():
            return fused(x)

    benchmark.pedantic(run, rounds=CONFIG.runs, warmup_rounds=CONFIG.warmup, iterations=1)
    params = sum(p.numel() for p in fused.parameters()) + sum(b.numel() for b in fused.buffers())
    row = {"label": "eager-full/fp32" if full else "eager/fp32", "window_s": window_s, **_percentiles(benchmark),
           "size_bytes": 4 * params, "model": CONFIG.model, "layer": fm.spec.n_layers if full else layer,
           "n_layers": fm.spec.n_layers}
    row["rtf"] = row["p50_ms"] / 1e3 / window_s
    runtime_rows[0].append(row)
    benchmark.extra_info.update({**row, "threads": CONFIG.threads, "torch": torch.__version__,
                                 "size_note": "float32 parameters + buffers (in-memory, not a file)"})


@pytest.mark.parametrize("window_s", CONFIG.windows_s, ids=WINDOW_IDS)
@pytest.mark.parametrize(("target", "precision"), COREML_PAIRS, ids=[f"{t}-{p}" for t, p in COREML_PAIRS])
def test_coreml_size(benchmark, foundation, head, runtime_rows, target, precision, window_s):
    _context(runtime_rows)
    fm, layer = foundation
    holder: dict[str, Any] = {}

    def build():
        holder["art"], holder["timings"] = artifact_for(foundation, head, target=target, precision=precision,
                                                        window_s=window_s)

    benchmark.pedantic(build, rounds=1, iterations=1)
    manifest = json.loads((holder["art"] / "manifest.json").read_text())
    row = {"label": f"{target}/{precision}", "window_s": window_s, "p50_ms": None, "p90_ms": None,
           "size_bytes": int(manifest["size_bytes"]), "conversion_s": holder["timings"],
           "lowering_s": (manifest.get("backend", {}).get("lowering") or {}).get("lowering_s"),
           "model": CONFIG.model, "layer": layer, "n_layers": fm.spec.n_layers,
           "note": "size only: Core ML prediction needs macOS" if sys.platform != "darwin" else None}
    runtime_rows[0].append(row)
    benchmark.extra_info.update(row)
    assert row["size_bytes"] > 0

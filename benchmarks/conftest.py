"""Shared benchmark fixtures: the runtime benchmark's configuration (from environment
variables) and a session-wide row collector that writes ``benchmarks/results/runtime.*``
(Markdown, JSON, PNG) once every benchmark of the session has run.

Environment (all optional):

- ``EDGE_SER_BENCH_MODEL``: foundation model registry name (default ``whisper-base``; real
  weights when the ``whisper-base`` extra is installed, else random init of the real size).
- ``EDGE_SER_BENCH_LAYER``: cut after this block (default: the middle block).
- ``EDGE_SER_BENCH_WINDOWS``: window lengths in seconds, e.g. ``1,3,10`` (the default).
- ``EDGE_SER_BENCH_TARGETS``: ``target:precision`` pairs (default
  ``executorch:fp32,executorch:int8,onnx:fp32,onnx:int8,coreml:fp32``; Core ML: size only off macOS).
- ``EDGE_SER_BENCH_HEAD``: ``paper`` (TC-GRU of SPEC.md: 256 wide, 2 GRU layers) or ``tiny``
  (16 wide, 1 layer); default ``tiny`` for ``tiny-*`` models, else ``paper``.
- ``EDGE_SER_BENCH_RUNS`` (default 20), ``EDGE_SER_BENCH_THREADS`` (default 2).
- ``EDGE_SER_BENCH_BUILD``: artifact cache folder (default ``build/bench-runtime``): lowering a
  real-size model takes minutes, so converted artifacts are reused across runs.
- ``EDGE_SER_BENCH_RESULTS``: where the report goes (default ``benchmarks/results``).

Smoke run: ``EDGE_SER_BENCH_MODEL=tiny-whisper EDGE_SER_BENCH_WINDOWS=1 pytest benchmarks/bench_runtime.py
--benchmark-only``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_PAIRS = "executorch:fp32,executorch:int8,onnx:fp32,onnx:int8,coreml:fp32"


@dataclasses.dataclass(frozen=True)
class RuntimeBenchConfig:
    """What the runtime benchmark measures (see the module docstring for the variables)."""

    model: str
    layer: int | None
    windows_s: tuple[float, ...]
    pairs: tuple[tuple[str, str], ...]
    head: str
    runs: int
    warmup: int
    threads: int
    build_dir: Path
    results_dir: Path

    @classmethod
    def from_env(cls) -> "RuntimeBenchConfig":
        env = os.environ
        model = env.get("EDGE_SER_BENCH_MODEL", "whisper-base")
        layer = env.get("EDGE_SER_BENCH_LAYER")
        try:
            windows = tuple(float(w) for w in env.get("EDGE_SER_BENCH_WINDOWS", "1,3,10").split(",") if w.strip())
        except ValueError:
            raise ValueError(f"EDGE_SER_BENCH_WINDOWS={env.get('EDGE_SER_BENCH_WINDOWS')!r}; expected seconds "
                             "separated by commas, e.g. 1,3,10.") from None
        pairs = []
        for item in env.get("EDGE_SER_BENCH_TARGETS", DEFAULT_PAIRS).split(","):
            target, _, precision = item.strip().partition(":")
            if not target or not precision:
                raise ValueError(f"EDGE_SER_BENCH_TARGETS item {item!r}; expected target:precision, e.g. onnx:int8.")
            pairs.append((target, precision))
        head = env.get("EDGE_SER_BENCH_HEAD", "tiny" if model.startswith("tiny-") else "paper")
        if head not in ("paper", "tiny"):
            raise ValueError(f"EDGE_SER_BENCH_HEAD={head!r}; expected 'paper' or 'tiny'.")
        return cls(
            model=model, layer=int(layer) if layer else None, windows_s=windows, pairs=tuple(pairs), head=head,
            runs=int(env.get("EDGE_SER_BENCH_RUNS", "20")), warmup=3,
            threads=int(env.get("EDGE_SER_BENCH_THREADS", "2")),
            build_dir=Path(env.get("EDGE_SER_BENCH_BUILD", REPO / "build" / "bench-runtime")),
            results_dir=Path(env.get("EDGE_SER_BENCH_RESULTS", BENCH_DIR / "results")),
        )


@pytest.fixture(scope="session")
def runtime_bench_config() -> RuntimeBenchConfig:
    return RuntimeBenchConfig.from_env()


@pytest.fixture(scope="session")
def runtime_rows(runtime_bench_config):
    """Rows appended by bench_runtime.py; written as runtime.md/.json/.png at session end."""
    rows: list[dict] = []
    context: dict = {}
    yield rows, context
    if rows:
        sys.path.insert(0, str(BENCH_DIR))
        from report import write_report

        paths = write_report(rows=rows, out_dir=runtime_bench_config.results_dir, name="runtime", context=context)
        print("\nruntime benchmark report: " + ", ".join(str(p) for p in paths.values()))

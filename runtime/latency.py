"""One latency helper for every backend: warm-up, N timed runs, percentiles, context."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Callable

import numpy as np

from edge_ser.cpu_features import cpu_features


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """Latency of one callable on one input. Times in milliseconds."""

    label: str
    audio_s: float
    runs: int
    warmup: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    real_time_factor: float  # processing time / audio duration at p50 (lower is faster)
    context: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        return (f"{self.label}: p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms "
                f"on {self.audio_s:g} s of audio (RTF {self.real_time_factor:.4f}, {self.threads} threads, "
                f"{self.runs} runs after {self.warmup} warm-up)")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        # int8 kernels (and so latency and, for some schemes, numerics) differ by instruction set
        "cpu": cpu_features().to_dict(),
    }
    for module in ("torch", "executorch", "onnxruntime", "coremltools", "numpy"):
        try:
            info[f"{module}_version"] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing backend just isn't listed
            continue
    return info


def measure_latency(fn: Callable[[], Any], *, label: str, audio_s: float, threads: int, runs: int = 20,
                    warmup: int = 3) -> LatencyReport:
    """Time `fn()` `runs` times after `warmup` untimed calls (perf_counter, wall time)."""
    if runs < 1:
        raise ValueError(f"runs={runs}; expected at least 1.")
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1e3
    p50 = float(np.percentile(times, 50))
    return LatencyReport(
        label=label, audio_s=float(audio_s), runs=runs, warmup=warmup, threads=int(threads),
        p50_ms=p50, p90_ms=float(np.percentile(times, 90)), p99_ms=float(np.percentile(times, 99)),
        mean_ms=float(times.mean()), min_ms=float(times.min()),
        real_time_factor=p50 / 1e3 / audio_s if audio_s > 0 else float("nan"), context=machine_info(),
    )


def bench_artifact(artifact_dir, *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                   seed: int = 0) -> LatencyReport:
    """Latency of one window through a loaded artifact, on fixed pseudo-speech noise."""
    from edge_ser.runtime.model import load

    model = load(artifact_dir, threads=threads)
    rng = np.random.default_rng(seed)
    window = (0.1 * rng.standard_normal(model.window_samples)).astype(np.float32)
    m = model.manifest
    return measure_latency(lambda: model.run_window(window), label=f"{m.target}/{m.precision}",
                           audio_s=m.window_s, threads=model.runner.threads, runs=runs, warmup=warmup)

"""What cutting a foundation model after block k saves: parameters, FLOPs, CPU time.

"Full" is the same waveform-in module cut after the last block (``truncated(L)``), so
full and truncated differ only in the blocks skipped (the front end, conv feature
extractor and positional embedding run in both). FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv/attention; elementwise ops
are not counted). Weights do not change any of these numbers, so random init is the
default: real-size models can be measured without their checkpoints.

The paper (Table 7, SPEC.md section 3) reports 16 % less compute for WavLM and 8 % for
HuBERT after truncation, and no figure for Whisper.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn

from edge_ser.labels import SAMPLE_RATE

PAPER_REPORTED_SAVING: dict[str, float | None] = {"wavlm": 0.16, "hubert": 0.08, "whisper": None}
"""Compute reduction the paper reports per FM family (Table 7); None = not stated."""

PAPER_IMPLIED_LAYER: dict[str, int] = {"wavlm-large": 20, "hubert-large": 22, "whisper-medium": 12}
"""k* implied by the reported savings for 24-block models (SPEC.md section 3); Whisper's is
not stated, so its entry is a middle layer for comparison only."""


@dataclasses.dataclass(frozen=True)
class DurationSavings:
    """Cost of the full and the truncated model on one input length."""

    duration_s: float
    flops_full: int
    flops_truncated: int
    flops_fraction_saved: float
    cpu_ms_full: float | None
    cpu_ms_truncated: float | None
    time_fraction_saved: float | None


@dataclasses.dataclass(frozen=True)
class TruncationSavings:
    """Parameters, FLOPs and CPU time of a model cut after block `k` vs all `n_layers` blocks."""

    model: str
    family: str
    k: int
    n_layers: int
    params_full: int
    params_truncated: int
    params_fraction_saved: float
    blocks_fraction_saved: float  # (L - k) / L: SPEC.md section 7 item 13
    per_duration: tuple[DurationSavings, ...]
    paper_reported_saving: float | None
    threads: int
    timing_repeats: int
    random_init: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_text(self) -> str:
        paper = "not stated" if self.paper_reported_saving is None else f"{self.paper_reported_saving:.0%}"
        lines = [
            f"{self.model}: blocks 1..{self.k} of {self.n_layers} "
            f"({self.blocks_fraction_saved:.1%} of blocks skipped; paper reports {paper} for {self.family})",
            f"  params  {self.params_full / 1e6:9.2f} M -> {self.params_truncated / 1e6:9.2f} M "
            f"(-{self.params_fraction_saved:.1%})",
        ]
        for d in self.per_duration:
            line = (f"  {d.duration_s:4.1f} s  GFLOPs {d.flops_full / 1e9:8.2f} -> {d.flops_truncated / 1e9:8.2f} "
                    f"(-{d.flops_fraction_saved:.1%})")
            if d.cpu_ms_full is not None:
                line += (f"  CPU {d.cpu_ms_full:8.1f} ms -> {d.cpu_ms_truncated:8.1f} ms "
                         f"(-{d.time_fraction_saved:.1%}, {self.threads} threads)")
            lines.append(line)
        return "\n".join(lines)


def _count_params(module: nn.Module) -> int:
    # parameters() already de-duplicates shared tensors.
    return int(sum(p.numel() for p in module.parameters()))


def _run(module: nn.Module, wave: torch.Tensor) -> None:
    module(wave)


def count_flops(module: nn.Module, wave: torch.Tensor) -> int:
    """Total FLOPs of one forward pass on `wave` ((1, samples) at 16 kHz)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        _run(module, wave)
    return int(counter.get_total_flops())


def median_cpu_ms(module: nn.Module, wave: torch.Tensor, *, repeats: int = 3) -> float:
    """Median wall time (ms) of `repeats` forward passes after one warm-up pass."""
    times = []
    with torch.inference_mode():
        _run(module, wave)
        for _ in range(repeats):
            start = time.perf_counter()
            _run(module, wave)
            times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def truncation_savings(
    name: str,
    *,
    k: int,
    durations_s: Sequence[float] = (3.0, 10.0),
    measure_time: bool = True,
    random_init: bool = True,
    weights: str | None = None,
    repeats: int = 3,
    seed: int = 0,
) -> TruncationSavings:
    """Measure what running only blocks 1..k of FM `name` saves vs all of its blocks.

    Args:
        name: FM registry name (``edge_ser.fm.list_models()``).
        k: last block kept (1..L).
        durations_s: input lengths (s of 16 kHz audio) for FLOPs and timing.
        measure_time: also time both on CPU (median of `repeats` after a warm-up).
        random_init: random weights (sizes and costs do not depend on the values).
        weights: real weights instead (only with ``random_init=False``).
        repeats: timing repetitions per model and length.
        seed: seed of the random weights and of the test waveform.
    """
    from edge_ser.fm import load_foundation_model

    loaded = load_foundation_model(name, weights=weights, random_init=random_init, seed=seed)
    spec = loaded.spec
    n_layers = int(spec.n_layers)
    if not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(f"k={k!r} is out of range for {name}; expected an int in 1..{n_layers}.")
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; expected at least 1.")
    generator = torch.Generator().manual_seed(seed)
    try:
        full = loaded.truncated(n_layers).eval()
        cut = loaded.truncated(k).eval()
        params_full, params_cut = _count_params(full), _count_params(cut)
        rows = []
        for duration in durations_s:
            wave = 0.1 * torch.randn(1, int(round(duration * SAMPLE_RATE)), generator=generator)
            flops_full, flops_cut = count_flops(full, wave), count_flops(cut, wave)
            ms_full = ms_cut = saved_time = None
            if measure_time:
                ms_full = median_cpu_ms(full, wave, repeats=repeats)
                ms_cut = median_cpu_ms(cut, wave, repeats=repeats)
                saved_time = 1.0 - ms_cut / ms_full
            rows.append(DurationSavings(
                duration_s=float(duration), flops_full=flops_full, flops_truncated=flops_cut,
                flops_fraction_saved=1.0 - flops_cut / flops_full if flops_full else 0.0,
                cpu_ms_full=ms_full, cpu_ms_truncated=ms_cut, time_fraction_saved=saved_time,
            ))
    finally:
        # Real-size models are 300M+ parameters: free one before the caller builds the next.
        del loaded
        full = cut = None  # noqa: F841
        gc.collect()
    return TruncationSavings(
        model=name, family=str(spec.family), k=int(k), n_layers=n_layers,
        params_full=params_full, params_truncated=params_cut,
        params_fraction_saved=1.0 - params_cut / params_full,
        blocks_fraction_saved=(n_layers - k) / n_layers, per_duration=tuple(rows),
        paper_reported_saving=PAPER_REPORTED_SAVING.get(str(spec.family)),
        threads=torch.get_num_threads(), timing_repeats=int(repeats), random_init=bool(random_init),
    )


__all__ = ["PAPER_IMPLIED_LAYER", "PAPER_REPORTED_SAVING", "DurationSavings", "TruncationSavings",
           "count_flops", "median_cpu_ms", "truncation_savings"]

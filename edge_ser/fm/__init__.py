"""Foundation models: specs and registry, weight resolution, loading and truncation.

>>> from edge_ser.fm import get_spec, list_models
>>> get_spec("hubert-large").hidden_size
1024
"""

from edge_ser.fm.model import (
    LoadedFoundationModel,
    TruncatedFoundationModel,
    WaveformNormalizer,
    fold_weight_norm,
    frames_for_samples,
    load_foundation_model,
)
from edge_ser.fm.specs import (
    FAMILIES,
    FRAME_RATE_HZ,
    MODEL_SPECS,
    FoundationModelSpec,
    get_spec,
    list_models,
)
from edge_ser.fm.weights import (
    WEIGHT_KINDS,
    WeightsNotFoundError,
    WeightsSource,
    edge_ser_cache_dir,
    installed_whisper_base_ct2,
    resolve_weights,
)

__all__ = [
    "FAMILIES",
    "FRAME_RATE_HZ",
    "MODEL_SPECS",
    "WEIGHT_KINDS",
    "FoundationModelSpec",
    "LoadedFoundationModel",
    "TruncatedFoundationModel",
    "WaveformNormalizer",
    "WeightsNotFoundError",
    "WeightsSource",
    "edge_ser_cache_dir",
    "fold_weight_norm",
    "frames_for_samples",
    "get_spec",
    "installed_whisper_base_ct2",
    "list_models",
    "load_foundation_model",
    "resolve_weights",
]

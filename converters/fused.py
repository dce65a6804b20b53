"""The fused, waveform-in model that every converter target exports.

``FusedSER`` = front (truncated foundation model or MFBF0, input normalisation inside) +
head (the TC-GRU export variant). It takes exactly ``window_samples`` samples of 16 kHz
mono float32 audio and returns ``(probs, avd, embedding)``; this is the graph contract
of the artifact folder (docs/architecture.md).

Longer audio is windowed by the runtime (``edge_ser.runtime.EmotionModel.predict`` averages
windows, ``.timeline`` returns them); :func:`fit_to_window` cuts calibration/validation clips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edge_ser.errors import AudioError, ManifestError
from edge_ser.labels import CATEGORIES, SAMPLE_RATE
from edge_ser.runtime.artifact import INPUT_NAME, OUTPUT_NAMES  # the graph's I/O names, defined once


class FusedSER(nn.Module):
    """Waveform in, emotion out, in one exportable graph.

    Args:
        front: ``(1, window_samples)`` float32 waveform -> ``(1, frames, N)`` features.
        head: ``(1, frames, N)`` -> ``(avd (1, 3), logits (1, 9), embedding (1, E))``.
        window_samples: the fixed input length in samples at 16 kHz.

    ``forward`` returns ``probs (1, C)`` (softmax over :attr:`labels`: the 9 :data:`CATEGORIES`,
    or a run's corpus vocabulary), ``avd (1, 3)`` (arousal, valence, dominance on the [0, 1] scale)
    and ``embedding (1, E)``.
    """

    def __init__(self, front: nn.Module, head: nn.Module, *, window_samples: int) -> None:
        super().__init__()
        if int(window_samples) <= 0:
            raise ValueError(f"window_samples={window_samples}; expected a positive sample count at 16 kHz.")
        self.front = front
        self.head = head
        self.window_samples = int(window_samples)
        self.source: dict[str, Any] = {}  # filled by build_fused_model; lands in the manifest
        n_classes = getattr(head, "n_classes", len(CATEGORIES))
        # Class names of the probs output, in order (the manifest's "labels"). A head with another
        # number of classes must be given its names (build_fused_model reads them from run.json).
        self.labels: tuple[str, ...] | None = CATEGORIES if n_classes == len(CATEGORIES) else None

    @property
    def window_s(self) -> float:
        return self.window_samples / SAMPLE_RATE

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Static shapes: this check runs at trace time and keeps the exported graph fixed-size.
        if waveform.dim() != 2 or waveform.shape[0] != 1 or waveform.shape[1] != self.window_samples:
            raise AudioError(
                f"waveform has shape {tuple(waveform.shape)}; expected (1, {self.window_samples}) "
                f"({self.window_s:g} s at {SAMPLE_RATE} Hz). Crop/pad with "
                "edge_ser.converters.fused.fit_to_window, or run long audio through edge_ser.runtime (it windows it)."
            )
        features = self.front(waveform)
        avd, logits, embedding = self.head(features)
        probs = torch.softmax(logits, dim=-1)
        return probs, avd, embedding

    def with_gru_form(self, gru_form: str) -> "FusedSER":
        """This model with the head's GRU written in ``gru_form`` (``"native"``, ``"unrolled"`` or
        ``"scan"``, see :func:`build_fused_model`); same outputs. A head that is not a trained
        :class:`~edge_ser.train.model.TCGRU` (already an export form, or another module) is kept as it
        is. Shares the front's weights."""
        from edge_ser.converters.export_forms import export_head
        from edge_ser.train.ensemble import EnsembleTCGRU
        from edge_ser.train.model import TCGRU

        _check_gru_form(gru_form)
        if gru_form == "native" or not isinstance(self.head, (TCGRU, EnsembleTCGRU)):
            return self
        head = export_head(self.head, frames=frames_for_window(self.front, self.window_samples),
                           gru_form=gru_form).eval()
        fused = FusedSER(self.front, head, window_samples=self.window_samples).eval()
        fused.source = self.source
        fused.labels = self.labels
        return fused

    def with_front_form(self, whisper_front_form: str) -> "FusedSER":
        """This model with a Whisper front written as ``whisper_front_form``: ``"transformers"``
        (as it is) or ``"bmm"`` (:class:`~edge_ser.converters.whisper_export.WindowedWhisperFM`,
        the same features in delegate-friendly ops). Other fronts are kept. Shares the weights."""
        from edge_ser.converters.whisper_export import WHISPER_FRONT_FORMS, export_front

        if whisper_front_form not in WHISPER_FRONT_FORMS:
            raise ValueError(f"whisper_front_form={whisper_front_form!r}; expected one of {', '.join(WHISPER_FRONT_FORMS)}.")
        if whisper_front_form == "transformers":
            return self
        front = export_front(self.front, window_samples=self.window_samples)
        if front is self.front:
            return self
        fused = FusedSER(front, self.head, window_samples=self.window_samples).eval()
        fused.source = self.source
        fused.labels = self.labels
        return fused

    def example_input(self) -> torch.Tensor:
        """A deterministic ``(1, window_samples)`` float32 input for tracing (not for calibration)."""
        generator = torch.Generator().manual_seed(0)
        return 0.1 * torch.randn(1, self.window_samples, generator=generator)


def _check_gru_form(gru_form: str) -> None:
    from edge_ser.converters.export_forms import GRU_FORMS

    forms = ("native", *GRU_FORMS)
    if gru_form not in forms:
        raise ValueError(f"gru_form={gru_form!r}; expected one of {', '.join(forms)}.")


def frames_for_window(front: nn.Module, window_samples: int) -> int:
    """Number of feature frames the front produces for one window (traced, not guessed)."""
    with torch.no_grad():
        features = front(torch.zeros(1, int(window_samples)))
    if features.dim() != 3:
        raise ValueError(
            f"front end returned shape {tuple(features.shape)}; expected (batch, frames, features). "
            "Pass a truncated foundation model (LoadedFoundationModel.truncated(k)) or MFBF0()."
        )
    return int(features.shape[1])


def build_fused_model(
    *,
    run_dir: str | Path | None = None,
    feature_model: Any = None,
    layer: int | None = None,
    head: nn.Module | None = None,
    window_s: float = 3.0,
    weights: str | Path | None = None,
    random_init: bool = False,
    gru_form: str = "native",
    labels: Sequence[str] | None = None,
) -> FusedSER:
    """Truncate the feature model at the run's layer and fuse it with the trained head.

    ``gru_form``: ``"native"`` (default) keeps the training head with ``nn.GRU`` (ONNX exports
    it as one GRU op; the reference for parity); ``"unrolled"`` writes the GRU out per frame
    (Core ML converts it); ``"scan"`` makes it one ``torch.scan`` per layer (ExecuTorch lowers
    the step once and XNNPACK runs it). All three compute the same outputs. The converter
    pipeline picks each target's form itself (:meth:`FusedSER.with_gru_form`).

    Either ``run_dir`` (a training run folder; feature model, layer and weights come from
    its run info) or ``feature_model`` (a registry name such as ``"tiny-wavlm"``,
    ``"mfbf0"``, or an already loaded foundation model), ``layer`` and ``head``.

    Unless ``gru_form="native"``, a TC-GRU head is replaced by its export form
    (:func:`edge_ser.converters.export_forms.export_head`; same outputs as the training module).
    ``labels``: the class names of a head given directly (default: the 9 categories when it has 9
    outputs); a run's names come from its run.json vocabulary.
    Returns a :class:`FusedSER` in eval mode with ``.source`` describing where it came from.
    """
    if window_s <= 0:
        raise ValueError(f"window_s={window_s}; expected a positive number of seconds (e.g. 3.0).")
    window_samples = int(round(window_s * SAMPLE_RATE))
    source: dict[str, Any] = {}
    cache_manifest: dict[str, Any] | None = None
    seed = 0
    if run_dir is not None:
        if feature_model is not None or head is not None:
            raise ValueError(
                "got run_dir and also feature_model/head; expected one or the other. "
                "Pass run_dir alone to convert a training run, or feature_model + layer + head."
            )
        from edge_ser.train.runs import RunInfo, read_run_info

        run = read_run_info(run_dir)
        head = run.load_head()
        _, cache_manifest = run.feature_manifest()
        provenance = run.provenance()
        feature_model, layer = run.feature_model, run.layer
        if weights is None and not random_init and feature_model != "mfbf0":
            rebuild = RunInfo.foundation_weights(cache_manifest)
            weights, random_init, seed = rebuild["weights"], rebuild["random_init"], rebuild["seed"]
        source["run"] = Path(run_dir).name
        source["provenance"] = provenance
        labels = run.vocabulary.classes
        source["label_vocabulary"] = run.vocabulary.kind
    if feature_model is None or head is None:
        raise ValueError(
            "no model to fuse: expected run_dir=..., or feature_model=<name or loaded model>, layer=k and head=<module>."
        )
    front, front_source = _truncated_front(feature_model, layer=layer, weights=weights, random_init=random_init,
                                           seed=seed)
    if cache_manifest is not None:
        _check_front_matches_features(front_source, cache_manifest, source["provenance"], feature_model=feature_model,
                                      weights=weights, run_dir=run_dir)
    front_source.pop("_loaded", None)
    source.update(front_source)
    if hasattr(front, "for_window"):
        front = front.for_window(window_samples)
    fused = FusedSER(front.eval(), head.eval(), window_samples=window_samples).eval()
    fused.source = source
    _name_outputs(fused, labels)
    return fused.with_gru_form(gru_form)


def _check_front_matches_features(front_source: dict[str, Any], cache_manifest: Mapping[str, Any],
                                  provenance: Mapping[str, Any], *, feature_model: Any, weights: Any,
                                  run_dir: Any) -> None:
    """The rebuilt foundation model is the one the run's features came from: the weights' sha256
    (:meth:`RunInfo.check_foundation_weights`) and the input level it normalises to."""
    from edge_ser.train.runs import RunInfo

    RunInfo.check_foundation_weights(cache_manifest, (front_source.get("weights_source") or {}).get("sha256"),
                                     loaded_from=weights or "random init")
    if isinstance(feature_model, str) and feature_model != "mfbf0":
        from edge_ser.fm.model import check_input_level

        check_input_level(provenance.get("input_level"), front_source.pop("_loaded"),
                          where=f"the feature cache {provenance['feature_dir']} of run {run_dir}")


def _name_outputs(fused: FusedSER, labels: Sequence[str] | None) -> None:
    """Set ``fused.labels`` to ``labels`` (one name per class output), or keep the head's default
    (the 9 categories for a 9-class head); raises when neither gives one name per output."""
    n_classes = getattr(fused.head, "n_classes", len(CATEGORIES))
    if labels is not None:
        if len(labels) != n_classes:
            raise ManifestError(f"the head has {n_classes} class outputs but {len(labels)} label names were given "
                                f"({list(labels)}); expected one name per output.")
        fused.labels = tuple(str(c) for c in labels)
    if fused.labels is None:
        raise ValueError(f"the head has {getattr(fused.head, 'n_classes', '?')} class outputs; pass labels=[...] with "
                         "one name per output (a run folder records them in run.json).")


def _truncated_front(feature_model: Any, *, layer: int | None, weights: Any, random_init: bool,
                     seed: int = 0) -> tuple[nn.Module, dict]:
    if isinstance(feature_model, str) and feature_model == "mfbf0":
        from edge_ser.frontend import MFBF0

        return MFBF0(), {"feature_model": "mfbf0", "layer": 0, "n_layers_full": 0, "weights_source": None}
    if isinstance(feature_model, str):
        from edge_ser.fm import load_foundation_model

        loaded = load_foundation_model(feature_model, weights=weights, random_init=random_init, seed=seed)
    else:
        loaded = feature_model
    if not hasattr(loaded, "truncated"):
        raise ValueError(
            f"feature_model is {type(loaded).__name__}; expected a registry name or a LoadedFoundationModel "
            "(edge_ser.fm.load_foundation_model(...))."
        )
    spec = loaded.spec
    if layer is None or not 1 <= int(layer) <= int(spec.n_layers):
        raise ValueError(
            f"layer={layer} for {spec.name}; expected 1..{spec.n_layers} (hidden_states index of the selected block)."
        )
    source = {
        "feature_model": spec.name,
        "layer": int(layer),
        "n_layers_full": int(spec.n_layers),
        "weights_source": _jsonable_weights(getattr(loaded, "weights_source", None)),
        "input_level": getattr(loaded, "input_level", None),
        "_loaded": loaded,
    }
    return loaded.truncated(int(layer)), source


def _jsonable_weights(weights_source: Any) -> Any:
    if weights_source is None or _is_jsonable(weights_source):
        return weights_source
    if dataclasses.is_dataclass(weights_source):
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(weights_source).items()}
    return str(weights_source)


def _is_jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_is_jsonable(v) for v in value)
    ) or (isinstance(value, dict) and all(isinstance(k, str) and _is_jsonable(v) for k, v in value.items()))


# ---------------------------------------------------------------------------------------
# One window from a clip (calibration and validation audio)


def fit_to_window(waveform: np.ndarray, window_samples: int, *, crop: str = "center") -> np.ndarray:
    """Crop (``"center"`` or ``"start"``) or zero-pad at the end a mono ``(samples,)`` signal
    to exactly ``window_samples``; returns float32 ``(window_samples,)``."""
    wave = np.asarray(waveform, dtype=np.float32)
    if wave.ndim != 1:
        raise AudioError(f"waveform has shape {wave.shape}; expected mono (samples,). Downmix first.")
    if crop not in ("center", "start"):
        raise ValueError(f"crop={crop!r}; expected 'center' or 'start'.")
    if len(wave) >= window_samples:
        offset = (len(wave) - window_samples) // 2 if crop == "center" else 0
        return np.ascontiguousarray(wave[offset : offset + window_samples])
    return np.pad(wave, (0, window_samples - len(wave)))


__all__ = ["FusedSER", "build_fused_model", "frames_for_window", "fit_to_window", "OUTPUT_NAMES", "INPUT_NAME"]

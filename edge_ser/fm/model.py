"""A loaded, frozen foundation model: all hidden states, or a waveform-in model cut at layer k.

``load_foundation_model(name)`` resolves the weights (:mod:`edge_ser.fm.weights`), puts
the model in eval mode with gradients off, and folds the ``weight_norm`` of the
wav2vec2-style positional convolution into a plain weight (needed before any export;
the values are unchanged). Input normalisation and, for Whisper, the log-mel front end
(:class:`edge_ser.frontend.WhisperLogMel`) are part of the graph, so
``truncated(k)`` maps a raw 16 kHz waveform to layer-k features.

Whisper without 30 s padding
----------------------------
transformers' Whisper encoder only accepts 3000 mel frames (30 s). edge-ser runs it on
the real length instead: the positional table is sliced to the first T rows and
``config.max_source_positions`` is set to T for that call (both are needed). Effects:

* compute and memory scale with the utterance (3 s costs ~1/10 of a 30 s window, and
  the exported model has a fixed, short input);
* the output is **not** identical to the padded computation. The transformer input
  (``hidden_states[0]``) matches on every frame except the last one or two, whose
  log-mel windows see reflect padding here and digital silence there. From block 1 on
  every frame differs, because attention no longer sees ~(1500 - T) frames of encoded
  silence. Pretrained Whisper was only trained on padded windows, so features from
  short input are a (widely used) approximation; the test suite measures the gap.
* an odd number of mel frames is padded with one frame at the log-mel floor (the value
  silence takes after Whisper's ``max - 8`` clamp), so T = ceil((S // 160) / 2), which
  is ``ceil(S / 320)`` whenever S is a multiple of 160.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_ser.errors import AudioError
from edge_ser.fm.specs import (
    SAMPLES_PER_FRAME,
    WHISPER_HOP_SAMPLES,
    WHISPER_MAX_SECONDS,
    FoundationModelSpec,
    _shallow_module_clone,
    get_spec,
)
from edge_ser.fm.weights import WeightsSource, resolve_weights
from edge_ser.labels import SAMPLE_RATE

_W2V_RECEPTIVE_FIELD: int = 400
"""Samples seen by the first output frame of the wav2vec2-style conv stack (25 ms)."""

_ZNORM_EPS: float = 1e-7
"""Variance epsilon of transformers' Wav2Vec2FeatureExtractor zero-mean-unit-var norm."""

_WHISPER_MIN_SAMPLES: int = 201
"""WhisperLogMel needs more samples than its 200-sample reflect pad."""


def frames_for_samples(spec: FoundationModelSpec | str, n_samples: int) -> int:
    """Output frames of `spec`'s model for `n_samples` of 16 kHz audio (exactly what it returns).

    WavLM/HuBERT: ``(S - 400) // 320 + 1`` (the conv stack has no padding).
    Whisper (unpadded, see module docstring): ``ceil((S // 160) / 2)``.

    >>> frames_for_samples("tiny-wavlm", 48_000), frames_for_samples("tiny-whisper", 48_000)
    (149, 150)
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    n = int(n_samples)
    if spec.family == "whisper":
        return -(-(n // WHISPER_HOP_SAMPLES) // 2)
    if n < _W2V_RECEPTIVE_FIELD:
        return 0
    return (n - _W2V_RECEPTIVE_FIELD) // SAMPLES_PER_FRAME + 1


def min_samples(spec: FoundationModelSpec) -> int:
    """Shortest waveform (samples at 16 kHz) that yields at least one frame."""
    return _WHISPER_MIN_SAMPLES if spec.family == "whisper" else _W2V_RECEPTIVE_FIELD


def max_samples(spec: FoundationModelSpec) -> int | None:
    """Longest accepted waveform: Whisper's positional table covers 30 s; others unbounded."""
    return int(WHISPER_MAX_SECONDS * SAMPLE_RATE) if spec.family == "whisper" else None


class WaveformNormalizer(nn.Module):
    """Per-utterance zero-mean unit-variance normalisation, in the graph.

    ``(batch, samples)`` -> same shape; statistics over each row (population variance,
    eps 1e-7), matching ``Wav2Vec2FeatureExtractor(do_normalize=True)`` on unpadded
    input. Identity when ``enabled`` is False.
    """

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = bool(enabled)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return waveform
        mean = waveform.mean(dim=1, keepdim=True)
        centred = waveform - mean
        var = (centred * centred).mean(dim=1, keepdim=True)
        return centred / torch.sqrt(var + _ZNORM_EPS)


INPUT_LEVEL_DBFS: float = -26.0
"""RMS level (dBFS) every waveform is scaled to before the foundation model, per utterance in
training features and per window on the device. -26 dBFS is the usual active-speech level of
telephone and speech-coding tests (ITU-T P.56 practice); RAVDESS's median is about -39 dBFS,
a phone held close is 10-20 dB louder. Whisper's log-mel is not level-normalised, and a head
trained at one level learned loudness as emotion (issue: +18 dB turned 7-class UAR 60 -> 24)."""

LEVEL_FLOOR_DBFS: float = -100.0
"""Power floor of the level estimate (about the RMS of 16-bit quantisation noise): digital
silence stays silence, and anything louder is scaled to the target. 41 dB below RAVDESS's
quietest gain-swept level (-59 dBFS at -20 dB), so the normalisation is scale-invariant to
4e-5 in amplitude over the whole robustness sweep (a -80 dBFS floor left 0.4 %, enough to move
a base HuBERT's features by 1e-3 of their scale). Near-silent windows are amplified to speech
level like any automatic gain control would; the model's answer there means little."""


class LevelNormalizer(nn.Module):
    """Scale each row of ``(batch, samples)`` to :data:`INPUT_LEVEL_DBFS` RMS, in the graph.

    ``y = x * target / sqrt(mean(x^2) + floor^2)``: invariant to the input's gain (up to the
    floor), exportable (mean, sqrt, div), and the same arithmetic in feature extraction
    (per utterance), evaluation from audio and every artifact (per window).
    """

    def __init__(self, target_dbfs: float = INPUT_LEVEL_DBFS, floor_dbfs: float = LEVEL_FLOOR_DBFS) -> None:
        super().__init__()
        self.target_dbfs, self.floor_dbfs = float(target_dbfs), float(floor_dbfs)
        self.target = 10.0 ** (self.target_dbfs / 20.0)
        self.floor_power = 10.0 ** (self.floor_dbfs / 10.0)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        power = (waveform * waveform).mean(dim=1, keepdim=True)
        return waveform * (self.target / torch.sqrt(power + self.floor_power))

    def describe(self) -> dict[str, float | str]:
        return {"method": "rms", "target_dbfs": self.target_dbfs, "floor_dbfs": self.floor_dbfs}


def check_input_level(recorded: object, loaded: "LoadedFoundationModel", *, where: str) -> None:
    """Refuse to pair features extracted with one input-level front end with a model built with
    another (e.g. a cache from before level normalisation): the head would see other inputs than
    it was trained on. ``recorded``: the cache manifest's ``spec["input_level"]`` (None when absent)."""
    from edge_ser.errors import ManifestError

    current = loaded.input_level
    if recorded != current:
        raise ManifestError(
            f"{where} was extracted with input level handling {recorded!r}; this edge-ser's {loaded.spec.name} front "
            f"end uses {current!r}. Features from another front end do not match what the model computes now: "
            "re-extract the features (edge-ser features extract ... --no-resume) and retrain the head."
        )


class _PositionRows(nn.Module):
    """The first `n_rows` rows of Whisper's positional table, without copying it.

    transformers reads ``embed_positions.num_embeddings`` and then looks up
    ``arange(num_embeddings)``; answering with n_rows makes it add only those rows.
    """

    def __init__(self, table: nn.Embedding, n_rows: int) -> None:
        super().__init__()
        self.table = table
        self.num_embeddings = int(n_rows)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.table.weight)


def whisper_encoder_for_positions(encoder: nn.Module, n_positions: int, *, copy_rows: bool = False) -> nn.Module:
    """A shallow clone of a transformers ``WhisperEncoder`` that accepts ``2 * n_positions`` mel frames.

    Slices the positional table **and** sets ``config.max_source_positions`` (either
    alone fails in transformers). Parameters are shared with `encoder`; with ``copy_rows``
    the clone owns a copy of only the rows it uses (for export: a 3 s graph then stores
    150 of Whisper's 1500 positional rows).
    """
    table = encoder.embed_positions
    table = table.table if isinstance(table, _PositionRows) else table
    if not 0 < n_positions <= table.num_embeddings:
        # One encoder position covers two 10 ms mel frames: 20 ms of audio.
        seconds = table.num_embeddings * 0.02
        raise AudioError(
            f"Whisper input needs {n_positions} encoder positions ({n_positions * 0.02:g} s); this encoder has "
            f"{table.num_embeddings} ({seconds:g} s). Split long audio into windows of at most {seconds:g} s."
        )
    clone = _shallow_module_clone(encoder)
    if copy_rows:
        rows = table.weight.detach()[: int(n_positions)].clone()
        clone._modules["embed_positions"] = nn.Embedding.from_pretrained(rows, freeze=True)
    else:
        clone._modules["embed_positions"] = _PositionRows(table, n_positions)
    config = copy.copy(encoder.config)
    config.max_source_positions = int(n_positions)
    clone.config = config
    return clone


def whisper_even_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """Pad ``(batch, n_mels, M)`` log-mel with one floor-valued frame when M is odd.

    The encoder's stride-2 conv maps M frames to ceil(M / 2) positions, but transformers
    requires M == 2 * positions. The floor is ``peak - 2`` in normalised units (Whisper
    clamps at ``max - 8`` in log10 units and then divides by 4): the value silence gets.
    """
    if log_mel.shape[-1] % 2 == 0:
        return log_mel
    floor = torch.amax(log_mel, dim=(1, 2), keepdim=True) - 2.0
    return torch.cat([log_mel, floor.expand(-1, log_mel.shape[1], 1)], dim=2)


class TruncatedFoundationModel(nn.Module):
    """Waveform ``(batch, samples)`` float32 16 kHz -> layer-k features ``(batch, frames, hidden)``.

    Runs the front end (input normalisation, or Whisper's log-mel) and transformer
    blocks 1..k only; equals ``hidden_states[k]`` of the full model exactly.
    """

    def __init__(self, *, spec: FoundationModelSpec, layer: int, front_end: nn.Module, body: nn.Module,
                 position_table: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.layer = int(layer)
        self.front_end = front_end
        self.body = body
        # A plain tensor attribute (not a buffer): windowed graphs do not carry it.
        self._position_table = None if position_table is None else position_table.detach()

    @property
    def position_table(self) -> torch.Tensor | None:
        """Whisper: all of the encoder's positional rows ``(1500, D)``, also after :meth:`for_window`
        kept only the window's (a streaming form counting positions since a segment start needs
        them); None for the other families."""
        if self.spec.family != "whisper":
            return None
        if self._position_table is not None:
            return self._position_table
        table = self.body.embed_positions
        return (table.table if isinstance(table, _PositionRows) else table).weight.detach()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.front_end(waveform)
        if self.spec.family == "whisper":
            mel = whisper_even_mel(features)
            encoder = whisper_encoder_for_positions(self.body, mel.shape[-1] // 2)
            return encoder(mel).last_hidden_state
        return self.body(features).last_hidden_state

    def for_window(self, n_samples: int) -> "TruncatedFoundationModel":
        """A copy for inputs of exactly `n_samples` (export): same outputs, Whisper keeps only
        the positional rows that length uses. Other families need nothing and return self."""
        if self.spec.family != "whisper":
            return self
        with torch.no_grad():
            mel = whisper_even_mel(self.front_end(torch.zeros(1, int(n_samples))))
        body = whisper_encoder_for_positions(self.body, mel.shape[-1] // 2, copy_rows=True)
        return TruncatedFoundationModel(spec=self.spec, layer=self.layer, front_end=self.front_end, body=body,
                                        position_table=self.position_table).eval()


@dataclass(frozen=True)
class _Batch:
    waveforms: torch.Tensor
    lengths: list[int]


class LoadedFoundationModel:
    """A frozen foundation model with its spec and weight provenance.

    Attributes:
        spec: the :class:`FoundationModelSpec`.
        model: transformers model in eval mode, gradients off (``WhisperEncoder`` for Whisper).
        weights_source: where the weights came from.
        front_end: waveform -> model input module (normaliser or ``WhisperLogMel``).
    """

    def __init__(self, *, spec: FoundationModelSpec, model: nn.Module, weights_source: WeightsSource) -> None:
        self.spec = spec
        self.model = model
        self.weights_source = weights_source
        if spec.family == "whisper":
            from edge_ser.frontend import WhisperLogMel

            self.front_end: nn.Module = nn.Sequential(LevelNormalizer(), WhisperLogMel(n_mels=spec.n_mels)).eval()
        elif spec.normalize_waveform:  # per-utterance z-normalisation is already gain-invariant
            self.front_end = WaveformNormalizer(True).eval()
        else:
            self.front_end = nn.Sequential(LevelNormalizer(), WaveformNormalizer(False)).eval()

    @property
    def input_level(self) -> dict[str, float | str]:
        """How the input level is normalised before the model (recorded in feature caches and
        checked by every later stage: features from another front end would not match)."""
        for module in self.front_end.modules():
            if isinstance(module, LevelNormalizer):
                return module.describe()
        return {"method": "z-normalisation" if self.spec.normalize_waveform else "none"}

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    def frames_for_samples(self, n_samples: int) -> int:
        """Output frames for `n_samples` of 16 kHz audio (see :func:`frames_for_samples`)."""
        return frames_for_samples(self.spec, n_samples)

    def _check(self, waveforms: torch.Tensor, lengths) -> _Batch:
        if not isinstance(waveforms, torch.Tensor) or waveforms.dim() != 2 or waveforms.dtype != torch.float32:
            got = (f"{type(waveforms).__name__} of shape {tuple(waveforms.shape)} and dtype {waveforms.dtype}"
                   if isinstance(waveforms, torch.Tensor) else type(waveforms).__name__)
            raise AudioError(
                f"{self.spec.name} expects waveforms as a float32 tensor (batch, samples) at {SAMPLE_RATE} Hz; "
                f"got {got}. Use torch.as_tensor(x, dtype=torch.float32) and add a batch axis with unsqueeze(0)."
            )
        batch, n_samples = waveforms.shape
        if lengths is None:
            length_list = [n_samples] * batch
        else:
            length_list = [int(v) for v in torch.as_tensor(lengths).reshape(-1).tolist()]
            if len(length_list) != batch:
                raise AudioError(
                    f"got {len(length_list)} lengths for a batch of {batch} waveforms; expected one length "
                    "(in samples) per row."
                )
        lo, hi = min_samples(self.spec), max_samples(self.spec)
        for i, length in enumerate(length_list):
            if not lo <= length <= n_samples or (hi is not None and length > hi):
                upper = n_samples if hi is None else min(n_samples, hi)
                raise AudioError(
                    f"utterance {i} has length {length} samples; {self.spec.name} expects {lo}..{upper} "
                    f"(at least {lo / SAMPLE_RATE * 1000:.1f} ms, at most the padded width"
                    + (f" and {WHISPER_MAX_SECONDS:.0f} s" if hi is not None else "")
                    + "). Pad very short clips with zeros; split long ones into windows."
                )
        if not torch.isfinite(waveforms).all():
            raise AudioError(f"{self.spec.name} got a waveform with NaN or Inf samples; clean or drop that audio.")
        return _Batch(waveforms, length_list)

    @torch.no_grad()
    def hidden_states(self, waveforms: torch.Tensor, lengths=None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """All hidden states of the full model.

        Args:
            waveforms: ``(batch, samples)`` float32 at 16 kHz, zero-padded on the right.
            lengths: ``(batch,)`` valid samples per row (default: all of them).

        Returns:
            (tuple of L + 1 tensors ``(batch, frames, hidden)`` where index 0 is the
            transformer input and index k block k's output, ``frame_lengths (batch,)``
            int64). Rows of different lengths are run one by one on their valid
            samples (so padding never changes a result) and their frames beyond
            ``frame_lengths[b]`` are zero.
        """
        batch = self._check(waveforms, lengths)
        n_samples = batch.waveforms.shape[1]
        frame_lengths = torch.tensor([self.frames_for_samples(n) for n in batch.lengths], dtype=torch.int64)
        if all(n == n_samples for n in batch.lengths):
            states = self._run_full(batch.waveforms)
            return states, frame_lengths
        n_frames = int(frame_lengths.max())
        out = [
            torch.zeros(len(batch.lengths), n_frames, self.spec.hidden_size, dtype=torch.float32)
            for _ in range(self.spec.n_layers + 1)
        ]
        for row, length in enumerate(batch.lengths):
            states = self._run_full(batch.waveforms[row : row + 1, :length])
            for layer, state in enumerate(states):
                out[layer][row, : state.shape[1]] = state[0]
        return tuple(out), frame_lengths

    def _run_full(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.front_end(waveforms)
        if self.spec.family == "whisper":
            mel = whisper_even_mel(features)
            encoder = whisper_encoder_for_positions(self.model, mel.shape[-1] // 2)
            return tuple(encoder(mel, output_hidden_states=True).hidden_states)
        return tuple(self.model(features, output_hidden_states=True).hidden_states)

    def truncated(self, k: int) -> TruncatedFoundationModel:
        """Waveform-in module running only blocks 1..k; output equals ``hidden_states(...)[0][k]``.

        Shares weights with :attr:`model`; front end and input normalisation are inside,
        so ``torch.export.export(m, (waveform,))`` gives a self-contained graph.
        """
        body = self.spec.truncate(self.model, k)
        return TruncatedFoundationModel(spec=self.spec, layer=k, front_end=self.front_end, body=body).eval()


def fold_weight_norm(model: nn.Module) -> int:
    """Replace every ``weight_norm`` parametrization by its current weight; returns how many.

    Values are unchanged; exporters and quantizers then see a plain parameter.
    """
    from torch.nn.utils import parametrize

    folded = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                folded += 1
    return folded


def load_foundation_model(
    name: str | FoundationModelSpec,
    *,
    weights=None,
    random_init: bool = False,
    seed: int = 0,
) -> LoadedFoundationModel:
    """Load a registered foundation model, frozen and ready for feature extraction or export.

    Args:
        name: registry name (see :func:`edge_ser.fm.list_models`) or a spec.
        weights: explicit transformers or CTranslate2 Whisper folder.
        random_init: force seeded random weights (size/latency work; not for accuracy).
        seed: seed for random weights.

    >>> fm = load_foundation_model("tiny-wavlm")
    >>> states, frames = fm.hidden_states(torch.zeros(1, 16_000))
    >>> len(states), tuple(states[2].shape), int(frames[0])
    (4, (1, 49, 64), 49)
    """
    spec = get_spec(name) if isinstance(name, str) else name
    model, source = resolve_weights(spec, weights=weights, random_init=random_init, seed=seed)
    fold_weight_norm(model)
    model.eval()
    model.requires_grad_(False)
    return LoadedFoundationModel(spec=spec, model=model, weights_source=source)

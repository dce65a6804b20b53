"""Declarative foundation-model specs and their registry.

One frozen :class:`FoundationModelSpec` per model: the family, the exact size of the
real checkpoint (layers, widths, heads, FFN), where its weights live, whether the
waveform is z-normalised per utterance before the model, and how to cut the model
after transformer block ``k`` so that the cut model's output equals
``hidden_states[k]`` of the full model bit for bit.

``hidden_states`` follows transformers' ``output_hidden_states=True``: index 0 is the
transformer input (after the positional embedding), index k is block k's output. The
final layer norm is treated per variant (all checked to give error exactly 0):

- WavLM/HuBERT *base* (``do_stable_layer_norm=False``): the encoder layer norm runs
  before the blocks, so index 0 is post-norm; keep it when truncating.
- WavLM/HuBERT *large* (stable layer norm): the layer norm runs after the last block
  and transformers does not include it in ``hidden_states``; drop it always.
- Whisper encoder: the final ``layer_norm`` runs after the last block and
  transformers ties ``hidden_states[L]`` to the post-norm output; drop it for k < L,
  keep it for k == L.

Real-size specs use the published checkpoint configs (layer count, widths, heads, FFN,
conv feature extractor), so parameter counts, FLOPs and latency at real size are
honest even with random weights.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from edge_ser.labels import SAMPLE_RATE

Family = Literal["wavlm", "hubert", "whisper"]
FAMILIES: tuple[str, ...] = ("wavlm", "hubert", "whisper")

FRAME_RATE_HZ: float = 50.0
"""Output frame rate of every supported family at 16 kHz (one frame per 320 samples)."""

SAMPLES_PER_FRAME: int = SAMPLE_RATE // int(FRAME_RATE_HZ)
"""320 samples of 16 kHz audio per output frame."""

WHISPER_HOP_SAMPLES: int = 160
"""Whisper's log-mel hop (10 ms at 16 kHz); the encoder's second conv halves the rate."""

WHISPER_MAX_SECONDS: float = 30.0
"""Whisper was trained on 30 s windows (3000 mel frames, 1500 encoder positions)."""

# The wav2vec2-style convolutional feature extractor shared by WavLM and HuBERT
# (total stride 320, receptive field 400 samples = 25 ms).
_W2V_CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
_W2V_CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class FoundationModelSpec:
    """Everything edge-ser needs to know about one foundation model.

    Attributes:
        name: registry key, e.g. ``"wavlm-large"``.
        family: ``"wavlm"``, ``"hubert"`` or ``"whisper"`` (encoder only).
        n_layers: number of transformer blocks L; ``hidden_states`` has L + 1 entries.
        hidden_size: width N of every hidden state.
        n_heads: attention heads per block.
        ffn_size: inner width of each block's feed-forward network.
        frame_rate: output frames per second of 16 kHz audio.
        hf_id: Hugging Face repository of the real weights, or None (tiny test models).
        stable_layer_norm: wav2vec2-style "large" layout (layer norm inside the blocks
            before attention/FFN, final encoder layer norm after the last block,
            layer-normed conv feature extractor). Ignored for Whisper.
        normalize_waveform: the checkpoint's feature extractor z-normalises each
            utterance (mean 0, variance 1 over its valid samples, eps 1e-7) before the
            model. True for HuBERT-large/WavLM-large (their pretraining used
            ``normalize=True``); False for base models and for Whisper, whose
            ``WhisperFeatureExtractor`` defaults to ``do_normalize=False``.
        n_mels: log-mel bands of Whisper's front end (0 for the other families).
        config_kwargs: extra keyword arguments for the transformers config, as
            ``(name, value)`` pairs so the spec stays hashable and JSON-serialisable.
        random_init_only: an in-process test model that never has real weights.
        license: licence of the real weights.
    """

    name: str
    family: str
    n_layers: int
    hidden_size: int
    n_heads: int
    ffn_size: int
    frame_rate: float = FRAME_RATE_HZ
    hf_id: str | None = None
    stable_layer_norm: bool = False
    normalize_waveform: bool = False
    n_mels: int = 0
    config_kwargs: tuple[tuple[str, Any], ...] = ()
    random_init_only: bool = False
    license: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"spec {self.name!r} has family {self.family!r}; expected one of {list(FAMILIES)}."
            )
        if self.family == "whisper" and self.n_mels <= 0:
            raise ValueError(f"Whisper spec {self.name!r} needs n_mels > 0 (80 or 128); got {self.n_mels}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (used in feature-cache and artifact manifests)."""
        out = dataclasses.asdict(self)
        out["config_kwargs"] = {key: value for key, value in self.config_kwargs}
        return out

    # -- transformers config -------------------------------------------------------
    def build_config(self):
        """The transformers config of this model (WavLMConfig, HubertConfig or WhisperConfig).

        Dropouts and layer drop do not matter (models are used in eval mode); sizes
        match the real checkpoints exactly.
        """
        extra = dict(self.config_kwargs)
        if self.family == "whisper":
            from transformers import WhisperConfig

            kwargs = dict(
                d_model=self.hidden_size,
                encoder_layers=self.n_layers,
                encoder_attention_heads=self.n_heads,
                encoder_ffn_dim=self.ffn_size,
                num_mel_bins=self.n_mels,
                max_source_positions=int(WHISPER_MAX_SECONDS * self.frame_rate),
            )
            kwargs.update(extra)
            return WhisperConfig(**kwargs)
        if self.family == "wavlm":
            from transformers import WavLMConfig as config_cls
        else:
            from transformers import HubertConfig as config_cls
        kwargs = dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.ffn_size,
            do_stable_layer_norm=self.stable_layer_norm,
            feat_extract_norm="layer" if self.stable_layer_norm else "group",
            conv_kernel=_W2V_CONV_KERNEL,
            conv_stride=_W2V_CONV_STRIDE,
        )
        kwargs.update(extra)
        return config_cls(**kwargs)

    def build_model(self, config=None) -> nn.Module:
        """A randomly initialised model of this spec (call under ``torch.device("meta")``
        to count parameters without allocating). Whisper gives the encoder only."""
        config = config if config is not None else self.build_config()
        if self.family == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(config)
        if self.family == "wavlm":
            from transformers import WavLMModel

            return WavLMModel(config)
        from transformers import HubertModel

        return HubertModel(config)

    # -- layers and truncation -------------------------------------------------------
    def hidden_state_index(self, k: int) -> int:
        """Index into ``hidden_states`` of layer k (0 = transformer input, k = block k)."""
        self._check_layer(k)
        return k

    def truncate(self, model: nn.Module, k: int) -> nn.Module:
        """A model that runs only blocks 1..k and returns ``hidden_states[k]`` exactly.

        The result is a shallow clone of ``model`` of the same class: parameters are
        shared (no copy, nothing allocated), the block list holds the first k blocks,
        and the final layer norm is kept or replaced by ``nn.Identity`` as the module
        docstring says. Its ``last_hidden_state`` equals ``hidden_states[k]`` of
        ``model`` on the same input. ``model`` itself is not modified.

        Args:
            model: a full model built from this spec (WhisperEncoder for Whisper).
            k: number of blocks to keep, 0..L.
        """
        self._check_layer(k)
        encoder = model if self.family == "whisper" else model.encoder
        n_blocks = len(encoder.layers)
        if n_blocks != self.n_layers:
            raise ValueError(
                f"model has {n_blocks} blocks but spec {self.name!r} says {self.n_layers}; "
                "truncate the full model built from this spec, not an already truncated one."
            )
        cut_encoder = _shallow_module_clone(encoder)
        cut_encoder._modules["layers"] = nn.ModuleList(list(encoder.layers[:k]))
        keep_final_norm = (
            (self.family != "whisper" and not self.stable_layer_norm)
            or (self.family == "whisper" and k == self.n_layers)
        )
        if not keep_final_norm:
            cut_encoder._modules["layer_norm"] = nn.Identity()
        config = copy.deepcopy(encoder.config)
        if self.family == "whisper":
            config.encoder_layers = k
        else:
            config.num_hidden_layers = k
        cut_encoder.config = config
        if self.family == "whisper":
            return cut_encoder
        cut_model = _shallow_module_clone(model)
        cut_model._modules["encoder"] = cut_encoder
        cut_model.config = config
        return cut_model

    def _check_layer(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.n_layers:
            raise ValueError(
                f"layer {k!r} is out of range for {self.name}; expected an int in 0..{self.n_layers} "
                "(0 = transformer input, k = output of block k)."
            )


def _shallow_module_clone(module: nn.Module) -> nn.Module:
    """A new module object sharing parameters, buffers and children with `module`.

    Replacing a child in the clone leaves the original untouched because the
    registries are copied (the tensors inside are not).
    """
    # transformers installs its hidden-state capturing hooks on the shared child layers
    # the first time a model is asked for hidden states, and marks only that model
    # object as hooked. Install them on the original first so every clone inherits the
    # mark; otherwise each clone would add another copy of the hooks to the shared layers.
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY, maybe_install_capturing_hooks
    except ImportError:  # pragma: no cover - other transformers versions record without hooks
        pass
    else:
        if _CAN_RECORD_REGISTRY.get(module):
            maybe_install_capturing_hooks(module)
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


# ---------------------------------------------------------------------------------------
# Registry

_FAIRSEQ_W2V_LARGE = (("conv_bias", False),)  # fairseq/torchaudio large configs: no conv bias

MODEL_SPECS: dict[str, FoundationModelSpec] = {
    spec.name: spec
    for spec in (
        FoundationModelSpec(
            name="hubert-large", family="hubert", n_layers=24, hidden_size=1024, n_heads=16,
            ffn_size=4096, hf_id="facebook/hubert-large-ll60k", stable_layer_norm=True,
            normalize_waveform=True, config_kwargs=_FAIRSEQ_W2V_LARGE,
            license="MIT (fairseq)",
        ),
        FoundationModelSpec(
            name="wavlm-large", family="wavlm", n_layers=24, hidden_size=1024, n_heads=16,
            ffn_size=4096, hf_id="microsoft/wavlm-large", stable_layer_norm=True,
            normalize_waveform=True,
            config_kwargs=_FAIRSEQ_W2V_LARGE + (("num_buckets", 320), ("max_bucket_distance", 800)),
            license="MIT (microsoft/unilm)",
        ),
        FoundationModelSpec(
            name="wavlm-base-plus", family="wavlm", n_layers=12, hidden_size=768, n_heads=12,
            ffn_size=3072, hf_id="microsoft/wavlm-base-plus", stable_layer_norm=False,
            normalize_waveform=False, config_kwargs=(("conv_bias", False),),
            license="MIT (microsoft/unilm)",
        ),
        FoundationModelSpec(
            name="whisper-medium", family="whisper", n_layers=24, hidden_size=1024, n_heads=16,
            ffn_size=4096, hf_id="openai/whisper-medium", n_mels=80,
            config_kwargs=(("decoder_layers", 24), ("decoder_attention_heads", 16),
                           ("decoder_ffn_dim", 4096), ("vocab_size", 51865)),
            license="MIT (openai/whisper)",
        ),
        FoundationModelSpec(
            name="whisper-base", family="whisper", n_layers=6, hidden_size=512, n_heads=8,
            ffn_size=2048, hf_id="openai/whisper-base", n_mels=80,
            config_kwargs=(("decoder_layers", 6), ("decoder_attention_heads", 8),
                           ("decoder_ffn_dim", 2048), ("vocab_size", 51865)),
            license="MIT (openai/whisper)",
        ),
        # Tiny in-process models for the fast test tier: real conv front ends and frame
        # rates, tiny transformer stacks. They never have real weights.
        FoundationModelSpec(
            name="tiny-wavlm", family="wavlm", n_layers=3, hidden_size=64, n_heads=4,
            ffn_size=128, stable_layer_norm=True, normalize_waveform=True,
            config_kwargs=(("conv_dim", (32,) * 7), ("conv_bias", False),
                           ("num_conv_pos_embeddings", 16), ("num_conv_pos_embedding_groups", 4),
                           ("num_buckets", 32), ("max_bucket_distance", 100)),
            random_init_only=True, license="test model (random init)",
        ),
        FoundationModelSpec(
            name="tiny-hubert", family="hubert", n_layers=3, hidden_size=64, n_heads=4,
            ffn_size=128, stable_layer_norm=False, normalize_waveform=False,
            config_kwargs=(("conv_dim", (32,) * 7), ("conv_bias", False),
                           ("num_conv_pos_embeddings", 16), ("num_conv_pos_embedding_groups", 4)),
            random_init_only=True, license="test model (random init)",
        ),
        FoundationModelSpec(
            name="tiny-whisper", family="whisper", n_layers=3, hidden_size=64, n_heads=4,
            ffn_size=128, n_mels=80,
            config_kwargs=(("decoder_layers", 1), ("decoder_attention_heads", 4),
                           ("decoder_ffn_dim", 128)),
            random_init_only=True, license="test model (random init)",
        ),
    )
}


def list_models() -> list[str]:
    """Registry names, real models first in registry order."""
    return list(MODEL_SPECS)


def get_spec(name: str) -> FoundationModelSpec:
    """The spec registered under `name`.

    >>> get_spec("wavlm-large").n_layers
    24
    """
    try:
        return MODEL_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown foundation model {name!r}; expected one of {list_models()}. "
            "Add a FoundationModelSpec to edge_ser.fm.specs.MODEL_SPECS to support another model."
        ) from None

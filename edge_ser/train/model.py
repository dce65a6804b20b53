"""The TC-GRU multitask head (SPEC.md section 2), as trained and evaluated.

::

    x (B, T, F) -> z-score with feat_mean/feat_std -> zero padded frames
      -> Conv1d(F -> 256, k=3, same) + ReLU -> GRU 2 x 256 (unidirectional)
      -> masked mean over valid frames (B, 256)
      -> Linear 256 -> 256 + ReLU = embedding
      -> heads: Linear 256 -> 3 (arousal, valence, dominance), Linear 256 -> 9 (category logits)

The export-only forms of this head (fixed window, the GRU unrolled or as a ``torch.scan`` loop,
the int8 hidden product) are built from its weights by :mod:`edge_ser.converters.export_forms`;
training never imports them (docs/architecture.md, layer order).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from edge_ser.labels import CATEGORIES, DIMENSIONS

__all__ = ["TCGRU", "TCGRUOutput", "model_hyperparameters"]


class TCGRUOutput(NamedTuple):
    """Outputs of the TC-GRU.

    avd: (B, 3) arousal, valence, dominance (targets live in [0, 1], no activation applied).
    logits: (B, 9) category logits in :data:`edge_ser.labels.CATEGORIES` order; softmax gives the distribution.
    embedding: (B, embed_dim) the post-ReLU embedding layer.
    """

    avd: torch.Tensor
    logits: torch.Tensor
    embedding: torch.Tensor


class TCGRU(nn.Module):
    """Temporal convolution + GRU multitask network of SPEC.md section 2.

    Parameter count (``count_parameters``; the normalisation buffers are not parameters):

    - conv: ``3 * input_dim * conv_channels + conv_channels``
    - GRU layer l: ``3 * (in_l * H + H * H + 2 * H)`` with ``in_1 = conv_channels``, ``in_2 = H``
      (three gates, input and hidden weights, separate input and hidden biases as in ``nn.GRU``)
    - embedding: ``H * embed_dim + embed_dim``
    - heads: ``(embed_dim + 1) * (n_dims + n_classes)``

    With ``input_dim=1024`` and the defaults: 786,688 + 2 x 394,752 + 65,792 + 3,084 = 1,645,068,
    the paper's 1.6M. With 42-d MFBF0 input the conv shrinks to 32,512, giving 890,892 (about 0.89M).

    Buffers ``feat_mean`` and ``feat_std`` (input_dim,) hold the train-split z-score statistics
    (SPEC.md section 7 item 10); they are applied inside ``forward`` so an exported graph needs
    nothing outside itself. They default to 0 and 1 (identity).
    """

    def __init__(
        self,
        input_dim: int,
        *,
        conv_channels: int = 256,
        gru_hidden: int = 256,
        gru_layers: int = 2,
        embed_dim: int = 256,
        n_dims: int = len(DIMENSIONS),
        n_classes: int = len(CATEGORIES),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("conv_channels", conv_channels), ("gru_hidden", gru_hidden),
                            ("gru_layers", gru_layers), ("embed_dim", embed_dim), ("n_dims", n_dims),
                            ("n_classes", n_classes)):
            if int(value) != value or value < 1:
                raise ValueError(f"TCGRU {name}={value!r}; expected a positive integer.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TCGRU dropout={dropout!r}; expected a probability in [0, 1).")
        self.input_dim = int(input_dim)
        self.conv_channels = int(conv_channels)
        self.gru_hidden = int(gru_hidden)
        self.gru_layers = int(gru_layers)
        self.embed_dim = int(embed_dim)
        self.n_dims = int(n_dims)
        self.n_classes = int(n_classes)
        self.dropout_p = float(dropout)

        self.register_buffer("feat_mean", torch.zeros(self.input_dim))
        self.register_buffer("feat_std", torch.ones(self.input_dim))
        self.conv = nn.Conv1d(self.input_dim, self.conv_channels, kernel_size=3, stride=1, padding=1)
        self.gru = nn.GRU(self.conv_channels, self.gru_hidden, num_layers=self.gru_layers, batch_first=True,
                          dropout=self.dropout_p if self.gru_layers > 1 else 0.0)
        self.embedding = nn.Linear(self.gru_hidden, self.embed_dim)
        self.avd_head = nn.Linear(self.embed_dim, self.n_dims)
        self.class_head = nn.Linear(self.embed_dim, self.n_classes)
        self.dropout = nn.Dropout(self.dropout_p)

    def hyperparameters(self) -> dict[str, int | float]:
        """Constructor arguments, JSON-serialisable (written to a run's config.json)."""
        return model_hyperparameters(self)

    def set_feature_stats(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Store the per-dimension z-score statistics, each (input_dim,)."""
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
        for name, value in (("mean", mean_t), ("std", std_t)):
            if value.shape != (self.input_dim,):
                raise ValueError(f"feature {name} has shape {tuple(value.shape)}; expected ({self.input_dim},).")
            if not torch.isfinite(value).all():
                raise ValueError(f"feature {name} contains NaN/inf; recompute the statistics on finite features.")
        if (std_t <= 0).any():
            raise ValueError("feature std has entries <= 0; replace constant dimensions' std by 1 before storing.")
        with torch.no_grad():
            self.feat_mean.copy_(mean_t)
            self.feat_std.copy_(std_t)

    def count_parameters(self) -> int:
        """Number of trainable parameters (see the class docstring for the formula)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> TCGRUOutput:
        """Run the network.

        x: (B, T, F) float features at the FM frame rate; frames at or after ``lengths[b]`` are padding.
        lengths: (B,) integer numbers of valid frames (1..T), or None when every frame is valid.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"TCGRU input has shape {tuple(x.shape)}; expected (batch, frames, {self.input_dim}). "
                "Pass features of the layer and model this network was built for."
            )
        batch, frames, _ = x.shape
        x = (x.to(self.feat_mean.dtype) - self.feat_mean) / self.feat_std
        if lengths is None:
            mask = None
        else:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > frames).any()):
                raise ValueError(
                    f"lengths {lengths.tolist()} must be (batch={batch},) integers in 1..{frames} (valid frames per row)."
                )
            mask = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
            # The conv sees one frame to each side: zeroing padding makes the last valid frame see
            # exactly the zero "same" padding it would see without batching.
            x = x * mask[:, :, None]
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # (B, T, C)
        h = self.dropout(h)
        # Unidirectional, so padding after the last valid frame cannot reach the valid outputs.
        out, _ = self.gru(h)  # (B, T, H)
        if mask is None:
            pooled = out.mean(dim=1)
        else:
            pooled = (out * mask[:, :, None]).sum(dim=1) / lengths[:, None].to(out.dtype)
        embedding = self.dropout(torch.relu(self.embedding(pooled)))
        return TCGRUOutput(avd=self.avd_head(embedding), logits=self.class_head(embedding), embedding=embedding)


def model_hyperparameters(model: TCGRU) -> dict[str, int | float]:
    return {
        "input_dim": model.input_dim,
        "conv_channels": model.conv_channels,
        "gru_hidden": model.gru_hidden,
        "gru_layers": model.gru_layers,
        "embed_dim": model.embed_dim,
        "n_dims": model.n_dims,
        "n_classes": model.n_classes,
        "dropout": model.dropout_p,
    }

"""CCC and the multitask losses of SPEC.md sections 4 and 7 item 6.

Three losses, looked up by name in :data:`LOSSES`:

- ``ccc12`` (default, the literal reading of the paper): mean of -CCC over the 12 outputs,
  3 dimensions + 9 softmax probabilities against the soft targets, each CCC over the mini-batch.
- ``ccc+kl``: mean -CCC over the 3 dimensions plus the soft-target KL divergence
  (cross-entropy minus the target entropy: same gradient) for the categories, weighted 1:1.
- ``hard``: mean -CCC over the dimensions plus cross-entropy on the consensus label
  (a comparison variant; the paper does not train on the consensus label).

Missing targets are masked, never zero-filled: a row without a soft target (NaN row) is left
out of the categorical term, a row without a dimension (NaN) out of that dimension's CCC, a row
with label -1 out of the hard cross-entropy. A term with no usable rows contributes nothing.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["ccc", "ccc_loss", "masked_ccc", "multitask_loss", "LossTerms", "LOSSES", "DEFAULT_LOSS"]

_EPS = 1e-8


def ccc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient over dim 0 with population statistics (SPEC.md Eq. 5).

    CCC = 2 Cov(x, y) / (var x + var y + (mean x - mean y)^2).
    x, y: (N,) or (N, K) -> scalar or (K,). A tiny epsilon in the denominator makes two
    identical constants give 0 instead of NaN, so the loss and its gradient stay finite. This is
    the training objective; reported CCC (validation, evaluation, parity) is
    :func:`edge_ser.metrics.ccc`, NaN in that undefined case.

    >>> round(float(ccc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))), 6)
    1.0
    """
    if x.shape != y.shape:
        raise ValueError(f"ccc got predictions of shape {tuple(x.shape)} and targets {tuple(y.shape)}; expected equal shapes.")
    if x.shape[0] < 1:
        raise ValueError("ccc needs at least one row; got an empty tensor.")
    mx, my = x.mean(dim=0), y.mean(dim=0)
    dx, dy = x - mx, y - my
    cov = (dx * dy).mean(dim=0)
    vx, vy = (dx * dx).mean(dim=0), (dy * dy).mean(dim=0)
    return 2.0 * cov / (vx + vy + (mx - my) ** 2 + _EPS)


def masked_ccc(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column CCC over the rows where ``valid`` is true.

    x, y: (N, K); valid: (N, K) bool. Returns (ccc (K,), usable (K,) bool); a column is usable
    when it has at least 2 valid rows (with one row there is no variance to agree on). Invalid
    entries of y may be NaN: they are replaced before any arithmetic so no NaN reaches the
    value or the gradient, and the gradient w.r.t. masked entries of x is exactly zero.
    """
    if x.shape != y.shape or valid.shape != x.shape or x.dim() != 2:
        raise ValueError(
            f"masked_ccc shapes: x {tuple(x.shape)}, y {tuple(y.shape)}, valid {tuple(valid.shape)}; expected all (N, K)."
        )
    w = valid.to(x.dtype)
    y = torch.where(valid, y, torch.zeros_like(y))
    n = w.sum(dim=0)
    n_safe = n.clamp(min=1.0)
    mx = (w * x).sum(dim=0) / n_safe
    my = (w * y).sum(dim=0) / n_safe
    dx = (x - mx) * w
    dy = (y - my) * w
    cov = (dx * dy).sum(dim=0) / n_safe
    vx = (dx * dx).sum(dim=0) / n_safe
    vy = (dy * dy).sum(dim=0) / n_safe
    value = 2.0 * cov / (vx + vy + (mx - my) ** 2 + _EPS)
    return value, n >= 2


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -CCC over the usable columns of (N, K) predictions/targets; 0 when none is usable.

    valid: (N, K) bool, defaults to ``isfinite(target)``.
    """
    if pred.dim() == 1:
        pred, target = pred[:, None], target[:, None]
        valid = None if valid is None else valid[:, None]
    if valid is None:
        valid = torch.isfinite(target)
    values, usable = masked_ccc(pred, target, valid)
    return _weighted_mean(-values, usable.to(values.dtype))


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Multiplying by a zero weight (rather than indexing) keeps the graph and gives exact-zero gradients.
    total = weights.sum()
    return (values * weights).sum() / total.clamp(min=_EPS) if bool(total > 0) else (values * weights).sum()


class LossTerms(NamedTuple):
    """total: the scalar to minimise; dimensional / categorical: the two task terms (before task weights)."""

    total: torch.Tensor
    dimensional: torch.Tensor
    categorical: torch.Tensor


def _dimension_term(avd: torch.Tensor, dims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, usable = masked_ccc(avd, dims, torch.isfinite(dims))
    return -values, usable


def _loss_ccc12(avd, logits, soft, dims, labels, weights):  # type: ignore[no-untyped-def]
    dim_neg, dim_ok = _dimension_term(avd, dims)
    probs = torch.softmax(logits, dim=-1)
    has_soft = torch.isfinite(soft).all(dim=1, keepdim=True).expand_as(soft)
    cat_values, cat_ok = masked_ccc(probs, soft, has_soft)
    cat_neg = -cat_values
    w_dim, w_cat = weights
    # One mean over all usable outputs, each output weighted by its task weight: 1:1 gives the plain mean of 12.
    values = torch.cat([dim_neg, cat_neg])
    per_output = torch.cat([dim_ok.to(values.dtype) * w_dim, cat_ok.to(values.dtype) * w_cat])
    total = _weighted_mean(values, per_output)
    return LossTerms(total, _weighted_mean(dim_neg, dim_ok.to(values.dtype)),
                     _weighted_mean(cat_neg, cat_ok.to(values.dtype)))


def _loss_ccc_kl(avd, logits, soft, dims, labels, weights):  # type: ignore[no-untyped-def]
    dim_neg, dim_ok = _dimension_term(avd, dims)
    dim_term = _weighted_mean(dim_neg, dim_ok.to(dim_neg.dtype))
    has = torch.isfinite(soft).all(dim=1)
    target = torch.where(has[:, None], soft, torch.zeros_like(soft))
    log_q = torch.log_softmax(logits, dim=-1)
    # KL(p || q) = sum p (log p - log q); 0 log 0 = 0.
    log_p = torch.where(target > 0, torch.log(target.clamp(min=1e-12)), torch.zeros_like(target))
    per_row = (target * (log_p - log_q)).sum(dim=1)
    cat_term = _weighted_mean(per_row, has.to(per_row.dtype))
    return LossTerms(_combine(dim_term, dim_ok.any(), cat_term, has.any(), weights), dim_term, cat_term)


def _loss_hard(avd, logits, soft, dims, labels, weights):  # type: ignore[no-untyped-def]
    dim_neg, dim_ok = _dimension_term(avd, dims)
    dim_term = _weighted_mean(dim_neg, dim_ok.to(dim_neg.dtype))
    has = labels >= 0
    per_row = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    cat_term = _weighted_mean(per_row, has.to(per_row.dtype))
    return LossTerms(_combine(dim_term, dim_ok.any(), cat_term, has.any(), weights), dim_term, cat_term)


def _combine(dim_term, dim_any, cat_term, cat_any, weights):  # type: ignore[no-untyped-def]
    w_dim = weights[0] if bool(dim_any) else 0.0
    w_cat = weights[1] if bool(cat_any) else 0.0
    norm = w_dim + w_cat
    if norm <= 0:
        return dim_term * 0.0 + cat_term * 0.0
    return (w_dim * dim_term + w_cat * cat_term) / norm


LOSSES: dict[str, Callable[..., LossTerms]] = {"ccc12": _loss_ccc12, "ccc+kl": _loss_ccc_kl, "hard": _loss_hard}
"""Loss registry: name -> function (the CLI builds its choices from these keys)."""

DEFAULT_LOSS = "ccc12"


def multitask_loss(
    *,
    avd: torch.Tensor,
    logits: torch.Tensor,
    soft_targets: torch.Tensor,
    dimensions: torch.Tensor,
    labels: torch.Tensor | None = None,
    kind: str = DEFAULT_LOSS,
    task_weights: tuple[float, float] = (1.0, 1.0),
) -> LossTerms:
    """The training loss over one mini-batch.

    avd: (B, 3) predicted dimensions; logits: (B, 9) category logits;
    soft_targets: (B, 9) grader-vote distributions, NaN rows where absent;
    dimensions: (B, 3) targets in [0, 1], NaN where absent; labels: (B,) consensus index or -1
    (needed by ``hard`` only); task_weights: (dimensional, categorical).
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {sorted(LOSSES)}.")
    if len(task_weights) != 2 or min(task_weights) < 0 or sum(task_weights) <= 0:
        raise ValueError(f"task_weights={task_weights!r}; expected two non-negative weights (dimensional, categorical), "
                         "not both zero.")
    batch = avd.shape[0]
    if avd.shape != dimensions.shape or logits.shape != soft_targets.shape or logits.shape[0] != batch:
        raise ValueError(
            f"loss shapes: avd {tuple(avd.shape)}, dimensions {tuple(dimensions.shape)}, logits {tuple(logits.shape)}, "
            f"soft_targets {tuple(soft_targets.shape)}; expected (B, 3), (B, 3), (B, 9), (B, 9)."
        )
    if labels is None:
        if kind == "hard":
            raise ValueError("the 'hard' loss needs consensus labels (B,) with -1 where absent; got labels=None.")
        labels = torch.full((batch,), -1, dtype=torch.long)
    dims = dimensions.to(avd.dtype)
    soft = soft_targets.to(logits.dtype)
    return LOSSES[kind](avd, logits, soft, dims, labels.to(torch.long), (float(task_weights[0]), float(task_weights[1])))

"""CCC and the multitask losses: hand-computed values, masking, no NaN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edge_ser.train.losses import LOSSES, ccc, ccc_loss, masked_ccc, multitask_loss
from edge_ser.train.model import TCGRU

NAN = float("nan")


def test_ccc_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    # means 2 and 4, population variances 2/3 and 8/3, covariance 4/3:
    # CCC = 2 * 4/3 / (2/3 + 8/3 + (2 - 4)^2) = (8/3) / (22/3) = 4/11
    # (abs 1e-7: ccc adds 1e-8 to the denominator so constant inputs give 0, not NaN.)
    assert float(ccc(x, y)) == pytest.approx(4 / 11, abs=1e-7)
    # Same values, shifted by a constant: Pearson 1, CCC penalises the bias (2 * 2/3 / (4/3 + 1)).
    assert float(ccc(x, x + 1)) == pytest.approx((4 / 3) / (4 / 3 + 1), abs=1e-7)
    assert float(ccc(x, x + 1)) < 0.58


def test_ccc_perfect_anti_and_columns():
    x = torch.tensor([[-1.0, 0.3], [0.0, 0.9], [1.0, 0.1]])
    assert float(ccc(x[:, 0], x[:, 0])) == pytest.approx(1.0, abs=1e-6)
    assert float(ccc(x[:, 0], -x[:, 0])) == pytest.approx(-1.0, abs=1e-6)
    per_column = ccc(x, x)
    assert per_column.shape == (2,) and torch.allclose(per_column, torch.ones(2), atol=1e-5)
    assert float(ccc_loss(x, x)) == pytest.approx(-1.0, abs=1e-5)


def test_masked_ccc_equals_ccc_on_valid_rows():
    x = torch.tensor([[0.1], [0.5], [0.9], [0.4], [0.2]])
    y = torch.tensor([[0.0], [NAN], [1.0], [0.5], [NAN]])
    value, usable = masked_ccc(x, y, torch.isfinite(y))
    keep = torch.tensor([0, 2, 3])
    assert bool(usable[0])
    assert float(value[0]) == pytest.approx(float(ccc(x[keep, 0], y[keep, 0])), abs=1e-6)
    # One valid row is not enough for a CCC: the column is reported unusable.
    _, usable_one = masked_ccc(x, y, torch.tensor([[True], [False], [False], [False], [False]]))
    assert not bool(usable_one[0])


def _batch(seed: int = 0, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    avd = torch.rand(n, 3, generator=g)
    logits = torch.randn(n, 9, generator=g)
    soft = torch.softmax(torch.randn(n, 9, generator=g) * 2, dim=-1)
    dims = torch.rand(n, 3, generator=g)
    labels = torch.randint(0, 9, (n,), generator=g)
    return avd, logits, soft, dims, labels


def test_ccc12_is_mean_over_twelve_outputs():
    avd, logits, soft, dims, labels = _batch()
    terms = multitask_loss(avd=avd, logits=logits, soft_targets=soft, dimensions=dims, labels=labels)
    probs = torch.softmax(logits, dim=-1)
    expected = -(ccc(avd, dims).sum() + ccc(probs, soft).sum()) / 12
    assert float(terms.total) == pytest.approx(float(expected), abs=1e-5)
    assert float(terms.dimensional) == pytest.approx(float(-ccc(avd, dims).mean()), abs=1e-5)
    # Perfect prediction of every output gives -1.
    perfect = multitask_loss(avd=dims, logits=torch.log(soft), soft_targets=soft, dimensions=dims)
    assert float(perfect.total) == pytest.approx(-1.0, abs=1e-4)


def test_ccc_kl_and_hard_values():
    avd, logits, soft, dims, labels = _batch(1)
    log_q = torch.log_softmax(logits, dim=-1)
    kl = (soft * (torch.log(soft) - log_q)).sum(dim=1).mean()
    dim_term = -ccc(avd, dims).mean()
    terms = multitask_loss(avd=avd, logits=logits, soft_targets=soft, dimensions=dims, kind="ccc+kl")
    assert float(terms.categorical) == pytest.approx(float(kl), abs=1e-5)
    assert float(terms.total) == pytest.approx(float((dim_term + kl) / 2), abs=1e-5)
    weighted = multitask_loss(avd=avd, logits=logits, soft_targets=soft, dimensions=dims, kind="ccc+kl",
                              task_weights=(3.0, 1.0))
    assert float(weighted.total) == pytest.approx(float((3 * dim_term + kl) / 4), abs=1e-5)
    labels[:3] = -1
    hard = multitask_loss(avd=avd, logits=logits, soft_targets=soft, dimensions=dims, labels=labels, kind="hard")
    assert float(hard.categorical) == pytest.approx(float(F.cross_entropy(logits[3:], labels[3:])), abs=1e-5)
    # A perfect soft prediction has zero KL.
    zero = multitask_loss(avd=dims, logits=torch.log(soft), soft_targets=soft, dimensions=dims, kind="ccc+kl")
    assert float(zero.categorical) == pytest.approx(0.0, abs=1e-5)


def test_masked_rows_are_excluded_not_zero_filled():
    avd, logits, soft, dims, labels = _batch(2)
    dims_masked = dims.clone()
    dims_masked[5:, 1] = NAN
    soft_masked = soft.clone()
    soft_masked[6:] = NAN
    terms = multitask_loss(avd=avd, logits=logits, soft_targets=soft_masked, dimensions=dims_masked)
    probs = torch.softmax(logits, dim=-1)
    expected = -(ccc(avd[:, 0], dims[:, 0]) + ccc(avd[:5, 1], dims[:5, 1]) + ccc(avd[:, 2], dims[:, 2])
                 + ccc(probs[:6], soft[:6]).sum()) / 12
    assert float(terms.total) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_fully_masked_dimensions_do_not_move_the_avd_head(kind):
    torch.manual_seed(0)
    model = TCGRU(6, conv_channels=8, gru_hidden=8, embed_dim=8)
    out = model(torch.randn(5, 4, 6))
    soft = torch.softmax(torch.randn(5, 9), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 1])
    terms = multitask_loss(avd=out.avd, logits=out.logits, soft_targets=soft, dimensions=torch.full((5, 3), NAN),
                           labels=labels, kind=kind)
    assert math.isfinite(float(terms.total.detach()))
    terms.total.backward()
    for p in model.avd_head.parameters():
        assert p.grad is None or bool((p.grad == 0).all())
    assert model.class_head.weight.grad is not None and model.class_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_nothing_valid_gives_zero_not_nan(kind):
    avd = torch.rand(4, 3, requires_grad=True)
    logits = torch.randn(4, 9, requires_grad=True)
    terms = multitask_loss(avd=avd, logits=logits, soft_targets=torch.full((4, 9), NAN),
                           dimensions=torch.full((4, 3), NAN), labels=torch.full((4,), -1), kind=kind)
    assert float(terms.total.detach()) == 0.0
    terms.total.backward()
    assert bool((logits.grad == 0).all()) and bool((avd.grad == 0).all())


def test_unknown_loss_lists_known_ones():
    avd, logits, soft, dims, labels = _batch()
    with pytest.raises(ValueError, match="ccc12"):
        multitask_loss(avd=avd, logits=logits, soft_targets=soft, dimensions=dims, kind="mse")

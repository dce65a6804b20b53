"""TC-GRU: parameter counts, padding invariance, the export twins (unrolled and scan GRU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ser.converters.export_forms import ScanGRU, UnrolledGRU, export_head
from edge_ser.train.model import TCGRU


def _small_model(input_dim: int = 12, *, seed: int = 0) -> TCGRU:
    torch.manual_seed(seed)
    model = TCGRU(input_dim, conv_channels=16, gru_hidden=20, embed_dim=24).eval()
    rng = np.random.default_rng(seed)
    model.set_feature_stats(rng.normal(size=input_dim), rng.uniform(0.5, 2.0, size=input_dim))
    return model


def test_parameter_count_matches_spec():
    assert TCGRU(1024).count_parameters() == 1_645_068
    mfbf0 = TCGRU(42).count_parameters()
    assert mfbf0 == 890_892  # 1,645,068 - 3 * (1024 - 42) * 256
    assert abs(mfbf0 - 890_000) < 10_000


def test_normalisation_buffers_are_state_not_parameters():
    model = _small_model()
    state = model.state_dict()
    assert "feat_mean" in state and "feat_std" in state
    assert all(not name.startswith("feat_") for name, _ in model.named_parameters())


def test_output_shapes_and_bad_input():
    model = _small_model()
    out = model(torch.randn(3, 7, 12))
    assert out.avd.shape == (3, 3) and out.logits.shape == (3, 9) and out.embedding.shape == (3, 24)
    with pytest.raises(ValueError, match=r"expected \(batch, frames, 12\)"):
        model(torch.randn(3, 7, 11))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 7, 12), torch.tensor([3, 8]))
    with pytest.raises(ValueError, match="shape"):
        model.set_feature_stats(np.zeros(5), np.ones(5))


def test_padded_batch_equals_per_utterance():
    model = _small_model()
    lengths = [9, 4, 1, 6]
    utterances = [torch.randn(t, 12) * 3 + 1 for t in lengths]
    # Padding filled with large garbage: it must not reach the valid outputs (zeroed before the conv,
    # causal GRU, masked mean).
    batch = torch.full((len(lengths), max(lengths), 12), 1e3)
    for b, u in enumerate(utterances):
        batch[b, : len(u)] = u
    with torch.no_grad():
        batched = model(batch, torch.tensor(lengths))
        for b, u in enumerate(utterances):
            alone = model(u[None])
            for name in ("avd", "logits", "embedding"):
                got, want = getattr(batched, name)[b], getattr(alone, name)[0]
                assert torch.allclose(got, want, atol=1e-5), (name, b, (got - want).abs().max())
        # Sanity check that the padding was actually adversarial: ignoring lengths changes the result.
        unmasked = model(batch)
    assert (unmasked.avd[1] - batched.avd[1]).abs().max() > 1e-3


def test_unrolled_gru_matches_nn_gru_at_spec_size():
    torch.manual_seed(1)
    gru = torch.nn.GRU(256, 256, num_layers=2, batch_first=True)
    x = torch.randn(2, 30, 256)
    with torch.no_grad():
        want, _ = gru(x)
        got = UnrolledGRU(gru, fixed_frames=30)(x)
    assert (got - want).abs().max() < 1e-5


def test_scan_gru_matches_nn_gru_at_spec_size():
    torch.manual_seed(2)
    gru = torch.nn.GRU(256, 256, num_layers=2, batch_first=True)
    # Non-zero biases everywhere, so folding b_hr/b_hz and keeping b_hn inside r * (...) is checked.
    with torch.no_grad():
        for name, p in gru.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    x = torch.randn(1, 40, 256)
    with torch.no_grad():
        want, _ = gru(x)
        got = ScanGRU(gru, fixed_frames=40)(x)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5


def test_scan_gru_refuses_batches():
    gru = torch.nn.GRU(8, 8, batch_first=True)
    with pytest.raises(ValueError, match=r"expected \(1, frames, features\).*batch 1"):
        ScanGRU(gru, fixed_frames=5)(torch.randn(2, 5, 8))


def test_export_form_is_checked():
    with pytest.raises(ValueError, match="gru_form='loop'; expected one of unrolled, scan"):
        export_head(_small_model(), frames=5, gru_form="loop")


@pytest.mark.parametrize("frames", [1, 25])
@pytest.mark.parametrize("gru_form", ["unrolled", "scan"])
def test_export_variant_matches_and_exports(frames, gru_form):
    model = _small_model()
    exportable = export_head(model, frames=frames, gru_form=gru_form)
    batch = 1 if gru_form == "scan" else 2  # the scan form runs one window per call
    x = torch.randn(batch, frames, 12) * 2
    with torch.no_grad():
        want = model(x)
        got = exportable(x)
    for name in ("avd", "logits", "embedding"):
        err = (getattr(got, name) - getattr(want, name)).abs().max()
        assert err < 1e-5, (name, float(err))
    program = torch.export.export(exportable, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not any("gru" in op or "split" in op or "chunk" in op for op in ops), ops
    if gru_form == "scan":
        # One scan per GRU layer, whatever the window: the graph does not grow with the frames.
        # A one-frame input runs the step's ops directly (no loop).
        assert sum("scan" in op for op in ops) == (model.gru_layers if frames > 1 else 0), ops
    out = program.module()(x)
    for name in ("avd", "logits"):
        assert torch.allclose(getattr(out, name), getattr(want, name), atol=1e-5)


def test_scan_gru_int8_step_is_quantized_and_close():
    torch.manual_seed(3)
    gru = torch.nn.GRU(64, 64, num_layers=2, batch_first=True).eval()
    x = torch.randn(1, 30, 64)
    exact = ScanGRU(gru, fixed_frames=30)
    quant = ScanGRU(gru, fixed_frames=30)
    for layer in quant.layers:
        layer.store_hidden_int8()
        assert layer.w_hh_q.dtype == torch.int8 and not hasattr(layer, "w_hh")
        # Dequantized weights are within half a step of the float ones, per output row.
        w = gru.weight_hh_l0 if layer is quant.layers[0] else gru.weight_hh_l1
        deq = layer.w_hh_q.reshape(w.shape).float() * layer.w_hh_scale[:, None]
        assert ((deq - w).abs() <= layer.w_hh_scale[:, None] / 2 + 1e-7).all()
    with torch.no_grad():
        err = (quant(x) - exact(x)).abs().max()
    # int8 state and weights: a small, non-zero error (zero would mean nothing was quantized).
    assert 0 < err < 0.02, float(err)

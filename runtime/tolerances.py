"""Parity tolerances: what "the artifact computes what PyTorch computes" means for one kind of
precision. Each target's declaration (:mod:`edge_ser.runtime.targets`) names, for every precision
it offers, which of these rows applies; :func:`edge_ser.runtime.parity.tolerance_for` reads it there.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Limits for one (target, precision). None = reported, not enforced."""

    max_abs_error_of_scale: float | None  # max |ref - art| / max |ref|, per output
    min_top1_agreement: float
    max_uar_drop_points: float | None
    max_ccc_drop: float | None
    min_psnr_db: float | None
    min_embedding_cosine: float
    reason: str


FLOAT32_LOWERING = Tolerance(
    max_abs_error_of_scale=1e-4, min_top1_agreement=1.0, max_uar_drop_points=None, max_ccc_drop=None,
    min_psnr_db=None, min_embedding_cosine=0.99999,
    reason="fp32 lowering only reorders float arithmetic (fused kernels, other summation order): errors stay near "
           "float32 rounding, 1e-4 of the output scale leaves room for ~150 GRU steps of accumulation, and no "
           "decision may change.",
)
QUANTIZED_8BIT = Tolerance(
    max_abs_error_of_scale=None, min_top1_agreement=0.97, max_uar_drop_points=1.0, max_ccc_drop=0.02,
    min_psnr_db=None, min_embedding_cosine=0.99,
    reason="8-bit weights (and ExecuTorch's dynamically quantized int8 activations) add rounding noise far above float error, so elementwise "
           "bounds are replaced by task-level ones: at most 3 in 100 decisions may flip, UAR may drop at most 1 point "
           "and CCC at most 0.02 on the test split, a larger drop failing only when its 95 % paired-bootstrap interval "
           "excludes 0 (one near-tie flip on a small set is not evidence of a worse artifact) (top-1 counted on decisive utterances, whose reference top-1 beats "
           "its top-2 by more than 0.05; the plain agreement is reported too). The embedding, which apps use for "
           "similarity, must keep cosine >= 0.99. PSNR is reported (35 dB is the bar public on-device converters "
           "use) but not enforced because task-level parity is what an app sees.",
)
"""Also the row of 4-bit palettized weights (Core ML palette4): judged at the task level like int8."""
FLOAT16_COMPUTE = Tolerance(
    max_abs_error_of_scale=1e-2, min_top1_agreement=0.99, max_uar_drop_points=1.0, max_ccc_drop=0.01,
    min_psnr_db=None, min_embedding_cosine=0.999,
    reason="fp16 compute keeps ~3 decimal digits: 1e-2 of the scale bounds accumulated rounding over the encoder "
           "and GRU; at most 1 in 100 decisions may flip.",
)

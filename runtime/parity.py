"""Parity: does an artifact compute what the PyTorch reference computes?

Numerical parity per output (max abs / relative error, PSNR, cosine) and task-level
parity (top-1 and k-best agreement, UAR and CCC of both against the labels, KL between
the class distributions). Tolerances are declared by each target for each precision it
offers (:mod:`edge_ser.runtime.targets`, rows in :mod:`edge_ser.runtime.tolerances`, each with its
reason); :func:`tolerance_for` reads them. A breach raises :class:`ParityError`, which
carries the whole report; the CLI turns it into a non-zero exit.

Conversion error and quantization error are separated by comparing an fp32 artifact
with the eager reference ("conversion") and a quantized artifact with the fp32
artifact ("quantization"), as well as the quantized artifact with the reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from edge_ser.errors import EdgeSerError
from edge_ser.metrics import concordance, mean_recall
from edge_ser.runtime.artifact import OUTPUT_NAMES
from edge_ser.runtime.targets import TARGETS
from edge_ser.runtime.tolerances import Tolerance

OUTPUT_SCALE_FLOOR: dict[str, float] = {"probs": 1.0, "avd": 1.0, "embedding": 0.0}
"""Probabilities and A/V/D live on [0, 1] by contract, so their errors are judged against that
range even where a model's outputs sit near 0; the embedding has no fixed range (its own max)."""
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
"""ΔUAR and ΔCCC are judged with a paired bootstrap over utterances (same resample for reference
and candidate), seeded so a verdict is reproducible."""
DECISIVE_MARGIN = 0.05
"""An utterance is decisive when the reference's top-1 probability beats its top-2 by more
than this; flips among near-ties say nothing about the artifact (the reference is undecided)."""


def tolerance_for(target: str, precision: str) -> Tolerance:
    """The parity row that ``target``'s declaration gives ``precision`` (:mod:`edge_ser.runtime.targets`);
    an unknown pair lists the known ones."""
    spec = TARGETS.get(target)
    if spec is None or precision not in spec.precisions:
        known = ", ".join(f"{t}/{p}" for t in sorted(TARGETS) for p in TARGETS[t].precisions)
        raise ValueError(f"no parity tolerance for {target}/{precision}; known: {known}.")
    return spec.precisions[precision].tolerance


@dataclasses.dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    mean_abs: float
    max_rel_of_scale: float
    psnr_db: float
    cosine: float


@dataclasses.dataclass(frozen=True)
class TaskParity:
    top1_agreement: float
    top1_agreement_decisive: float
    n_decisive: int
    top2_agreement: float
    top3_agreement: float
    kl_mean: float
    uar_reference: float | None
    uar_candidate: float | None
    ccc_reference: dict[str, float] | None
    ccc_candidate: dict[str, float] | None
    uar_drop_ci: tuple[float, float] | None = None
    """95 % paired-bootstrap interval of the UAR drop, in points (reference - candidate)."""
    ccc_drop_ci: dict[str, tuple[float, float]] | None = None
    """95 % paired-bootstrap interval of each dimension's CCC drop."""

    @property
    def uar_drop_points(self) -> float | None:
        if self.uar_reference is None or self.uar_candidate is None:
            return None
        return 100.0 * (self.uar_reference - self.uar_candidate)

    @property
    def ccc_max_drop(self) -> float | None:
        """Largest CCC drop over the dimensions where both CCCs are defined (None if there is none)."""
        if not self.ccc_reference or not self.ccc_candidate:
            return None
        drops = [self.ccc_reference[d] - self.ccc_candidate[d] for d in self.ccc_reference]
        defined = [d for d in drops if not math.isnan(d)]
        return max(defined) if defined else None


@dataclasses.dataclass(frozen=True)
class ParityReport:
    target: str
    precision: str
    comparison: str  # e.g. "artifact vs PyTorch reference"
    n_utterances: int
    outputs: tuple[OutputError, ...]
    task: TaskParity
    tolerance: Tolerance
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        data["task"]["uar_drop_points"] = self.task.uar_drop_points
        data["task"]["ccc_max_drop"] = self.task.ccc_max_drop
        return data

    def to_text(self) -> str:
        lines = [f"parity {self.target}/{self.precision}: {self.comparison}, {self.n_utterances} utterances -> "
                 f"{'PASS' if self.passed else 'FAIL'}"]
        for o in self.outputs:
            lines.append(f"  {o.name:9s} max abs {o.max_abs:.3g}  ({o.max_rel_of_scale:.3g} of scale)  "
                         f"PSNR {o.psnr_db:.1f} dB  cosine {o.cosine:.6f}")
        t = self.task
        lines.append(f"  top-1 agreement {t.top1_agreement:.3f} (decisive {t.top1_agreement_decisive:.3f} of "
                     f"{t.n_decisive}), top-2 {t.top2_agreement:.3f}, "
                     f"top-3 {t.top3_agreement:.3f}, KL {t.kl_mean:.3g}")
        if t.uar_reference is not None:
            ci = f" (drop 95 % CI [{t.uar_drop_ci[0]:.2f}, {t.uar_drop_ci[1]:.2f}] points)" if t.uar_drop_ci else ""
            lines.append(f"  UAR reference {100 * t.uar_reference:.1f}  artifact {100 * t.uar_candidate:.1f}{ci}")
        if t.ccc_reference:
            lines.append("  CCC " + ", ".join(f"{d} {t.ccc_reference[d]:.3f}->{t.ccc_candidate[d]:.3f}"
                                            for d in t.ccc_reference))
        lines += [f"  FAIL: {f}" for f in self.failures]
        return "\n".join(lines)


class ParityError(EdgeSerError, AssertionError):
    """An artifact is outside its tolerance; `.report` has the numbers."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.to_text())
        self.report = report


def output_error(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputError:
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output {name!r}: reference shape {ref.shape} vs candidate shape {cand.shape}.")
    diff = np.abs(ref - cand)
    scale = max(float(np.max(np.abs(ref))), OUTPUT_SCALE_FLOOR.get(name, 0.0)) or 1.0
    mse = float(np.mean(diff ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(scale ** 2 / mse)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return OutputError(name=name, max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                       max_rel_of_scale=float(diff.max() / scale), psnr_db=psnr, cosine=float(cos.mean()))


def _ccc(x: np.ndarray, y: np.ndarray) -> float:
    """CCC of an output column against the labels (edge_ser.metrics.concordance: NaN when both are
    constant and equal). No input validation: a non-finite artifact output gives NaN, reported."""
    mx, my = x.mean(), y.mean()
    return concordance(mx, my, x.var(), y.var(), np.mean((x - mx) * (y - my)))


def _bootstrap_weights(n: int, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n) counts: how often each utterance is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _interval(values: np.ndarray) -> tuple[float, float]:
    """Central 95 % of the defined (non-NaN) resample values; NaN bounds when none is defined."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(defined, [2.5, 97.5])
    return float(low), float(high)


def uar_drop_interval(labels: np.ndarray, pred_reference: np.ndarray, pred_candidate: np.ndarray) -> tuple[float, float]:
    """95 % paired-bootstrap interval of ``100 * (UAR_reference - UAR_candidate)``.

    Each resample draws utterances with replacement and scores both prediction sets on the same
    draw, so utterances both get right or both get wrong cancel; classes absent from a resample
    are left out of its UAR, as :func:`edge_ser.metrics.mean_recall` does for the full set."""
    labels = np.asarray(labels)
    weights = _bootstrap_weights(len(labels))
    recall_ref, recall_can, present = [], [], []
    for c in np.unique(labels):
        members = (labels == c).astype(np.float64)
        count = weights @ members
        present.append(count > 0)
        safe = np.where(count > 0, count, 1.0)
        recall_ref.append(weights @ (members * (pred_reference == c)) / safe)
        recall_can.append(weights @ (members * (pred_candidate == c)) / safe)
    present_m = np.array(present)
    n_present = present_m.sum(axis=0)
    drops = 100.0 * ((np.array(recall_ref) * present_m).sum(axis=0) - (np.array(recall_can) * present_m).sum(axis=0))
    return _interval(drops / np.maximum(n_present, 1))


def ccc_drop_interval(target: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """95 % paired-bootstrap interval of ``CCC(reference, target) - CCC(candidate, target)``; resamples
    where either CCC is undefined (:func:`edge_ser.metrics.concordance`) are left out."""
    weights = _bootstrap_weights(len(target))
    n = float(len(target))

    def ccc(x: np.ndarray) -> np.ndarray:
        mx, my = weights @ x / n, weights @ target / n
        vx = weights @ (x * x) / n - mx ** 2
        vy = weights @ (target * target) / n - my ** 2
        cov = weights @ (x * target) / n - mx * my
        return concordance(mx, my, vx, vy, cov)

    return _interval(ccc(np.asarray(reference, np.float64)) - ccc(np.asarray(candidate, np.float64)))


def task_parity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], *,
                label_idx: Sequence[int] | None = None, dims: np.ndarray | None = None,
                dimension_names: Sequence[str] = ("arousal", "valence", "dominance"),
                score_classes: Sequence[int] | None = None) -> TaskParity:
    """Decision-level agreement of two output sets; UAR/CCC when labels are given.

    `label_idx`: reference class index per utterance (-1 = none); `score_classes`
    restricts UAR to those class indices (e.g. the classes the corpus has).
    """
    p_ref = np.asarray(reference["probs"], dtype=np.float64).reshape(-1, np.shape(reference["probs"])[-1])
    p_can = np.asarray(candidate["probs"], dtype=np.float64).reshape(p_ref.shape)
    top_ref = p_ref.argmax(axis=1)
    order = np.argsort(-p_can, axis=1)
    agree = {k: float(np.mean([top_ref[i] in order[i, :k] for i in range(len(top_ref))])) for k in (1, 2, 3)}
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > DECISIVE_MARGIN
    same = top_ref == order[:, 0]
    agree_decisive = float(same[decisive].mean()) if decisive.any() else 1.0
    eps = 1e-12
    kl = float(np.mean(np.sum(p_ref * (np.log(p_ref + eps) - np.log(p_can + eps)), axis=1)))
    uar_ref = uar_can = None
    uar_ci = None
    if label_idx is not None:
        labels = np.asarray(label_idx)
        keep = labels >= 0
        if score_classes is not None:
            keep &= np.isin(labels, np.asarray(score_classes))
            cols = np.asarray(sorted(score_classes))
            pred_ref = cols[p_ref[:, cols].argmax(axis=1)]
            pred_can = cols[p_can[:, cols].argmax(axis=1)]
        else:
            pred_ref, pred_can = top_ref, p_can.argmax(axis=1)
        if keep.any():
            uar_ref = mean_recall(labels[keep], pred_ref[keep])
            uar_can = mean_recall(labels[keep], pred_can[keep])
            uar_ci = uar_drop_interval(labels[keep], pred_ref[keep], pred_can[keep])
    ccc_ref = ccc_can = None
    ccc_ci: dict[str, tuple[float, float]] | None = None
    if dims is not None:
        dims = np.asarray(dims, dtype=np.float64)
        a_ref = np.asarray(reference["avd"], dtype=np.float64).reshape(dims.shape)
        a_can = np.asarray(candidate["avd"], dtype=np.float64).reshape(dims.shape)
        ccc_ref, ccc_can, ccc_ci = {}, {}, {}
        for j, name in enumerate(dimension_names):
            ok = np.isfinite(dims[:, j])
            if ok.sum() >= 2:
                ccc_ref[name] = _ccc(a_ref[ok, j], dims[ok, j])
                ccc_can[name] = _ccc(a_can[ok, j], dims[ok, j])
                ccc_ci[name] = ccc_drop_interval(dims[ok, j], a_ref[ok, j], a_can[ok, j])
        ccc_ref, ccc_can, ccc_ci = (ccc_ref or None), (ccc_can or None), (ccc_ci or None)
    return TaskParity(top1_agreement=agree[1], top1_agreement_decisive=agree_decisive, n_decisive=int(decisive.sum()),
                      top2_agreement=agree[2], top3_agreement=agree[3], kl_mean=kl,
                      uar_reference=uar_ref, uar_candidate=uar_can, ccc_reference=ccc_ref, ccc_candidate=ccc_can,
                      uar_drop_ci=uar_ci, ccc_drop_ci=ccc_ci)


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], *, target: str,
            precision: str, comparison: str = "artifact vs PyTorch reference",
            label_idx: Sequence[int] | None = None, dims: np.ndarray | None = None,
            score_classes: Sequence[int] | None = None, tolerance: Tolerance | None = None) -> ParityReport:
    """Build a ParityReport for stacked outputs (n, ...) of reference and candidate."""
    tol = tolerance or tolerance_for(target, precision)
    outputs = tuple(output_error(name, reference[name], candidate[name]) for name in OUTPUT_NAMES if name in reference)
    task = task_parity(reference, candidate, label_idx=label_idx, dims=dims, score_classes=score_classes)
    failures = []
    if tol.max_abs_error_of_scale is not None:
        for o in outputs:
            if o.max_rel_of_scale > tol.max_abs_error_of_scale:
                failures.append(f"{o.name}: max abs error {o.max_rel_of_scale:.3g} of scale > "
                                f"{tol.max_abs_error_of_scale:g}")
    if task.top1_agreement_decisive < tol.min_top1_agreement:
        failures.append(f"top-1 agreement {task.top1_agreement_decisive:.3f} on {task.n_decisive} decisive "
                        f"utterances < {tol.min_top1_agreement}")
    emb = next((o for o in outputs if o.name == "embedding"), None)
    if emb is not None and emb.cosine < tol.min_embedding_cosine:
        failures.append(f"embedding cosine {emb.cosine:.6f} < {tol.min_embedding_cosine}")
    failures += _task_drop_failures(task, tol)
    if tol.min_psnr_db is not None:
        for o in outputs:
            if o.psnr_db < tol.min_psnr_db:
                failures.append(f"{o.name}: PSNR {o.psnr_db:.1f} dB < {tol.min_psnr_db}")
    n = int(np.shape(reference["probs"])[0])
    return ParityReport(target=target, precision=precision, comparison=comparison, n_utterances=n,
                        outputs=outputs, task=task, tolerance=tol, failures=tuple(failures))


def _task_drop_failures(task: TaskParity, tol: Tolerance) -> list[str]:
    """ΔUAR / ΔCCC gates: a drop fails only when it is beyond the tolerance *and* significant,
    i.e. the 95 % paired-bootstrap interval of the drop lies above 0. On a small test set one
    flipped near-tie moves UAR by more than a point without saying the artifact is worse; the
    interval then includes 0 and the drop is reported, not failed (docs/parity.md)."""
    failures = []
    drop = task.uar_drop_points
    if tol.max_uar_drop_points is not None and drop is not None and drop > tol.max_uar_drop_points:
        low, high = task.uar_drop_ci or (drop, drop)
        if low > 0:
            failures.append(f"UAR drop {drop:.2f} points > {tol.max_uar_drop_points} (95 % paired-bootstrap interval "
                            f"[{low:.2f}, {high:.2f}] excludes 0: the artifact is worse, not just noisier)")
    if tol.max_ccc_drop is not None and task.ccc_reference and task.ccc_candidate:
        for dim, ref in task.ccc_reference.items():
            cdrop = ref - task.ccc_candidate[dim]
            low, high = (task.ccc_drop_ci or {}).get(dim, (cdrop, cdrop))
            if cdrop > tol.max_ccc_drop and low > 0:
                failures.append(f"CCC drop {cdrop:.3f} on {dim} > {tol.max_ccc_drop} (95 % paired-bootstrap interval "
                                f"[{low:.3f}, {high:.3f}] excludes 0)")
    return failures


def check(report: ParityReport) -> ParityReport:
    """Raise ParityError if the report breaches its tolerance; return it otherwise."""
    if not report.passed:
        raise ParityError(report)
    return report

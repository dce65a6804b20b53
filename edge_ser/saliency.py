"""Cross-correlation saliency (CCS) of foundation-model layers (SPEC.md section 3).

For layer k, hidden unit i and target l, over a sample of utterances:
``r_ikl = |corr(mean-pooled unit i, target l)|``, ``gamma_ikl`` = the average over the
other units j of ``r_jkl * |corr(unit i, unit j)|``, ``S_ikl = r_ikl + gamma_ikl``; the
layer score ``mu_k`` is the mean of S over units and targets. The chosen layer k* is the
argmax of ``mu_k`` (ties -> the lower layer), or with ``rule="earliest-within"`` the
earliest layer whose score is within a relative `tolerance` of the best one, which trades
a little saliency for running fewer blocks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from edge_ser.errors import CorpusError
from edge_ser.io import atomic_path, write_json_atomic
from edge_ser.labels import CATEGORIES, DIMENSIONS

if TYPE_CHECKING:  # the cache is read, never imported at module load (data flows one way)
    from edge_ser.features.cache import FeatureCache

RULES = ("argmax", "earliest-within")
TARGET_SETS = ("all", "avd")
SALIENCY_JSON = "saliency.json"
SALIENCY_PNG = "saliency.png"
SALIENCY_FORMAT = "edge-ser-saliency"


def _standardise(x: np.ndarray) -> np.ndarray:
    """Column z-scores with population std; zero-variance columns become 0 (correlation 0)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    std = np.sqrt((centred ** 2).mean(axis=0, keepdims=True))
    # A relative threshold: a column that is constant up to float rounding has no variance.
    scale = np.maximum(np.abs(x).max(axis=0, keepdims=True), 1e-300)
    constant = std <= 1e-12 * scale
    return np.where(constant, 0.0, centred / np.where(constant, 1.0, std))


def ccs_scores(pooled: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """CCS score of every hidden unit for every target (Eqs. 1-2), vectorised.

    Args:
        pooled: (n, N) mean-pooled hidden states of one layer, one row per utterance.
        targets: (n, D) target values per utterance.

    Returns:
        (N, D) float64 ``S = R + (A @ R) / (N - 1)`` with ``R = |Z^T T| / n`` and
        ``A = |Z^T Z| / n`` (zero diagonal), Z and T the z-scored columns.
    """
    pooled = np.asarray(pooled)
    targets = np.asarray(targets)
    if pooled.ndim != 2 or targets.ndim != 2 or pooled.shape[0] != targets.shape[0]:
        raise ValueError(f"pooled must be (n, N) and targets (n, D) with the same n; got {pooled.shape} and "
                         f"{targets.shape}.")
    n, width = pooled.shape
    if n < 2 or width < 2:
        raise ValueError(f"CCS needs at least 2 utterances and 2 hidden units; got pooled of shape {pooled.shape}.")
    z = _standardise(pooled)
    t = _standardise(targets)
    r = np.abs(z.T @ t) / n
    a = np.abs(z.T @ z) / n
    np.fill_diagonal(a, 0.0)
    return r + (a @ r) / (width - 1)


def ccs_scores_reference(pooled: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Unit-by-unit loop over the SPEC's formulas; slow, for checking :func:`ccs_scores`."""
    pooled = np.asarray(pooled, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    n, width = pooled.shape

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        sa, sb = a.std(), b.std()
        if sa <= 1e-12 * max(np.abs(a).max(), 1e-300) or sb <= 1e-12 * max(np.abs(b).max(), 1e-300):
            return 0.0
        return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))

    scores = np.zeros((width, targets.shape[1]))
    for l in range(targets.shape[1]):
        r = [abs(corr(pooled[:, i], targets[:, l])) for i in range(width)]
        for i in range(width):
            gamma = sum(r[j] * abs(corr(pooled[:, i], pooled[:, j])) for j in range(width) if j != i)
            scores[i, l] = r[i] + gamma / (width - 1)
    return scores


@dataclasses.dataclass(frozen=True)
class SaliencyResult:
    """CCS scores of the candidate layers and the chosen one.

    `scores[i][j]` is S_CCS averaged over hidden units for layer `layers[i]` and target
    `targets[j]`; `mu[i]` is its mean over targets (Eq. 3).
    """

    model: str
    layers: tuple[int, ...]
    mu: tuple[float, ...]
    targets: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]
    chosen_layer: int
    best_layer: int
    rule: str
    tolerance: float
    n_utterances: int
    seed: int
    split: str
    max_utterances: int
    dropped_targets: tuple[tuple[str, str], ...] = ()
    feature_manifest_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format"] = SALIENCY_FORMAT
        data["dropped_targets"] = {name: reason for name, reason in self.dropped_targets}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SaliencyResult":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["layers"] = tuple(int(k) for k in data["layers"])
        kwargs["mu"] = tuple(float(m) for m in data["mu"])
        kwargs["targets"] = tuple(data["targets"])
        kwargs["scores"] = tuple(tuple(float(v) for v in row) for row in data["scores"])
        kwargs["dropped_targets"] = tuple((str(k), str(v)) for k, v in dict(data.get("dropped_targets", {})).items())
        return cls(**kwargs)

    def to_text(self) -> str:
        lines = [f"CCS saliency of {self.model}: {self.n_utterances} utterances ({self.split}, seed {self.seed}), "
                 f"{len(self.targets)} targets"]
        best = max(self.mu)
        for layer, mu in zip(self.layers, self.mu):
            mark = " <- chosen" if layer == self.chosen_layer else (" (best)" if layer == self.best_layer else "")
            lines.append(f"  layer {layer:2d}  mu={mu:.4f}  {mu / best:6.1%}{mark}")
        lines.append(f"chosen layer: {self.chosen_layer} (rule {self.rule}"
                     + (f", tolerance {self.tolerance:g}" if self.rule == "earliest-within" else "") + ")")
        if self.dropped_targets:
            lines.append("dropped targets: " + "; ".join(f"{n} ({why})" for n, why in self.dropped_targets))
        return "\n".join(lines)


def choose_layer(layers: Sequence[int], mu: Sequence[float], *, rule: str = "argmax",
                 tolerance: float = 0.01) -> int:
    """Pick k* from per-layer scores.

    ``argmax``: the highest score; ties go to the lower layer. ``earliest-within``: the
    lowest layer whose score is at least ``(1 - tolerance) * max`` (tolerance relative).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {list(RULES)}.")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be a fraction in [0, 1); got {tolerance}.")
    order = np.argsort(np.asarray(layers), kind="stable")
    layers_sorted = [int(layers[i]) for i in order]
    mu_sorted = np.asarray([mu[i] for i in order], dtype=np.float64)
    best = float(mu_sorted.max())
    if rule == "argmax":
        return layers_sorted[int(np.argmax(mu_sorted))]  # np.argmax returns the first maximum
    threshold = best - tolerance * abs(best)
    return layers_sorted[int(np.flatnonzero(mu_sorted >= threshold)[0])]


def saliency_targets(table, *, targets: str = "all") -> tuple[np.ndarray, list[str], dict[str, str]]:  # type: ignore[no-untyped-def]
    """Target matrix of a corpus table: (U, D) float64, the names kept, and the names dropped with why.

    ``all`` = arousal, valence, dominance + the 9 category probabilities; ``avd`` = the 3
    dimensions. A target the table lacks entirely (e.g. A/V/D on RAVDESS) is dropped.
    """
    if targets not in TARGET_SETS:
        raise ValueError(f"unknown target set {targets!r}; expected one of {list(TARGET_SETS)}.")
    columns = list(DIMENSIONS) + ([f"p_{c}" for c in CATEGORIES] if targets == "all" else [])
    kept, dropped, values = [], {}, []
    for column in columns:
        col = table[column].to_numpy(dtype=np.float64) if column in table.columns else np.full(len(table), np.nan)
        if np.isnan(col).all():
            dropped[column] = "not in the corpus"
            continue
        kept.append(column)
        values.append(col)
    matrix = np.stack(values, axis=1) if values else np.zeros((len(table), 0))
    return matrix, kept, dropped


def layer_saliency(
    cache: "FeatureCache",
    *,
    split: str = "train",
    max_utterances: int = 30_000,
    seed: int = 0,
    targets: str = "all",
    rule: str = "argmax",
    tolerance: float = 0.01,
    candidate_layers: Sequence[int] | None = None,
) -> SaliencyResult:
    """CCS saliency of every candidate layer of a feature cache (SPEC.md section 3).

    Args:
        cache: an opened :class:`edge_ser.features.cache.FeatureCache` (uses ``pooled`` and ``table``).
        split: utterances of this split (``"all"`` for every row); the paper samples Train1.11.
        max_utterances: random sample size (30K in the paper); all rows if fewer.
        seed: sampling seed.
        targets: ``"all"`` (A, V, D + 9 probabilities) or ``"avd"``.
        rule: ``"argmax"`` or ``"earliest-within"`` (see :func:`choose_layer`).
        tolerance: relative tolerance for ``earliest-within``.
        candidate_layers: hidden_states indices to score; default 1..L.

    Rows missing a kept target are left out; a target that is constant over the sample
    carries no correlation and is dropped (listed in ``dropped_targets``).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {list(RULES)}.")
    n_layers = int(cache.manifest["n_layers"])
    if n_layers < 1:
        raise ValueError(f"the cache {cache.root} holds {cache.manifest['model']!r} features with no transformer "
                         "layers; layer saliency needs foundation-model features (e.g. --model whisper-base).")
    layers = list(range(1, n_layers + 1)) if candidate_layers is None else [int(k) for k in candidate_layers]
    bad = [k for k in layers if not 0 <= k <= n_layers]
    if bad or not layers:
        raise ValueError(f"candidate layers {bad or layers} are outside 0..{n_layers} for {cache.manifest['model']!r}.")
    table = cache.table
    if split == "all":
        rows = np.arange(len(table))
    else:
        rows = np.flatnonzero(table["split"].to_numpy() == split)
        if rows.size == 0:
            counts = table["split"].replace("", "(none)").value_counts().to_dict()
            raise CorpusError(f"the feature cache has no utterances in split {split!r}; splits present: {counts}. "
                              "Pass split='all' (CLI: --split all) or prepare the corpus with splits.")
    target_matrix, names, dropped = saliency_targets(table.iloc[rows], targets=targets)
    complete = ~np.isnan(target_matrix).any(axis=1)
    rows, target_matrix = rows[complete], target_matrix[complete]
    if rows.size > max_utterances:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(rows.size, size=max_utterances, replace=False))
        rows, target_matrix = rows[pick], target_matrix[pick]
    varying = target_matrix.std(axis=0) > 1e-12
    for name, keep in zip(list(names), varying):
        if not keep:
            dropped[name] = "constant over the sample"
    names = [n for n, keep in zip(names, varying) if keep]
    target_matrix = target_matrix[:, varying]
    if not names:
        raise CorpusError(f"no usable saliency targets ({targets!r}) in the sample: dropped {dropped}. "
                          "The corpus needs dimension scores or soft category targets that vary.")
    if rows.size < 3:
        raise CorpusError(f"only {rows.size} utterances have all targets {names}; CCS needs at least 3.")
    pooled = cache.pooled
    scores, mu = [], []
    for layer in layers:
        x = np.asarray(pooled[rows, layer, :], dtype=np.float64)
        bad_rows = int(np.isnan(x).any(axis=1).sum())
        if bad_rows:
            raise ValueError(
                f"pooled features of layer {layer} contain NaN in {bad_rows} of {rows.size} sampled utterances "
                f"(cache {cache.root}); the extraction produced invalid states. Check the audio of those utterances "
                "and re-extract."
            )
        per_target = ccs_scores(x, target_matrix).mean(axis=0)  # mean over hidden units
        scores.append(tuple(float(v) for v in per_target))
        mu.append(float(per_target.mean()))
    best = choose_layer(layers, mu, rule="argmax")
    chosen = choose_layer(layers, mu, rule=rule, tolerance=tolerance)
    manifest_path = Path(cache.root) / "manifest.json"
    from edge_ser.io import sha256_file

    return SaliencyResult(
        model=str(cache.manifest["model"]), layers=tuple(layers), mu=tuple(mu), targets=tuple(names),
        scores=tuple(scores), chosen_layer=chosen, best_layer=best, rule=rule, tolerance=float(tolerance),
        n_utterances=int(rows.size), seed=int(seed), split=split, max_utterances=int(max_utterances),
        dropped_targets=tuple(dropped.items()),
        feature_manifest_sha256=sha256_file(manifest_path) if manifest_path.is_file() else "",
    )


def save_saliency(result: SaliencyResult, out_dir: str | os.PathLike) -> Path:
    """Write ``saliency.json`` and ``saliency.png`` (score vs layer per target, mean, k* marked)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SALIENCY_JSON, result.to_dict())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    scores = np.asarray(result.scores)
    for j, name in enumerate(result.targets):
        ax.plot(result.layers, scores[:, j], lw=0.8, alpha=0.6, label=name)
    ax.plot(result.layers, result.mu, color="black", lw=2.2, label="mean (mu)")
    ax.axvline(result.chosen_layer, color="red", ls="--", lw=1.2, label=f"chosen k*={result.chosen_layer}")
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("CCS score")
    ax.set_title(f"CCS layer saliency: {result.model} ({result.n_utterances} utt.)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(out / SALIENCY_PNG, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def load_saliency(path: str | os.PathLike) -> SaliencyResult:
    """Read a ``saliency.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / SALIENCY_JSON
    with open(path, encoding="utf-8") as handle:
        return SaliencyResult.from_dict(json.load(handle))


__all__ = ["RULES", "SaliencyResult", "ccs_scores", "ccs_scores_reference", "choose_layer", "layer_saliency",
           "load_saliency", "save_saliency", "saliency_targets"]

"""Evaluate a run (or a k-fold set of runs) on several test sets and write one report folder.

For each test corpus folder: predictions (:mod:`edge_ser.evaluation.predict`) -> one
:class:`~edge_ser.evaluation.report.TestSetReport` -> :func:`~edge_ser.evaluation.report.write_report`.
The report folder gets, besides ``report.json``/``report.md``/PNGs of ``write_report``:

- ``predictions/<set>.csv``: the predictions table of every set (re-score without re-running);
- ``test_sets.json``: per set its folder, corpus, noise info, rows used, feature source, scored classes;
- ``clean_vs_noise.png``: UAR@1 and CCC of each clean set next to its noisy copies (when any
  noisy set is evaluated), also tabulated in ``report.md`` with the change relative to clean.

Naming: a noisy copy (``manifest["noisy"]``, :func:`edge_ser.data.noise.make_noisy_corpus`) is called
``snr<X>dB``; any other set by its folder name.

Cross-corpus sets (the test corpus, or the corpus a noisy set was made from, is not the training
corpus): only the scored classes the training corpus also has count, since the head never saw
the others as references. The report's notes say so per set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from edge_ser.data.table import derivation
from edge_ser.evaluation.predict import PREDICTION_SOURCES, find_fold_runs, predict_corpus, predict_folds
from edge_ser.evaluation.report import (
    REPORT_MD, TestSetReport, compare_reports, evaluate_predictions, summary_metrics, write_report,
)
from edge_ser.io import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from edge_ser.labels import REPORTED_CATEGORIES
from edge_ser.metrics import EvaluationError

__all__ = ["TestSetInfo", "evaluate_run", "evaluate_folds", "compare_runs", "test_set_name", "load_test_sets"]

PREDICTIONS_DIR = "predictions"
TEST_SETS_JSON = "test_sets.json"
CLEAN_VS_NOISE_PNG = "clean_vs_noise.png"
_BAR_METRICS = ("UAR@1", "CCC Act", "CCC Val", "CCC Dom")
_KS = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class TestSetInfo:
    """Where one test set came from and how it was scored (written to ``test_sets.json``).

    ``snr_db`` is None for clean sets; ``base_corpus`` is the corpus a noisy set was made from
    (else the corpus itself); ``rows`` says which rows were predicted; ``classes`` the scored ones.
    """

    __test__ = False  # not a pytest class despite the name

    name: str
    corpus_dir: str
    corpus: str
    base_corpus: str
    base_table_sha256: str | None
    snr_db: float | None
    cross_corpus: bool
    rows: str
    n_utterances: int
    feature_source: str
    source_reason: str
    classes: tuple[str, ...]
    predictions_file: str
    training_seed: int | None = None
    condition: str | None = None
    """Recording condition of a copy made by :func:`edge_ser.data.conditions.make_condition_corpus`
    (``gain+10dB``, ``telephone``); None for clean and noisy sets."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def test_set_name(corpus_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> str:
    """``snr<X>dB`` for a noisy copy, the condition (``gain+10dB``, ``telephone``) for a condition
    copy, else the folder name."""
    noisy = manifest.get("noisy")
    if isinstance(noisy, Mapping) and noisy.get("snr_db") is not None:
        return f"snr{float(noisy['snr_db']):g}dB"
    condition = manifest.get("condition")
    if isinstance(condition, Mapping) and condition.get("name"):
        return str(condition["name"])
    return Path(corpus_dir).resolve().name


def _unique_names(dirs: Sequence[Path], manifests: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for d, m in zip(dirs, manifests):
        name = test_set_name(d, m)
        if name in names:
            name = f"{name} ({Path(d).resolve().name})"
        base, n = name, 2
        while name in names:
            name, n = f"{base} #{n}", n + 1
        names.append(name)
    return names


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


def _scored_classes(classes: Sequence[str], *, cross: bool, train_classes: Sequence[str] | None,
                    train_corpus: str | None, corpus: str) -> tuple[tuple[str, ...], list[str]]:
    classes = tuple(classes)
    if not cross:
        return classes, []
    if train_classes is None:
        return classes, [f"Cross-corpus: trained on {train_corpus!r}, tested on {corpus!r}; the run does not record "
                         "its corpus classes, so every requested class is scored."]
    shared = tuple(c for c in classes if c in set(train_classes))
    if not shared:
        raise EvaluationError(
            f"cross-corpus set {corpus!r}: none of the classes {list(classes)} occurs in the training corpus "
            f"{train_corpus!r} (its classes: {list(train_classes)}); nothing can be scored. Pass classes the "
            "training corpus has."
        )
    dropped = [c for c in classes if c not in shared]
    note = (f"Cross-corpus: trained on {train_corpus!r}, tested on {corpus!r}; only classes both corpora share "
            f"count: {list(shared)}" + (f" (not in the training corpus, not scored: {dropped})." if dropped else "."))
    return shared, [note]


def _run_evaluation(
    *,
    predict: Callable[[Path, str | None], pd.DataFrame],
    features,
    test_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    classes: Sequence[str] | None,
    split: str | None,
    bootstrap: int,
    seed: int,
    training_seed: int | None = None,
    name_suffix: str = "",
    collected: dict[str, tuple[TestSetReport, TestSetInfo]] | None = None,
) -> dict[str, tuple[TestSetReport, TestSetInfo]]:
    """Predict + score every test set; returns {name: (report, info)} (appends to `collected`)."""
    from edge_ser.data.table import load_corpus

    if not test_dirs:
        raise EvaluationError("test_dirs is empty; expected at least one prepared corpus folder (--corpus-dir DIR).")
    out = Path(out)
    corpora = [load_corpus(d) for d in test_dirs]
    names = _unique_names([Path(d) for d in test_dirs], [c.manifest for c in corpora])
    results = {} if collected is None else collected
    for corpus, name in zip(corpora, names):
        name = name + name_suffix
        noisy = corpus.manifest.get("noisy") if isinstance(corpus.manifest.get("noisy"), Mapping) else None
        condition = corpus.manifest.get("condition") if isinstance(corpus.manifest.get("condition"), Mapping) else None
        derived = derivation(corpus.manifest)
        base_corpus = str(derived.get("base_corpus")) if derived else corpus.name
        # noisy and condition copies pair with their clean corpus in the robustness table; a window or
        # augmented copy is a corpus of its own there
        base_sha = derived.get("base_table_sha256") if (noisy or condition) else corpus.manifest.get("table_sha256")
        cross = features.corpus is not None and not features.shares_speakers_with(corpus)
        rows = split
        notes: list[str] = []
        if split is not None and not (corpus.table["split"] == split).any():
            if not cross:
                raise EvaluationError(
                    f"test set {name!r} ({corpus.root}) has no {split!r} rows; it is the training corpus "
                    f"{features.corpus!r} (or a noisy copy of it), so using its other rows would score utterances "
                    "the run trained on. Build the noisy copy from the test split (make_noisy_corpus(split='test'))."
                )
            rows = None
            notes.append(f"The corpus has no {split!r} split; every row is used (cross-corpus, never trained on).")
        table = predict(corpus.root, rows)
        scored, class_notes = _scored_classes(
            features.vocabulary.reported if classes is None else classes, cross=cross, train_classes=features.corpus_classes,
            train_corpus=features.corpus, corpus=corpus.name)
        report = evaluate_predictions(table, name=name, classes=scored, ks=tuple(k for k in _KS if k <= len(scored)),
                                      bootstrap=bootstrap, seed=seed)
        source = table.attrs.get("edge_ser", {}).get("source", {})
        if noisy:
            measured = (noisy.get("snr_db_measured") or {}).get("mean")
            notes.append(f"Noisy copy of {base_corpus!r}: {noisy.get('noise')} noise at {float(noisy['snr_db']):g} dB "
                         f"SNR (measured mean {math.nan if measured is None else measured:.2f} dB).")
        if condition:
            clipped = (condition.get("clipped_fraction") or {})
            notes.append(f"Copy of {base_corpus!r} under condition {condition.get('name')}: "
                         f"{clipped.get('utterances_clipped', 0)} utterances with clipped samples "
                         f"(mean share {100 * float(clipped.get('mean', 0.0)):.3f} %).")
        notes.append(f"Features: {source.get('reason', 'unknown')}.")
        report = dataclasses.replace(report, notes=report.notes + tuple(class_notes + notes))
        pred_file = f"{PREDICTIONS_DIR}/{_slug(name)}.csv"
        write_bytes_atomic(out / pred_file, table.to_csv(index=False, float_format="%.7g").encode("utf-8"))
        info = TestSetInfo(
            name=name, corpus_dir=os.fspath(corpus.root), corpus=corpus.name, base_corpus=base_corpus,
            base_table_sha256=base_sha, snr_db=float(noisy["snr_db"]) if noisy else None, cross_corpus=cross,
            rows="all" if rows is None else f"split={rows}", n_utterances=int(len(table)),
            feature_source=",".join(sorted(set(table["feature_source"]))), source_reason=str(source.get("reason")),
            classes=scored, predictions_file=pred_file, training_seed=training_seed,
            condition=str(condition["name"]) if condition else None,
        )
        results[name] = (report, info)
    return results


def _write(results: Mapping[str, tuple[TestSetReport, TestSetInfo]], *, out: Path, title: str,
           run_info: Mapping[str, Any], engine: Mapping[str, Any] | None = None) -> Path:
    reports = {name: report for name, (report, _) in results.items()}
    infos = {name: info for name, (_, info) in results.items()}
    noise_plot = _clean_vs_noise(reports, infos, out=out, title=title)
    write_report(reports, out, title=title, run_info={**run_info, "test_sets": ", ".join(reports)})
    # The engine record (wall times, workers) goes here only: report.json is the same for either engine.
    write_json_atomic(out / TEST_SETS_JSON, {"run_info": dict(run_info),
                                             "test_sets": {n: i.to_dict() for n, i in infos.items()},
                                             **({"engine": dict(engine)} if engine is not None else {})})
    lines = [(out / REPORT_MD).read_text(encoding="utf-8").rstrip("\n"), "", "## Test sets", "",
             "| Test set | corpus | base corpus | condition | cross-corpus | rows | n | features | scored classes | "
             "predictions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, i in infos.items():
        lines.append(f"| {n} | {i.corpus} | {i.base_corpus} | {_condition_text(i)} | "
                     f"{'yes' if i.cross_corpus else 'no'} | {i.rows} | {i.n_utterances} | {i.feature_source} | "
                     f"{', '.join(i.classes)} | [{Path(i.predictions_file).name}]({i.predictions_file}) |")
    if noise_plot is not None:
        lines += ["", "## Clean vs noise and recording conditions", "",
                  "Change relative to the clean set in brackets (%).", ""]
        lines += noise_plot[1] + ["", f"![clean vs noise]({CLEAN_VS_NOISE_PNG})"]
    write_text_atomic(out / REPORT_MD, "\n".join(lines) + "\n")
    return out


def _clean_vs_noise(reports: Mapping[str, TestSetReport], infos: Mapping[str, TestSetInfo], *, out: Path,
                    title: str) -> tuple[Path, list[str]] | None:
    """Bars + markdown rows: each clean set followed by its condition copies (gain from quiet to
    loud, telephone) and its noisy copies, loudest SNR first."""
    from edge_ser.evaluation.plots import plot_condition_bars

    noisy = [n for n, i in infos.items() if i.snr_db is not None or i.condition is not None]
    if not noisy:
        return None
    # A derived set belongs to the clean set it was made from (same table sha256, same training seed).
    clean_of = {(i.base_table_sha256, i.training_seed): n for n, i in infos.items()
                if i.snr_db is None and i.condition is None and i.base_table_sha256}
    groups: dict[str | None, list[str]] = {}
    for n in sorted(noisy, key=lambda n: _condition_order(infos[n])):
        groups.setdefault(clean_of.get((infos[n].base_table_sha256, infos[n].training_seed)), []).append(n)
    values: dict[str, dict[str, float | None]] = {}
    rows: list[str] = ["| Test set | condition | " + " | ".join(_BAR_METRICS) + " |",
                       "|---|---|" + "---|" * len(_BAR_METRICS)]
    for clean, members in groups.items():
        ref = summary_metrics(reports[clean].to_dict()) if clean is not None else None
        for n in ([clean] if clean is not None else []) + members:
            summary = summary_metrics(reports[n].to_dict())
            values[n] = {m: summary.get(m) for m in _BAR_METRICS}
            cells = []
            for m in _BAR_METRICS:
                v = summary.get(m)
                text = "–" if v is None else f"{v:.3f}"
                base = None if ref is None or n == clean else ref.get(m)
                if v is not None and base not in (None, 0):
                    text += f" ({100 * (v - base) / abs(base):+.1f})"
                cells.append(text)
            rows.append(f"| {n} | {_condition_text(infos[n])} | " + " | ".join(cells) + " |")
    path = plot_condition_bars(values, path=out / CLEAN_VS_NOISE_PNG, title=f"{title}: clean vs noise")
    return path, rows


def _condition_text(info: TestSetInfo) -> str:
    if info.snr_db is not None:
        return f"SNR {info.snr_db:g} dB"
    return info.condition or "clean"


def _condition_order(info: TestSetInfo) -> tuple[int, float, str]:
    if info.condition is not None:
        gain = info.condition.removeprefix("gain").removesuffix("dB")
        try:
            return (0, float(gain), "")
        except ValueError:
            return (1, 0.0, info.condition)
    return (2, -float(info.snr_db or 0.0), "")


def _audio_engine(*, engine: Any, address: str | None, workers: int | None, device: str | None):
    """A context manager giving the engine of prediction from audio: None (this process) or a RayAudioEngine.

    Set-up errors (bad options, Ray missing, no cluster, cuda without a GPU) are raised here, before any work.
    """
    engines = ("local", "ray")  # edge_ser.features.ray_engine.ENGINES, without importing the engines here
    given = [name for name, value in (("address", address), ("workers", workers), ("device", device))
             if value is not None]
    if not isinstance(engine, str):
        from edge_ser.evaluation.ray_predict import RayAudioEngine

        if not isinstance(engine, RayAudioEngine):
            raise ValueError(f"engine={engine!r}; expected one of {list(engines)} or an entered RayAudioEngine.")
        if given:
            raise ValueError(f"{', '.join(given)} are options of a new Ray engine; the RayAudioEngine passed as "
                             "engine has its own. Leave them out.")
        return contextlib.nullcontext(engine)  # the caller's: it stays running after this call
    if engine not in engines:
        raise ValueError(f"engine={engine!r}; expected one of {list(engines)}.")
    if engine == "local":
        if given:
            raise ValueError(f"{', '.join(given)} only apply to engine='ray' (--engine ray); pass engine='ray' or "
                             "leave them out.")
        return contextlib.nullcontext(None)
    from edge_ser.evaluation.ray_predict import RayAudioEngine
    from edge_ser.features.ray_engine import DEFAULT_RAY_WORKERS

    return RayAudioEngine(address=address, workers=DEFAULT_RAY_WORKERS if workers is None else workers,
                          device=device or "cpu")


def _check_options(*, source: str, bootstrap: int, classes: Sequence[str] | None) -> None:
    if source not in PREDICTION_SOURCES:
        raise ValueError(f"source={source!r}; expected one of {list(PREDICTION_SOURCES)}.")
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap}; expected 0 (no intervals) or a number of resamples such as 1000.")
    if classes is not None and len(classes) == 0:
        raise ValueError("classes is empty; pass None for the paper's 6 reported classes or a list of categories.")


def evaluate_run(
    *,
    run_dir: str | os.PathLike,
    test_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    classes: Sequence[str] | None = None,
    split: str | None = "test",
    source: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    features_dir: str | os.PathLike | None = None,
    title: str | None = None,
    progress: bool = True,
    engine: Any = "local",
    address: str | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> Path:
    """Score one training run on every test corpus folder; write the report folder `out` and return it.

    Args:
        run_dir: a finished run folder.
        test_dirs: prepared corpus folders (the training corpus, noisy copies, other corpora).
        out: report folder (``report.json``, ``report.md``, PNGs, ``predictions/``, ``test_sets.json``).
        classes: scored categories; None = the run vocabulary's reported classes (the paper's 6,
            :data:`edge_ser.labels.REPORTED_CATEGORIES`, or every class of a ``--labels corpus`` run).
            Each set is scored on those present in its references; cross-corpus sets also drop
            classes the training corpus lacks.
        split: rows used of each corpus (None = all). A cross-corpus corpus without this split is
            used whole; the training corpus without it is an error (its other rows were trained on).
        source: ``auto`` / ``cache`` / ``audio`` (:mod:`edge_ser.evaluation.predict`).
        bootstrap: speaker-bootstrap resamples for the CCC/UAR intervals (0 = none). seed: its seed.
        features_dir: the run's feature cache, if it moved since training.
        title: report title (default: "<feature model> layer <k> (<run folder>)").
        engine: where the foundation model computes features from audio: ``local`` (this
            process) or ``ray`` (Ray workers, :mod:`edge_ser.evaluation.ray_predict`; the same
            predictions and report). With ``ray``: `address` (None: a local Ray instance for
            this call; ``auto``; ``HOST:PORT``), `workers` (default 2) and `device` (``cpu`` or
            ``cuda``), as for ``edge-ser features extract --engine ray``. Or an entered
            :class:`~edge_ser.evaluation.ray_predict.RayAudioEngine`, whose workers then serve this
            call and stay up for the next (scoring several runs pays their start once). What the
            engine did (so far, for a passed one) is recorded under ``engine`` in ``test_sets.json``.
    """
    from edge_ser.train.runs import read_run_info

    _check_options(source=source, bootstrap=bootstrap, classes=classes)
    run_dir = Path(run_dir)
    features = read_run_info(run_dir)
    title = title or f"{features.feature_model} layer {features.layer} ({run_dir.resolve().name})"
    run_info = {"run": os.fspath(run_dir), "feature_model": features.feature_model, "layer": features.layer,
                "training_corpus": features.corpus, "source": source, "split": split or "all",
                "bootstrap": bootstrap, "seed": seed}

    memo: dict = {}
    with _audio_engine(engine=engine, address=address, workers=workers, device=device) as audio_engine:
        def predict(corpus_dir: Path, rows: str | None) -> pd.DataFrame:
            return predict_corpus(run_dir=run_dir, corpus_dir=corpus_dir, split=rows, source=source,
                                  batch_size=batch_size, features_dir=features_dir, progress=progress,
                                  audio_engine=audio_engine, _memo=memo)

        results = _run_evaluation(predict=predict, features=features, test_dirs=test_dirs, out=out, classes=classes,
                                  split=split, bootstrap=bootstrap, seed=seed)
    return _write(results, out=Path(out), title=title, run_info=run_info,
                  engine=None if audio_engine is None else audio_engine.record())


def evaluate_folds(
    *,
    folds_dir: str | os.PathLike,
    test_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    source: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    features_dir: str | os.PathLike | None = None,
    title: str | None = None,
    progress: bool = True,
    engine: Any = "local",
    address: str | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> Path:
    """Score k-fold runs (``train_folds`` output) on k-fold test corpora: pooled held-out predictions.

    Every utterance of a test corpus is predicted by the run whose test fold holds it
    (:func:`~edge_ser.evaluation.predict.predict_folds`), so each set is scored on all its rows with
    models that never saw their speakers. With several training seeds, each seed is its own set
    (``"<set> seed<s>"``); ``seeds`` limits which (default: all found). Other arguments as
    :func:`evaluate_run`; ``seed`` is the bootstrap seed. With ``engine="ray"`` the workers
    start once and serve every fold and set (the folds share one foundation model).
    """
    from edge_ser.train.runs import read_run_info

    _check_options(source=source, bootstrap=bootstrap, classes=classes)
    runs = find_fold_runs(folds_dir)
    found = sorted({r.seed for r in runs})
    chosen = found if seeds is None else [int(s) for s in seeds]
    absent = sorted(set(chosen) - set(found))
    if absent:
        raise ValueError(f"seeds {absent} have no runs in {folds_dir}; seeds present: {found}.")
    features = read_run_info(runs[0].run_dir)
    title = title or (f"{features.feature_model} layer {features.layer} "
                      f"({runs[0].k}-fold, {Path(folds_dir).resolve().name})")
    run_info = {"folds_dir": os.fspath(folds_dir), "k": runs[0].k, "training_seeds": ", ".join(map(str, chosen)),
                "feature_model": features.feature_model, "layer": features.layer,
                "training_corpus": features.corpus, "source": source, "rows": "all (pooled held-out folds)",
                "bootstrap": bootstrap, "seed": seed}
    memo: dict = {}
    results: dict[str, tuple[TestSetReport, TestSetInfo]] = {}
    with _audio_engine(engine=engine, address=address, workers=workers, device=device) as audio_engine:
        for train_seed in chosen:
            def predict(corpus_dir: Path, rows: str | None, train_seed: int = train_seed) -> pd.DataFrame:
                return predict_folds(folds_dir=folds_dir, corpus_dir=corpus_dir, seed=train_seed, source=source,
                                     batch_size=batch_size, features_dir=features_dir, progress=progress,
                                     audio_engine=audio_engine, _memo=memo)

            _run_evaluation(predict=predict, features=features, test_dirs=test_dirs, out=out, classes=classes,
                            split=None, bootstrap=bootstrap, seed=seed, training_seed=train_seed,
                            name_suffix=f" seed{train_seed}" if len(chosen) > 1 else "", collected=results)
    return _write(results, out=Path(out), title=title, run_info=run_info,
                  engine=None if audio_engine is None else audio_engine.record())


def compare_runs(report_dirs: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                 out: str | os.PathLike) -> Path:
    """Put several report folders side by side (``comparison.md``/``.json`` in `out`).

    A sequence is named by folder name (made unique); a mapping gives the column names.
    """
    if isinstance(report_dirs, Mapping):
        named = {str(k): Path(v) for k, v in report_dirs.items()}
    else:
        named = {}
        for d in report_dirs:
            name = base = Path(d).resolve().name
            n = 2
            while name in named:
                name, n = f"{base} #{n}", n + 1
            named[name] = Path(d)
    return compare_reports(named, out)


def load_test_sets(report_dir: str | os.PathLike) -> dict[str, Any]:
    """``test_sets.json`` of a report folder written here."""
    return read_json(Path(report_dir) / TEST_SETS_JSON)

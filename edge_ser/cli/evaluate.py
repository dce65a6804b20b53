"""`edge-ser evaluate`: score a run (or k-fold runs) on test sets, or compare report folders.

Thin layer over :func:`edge_ser.evaluation.suite.evaluate_run`, :func:`~edge_ser.evaluation.suite.evaluate_folds`
and :func:`~edge_ser.evaluation.suite.compare_runs`.
"""

from __future__ import annotations

from pathlib import Path

import click

from edge_ser.cli.options import CORPUS_DIR, VocabularyCommand, engine_options, progress_option
from edge_ser.evaluation.predict import PREDICTION_SOURCES
from edge_ser.labels import CATEGORIES


def register(root: click.Group) -> None:
    root.add_command(evaluate)


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"--classes {value!r} is an empty list; expected comma-separated class names such as "
                                 f"{','.join(CATEGORIES[:4])} (a --labels corpus run: its own class names).")
    # Names are checked against each run's label vocabulary when it is scored (the paper's 9 categories,
    # or a corpus vocabulary), with an error that lists that vocabulary.
    return names


def _seeds(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"--seeds {value!r}: expected comma-separated integers such as 0,1,2.") from None


_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("evaluate", cls=VocabularyCommand, old_spellings={"--test": "--corpus-dir", "--seed": "--bootstrap-seed"})
@click.option("--run", "run_dir", type=_DIR, default=None, help="Training run folder (edge-ser train --out).")
@click.option("--folds-dir", type=_DIR, default=None,
              help="Folder of k-fold runs (edge-ser train --folds): pool each fold's held-out predictions.")
@click.option("--corpus-dir", "test_dirs", type=CORPUS_DIR, multiple=True,
              help="Prepared corpus folder to score (repeatable): the training corpus, noisy copies, other corpora.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder (or, with --compare, the comparison folder).")
@click.option("--source", type=click.Choice(PREDICTION_SOURCES), default="auto", show_default=True,
              help="Head input: cached frames of the run's layer, features from audio, or cache when valid.")
@click.option("--split", default="test", show_default=True,
              help="Rows of each corpus to score with --run ('all' = every row); --folds-dir always uses all.")
@click.option("--classes", default=None,
              help="Scored classes, comma-separated (default: the paper's 6, or every class of a --labels corpus run).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Speaker-bootstrap resamples for confidence intervals (0 = none).")
@click.option("--bootstrap-seed", "seed", type=int, default=0, show_default=True,
              help="Seed of the speaker-bootstrap draws.")
@click.option("--seeds", "train_seeds", default=None,
              help="With --folds-dir: which training seeds (edge-ser train --seeds) to score, comma-separated "
                   "(default all).")
@click.option("--features", "features_dir", type=_DIR, default=None,
              help="The run's feature cache folder, if it moved since training.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--title", default=None, help="Report title.")
@click.option("--compare", "compare_dirs", type=_DIR, multiple=True,
              help="Compare mode: existing report folders to put side by side (repeatable; no --run/--corpus-dir).")
@progress_option
@engine_options("Where the foundation model computes features from audio: this process, or Ray workers "
                "(pip install 'edge-ser[ray]'; docs/scale.md). Both give the same predictions.")
def evaluate(run_dir: Path | None, folds_dir: Path | None, test_dirs: tuple[Path, ...], out: Path, source: str,
             split: str, classes: str | None, bootstrap: int, seed: int, train_seeds: str | None,
             features_dir: Path | None, batch_size: int, title: str | None, compare_dirs: tuple[Path, ...],
             progress: bool, engine: str, address: str | None, workers: int | None, device: str | None) -> None:
    """Score a run on test sets (CCC, UAR@k, paUAR, per gender, noise) into a report folder."""
    from edge_ser.errors import EdgeSerError
    from edge_ser.evaluation.suite import compare_runs, evaluate_folds, evaluate_run

    if compare_dirs:
        if run_dir or folds_dir or test_dirs:
            raise click.UsageError("--compare puts existing reports side by side; do not combine it with "
                                   "--run/--folds-dir/--corpus-dir.")
        try:
            path = compare_runs(list(compare_dirs), out)
        except EdgeSerError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"comparison of {len(compare_dirs)} reports: {path / 'comparison.md'}")
        return
    if (run_dir is None) == (folds_dir is None):
        raise click.UsageError("give exactly one of --run RUN_DIR or --folds-dir FOLDS_DIR (or --compare ...).")
    if not test_dirs:
        raise click.UsageError("give at least one --corpus-dir CORPUS_DIR to score.")
    if train_seeds is not None and run_dir is not None:
        raise click.UsageError("--seeds selects k-fold training seeds; use it with --folds-dir only.")
    if engine != "ray":
        ray_only = [name for name, value in (("--address", address), ("--workers", workers), ("--device", device))
                    if value is not None]
        if ray_only:
            raise click.UsageError(f"{', '.join(ray_only)} only apply to --engine ray; add --engine ray or drop them.")
    common = dict(test_dirs=list(test_dirs), out=out, classes=_classes(classes), source=source, bootstrap=bootstrap,
                  seed=seed, batch_size=batch_size, features_dir=features_dir, title=title, progress=progress,
                  engine=engine, address=address, workers=workers, device=device)
    try:
        if run_dir is not None:
            path = evaluate_run(run_dir=run_dir, split=None if split == "all" else split, **common)
        else:
            path = evaluate_folds(folds_dir=folds_dir, seeds=_seeds(train_seeds), **common)
    except (EdgeSerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_summary(path)


def _echo_summary(path: Path) -> None:
    from edge_ser.evaluation.report import load_report, summary_metrics
    from edge_ser.evaluation.suite import load_test_sets

    data = load_report(path)
    for name, entry in data["test_sets"].items():
        s = summary_metrics(entry)
        parts = [f"{k} {s[k]:.3f}" for k in ("CCC Act", "CCC Val", "CCC Dom", "UAR@1", "UAR@2", "paUAR-50@1")
                 if s.get(k) is not None]
        click.echo(f"{name}: " + (", ".join(parts) or "no metric could be computed"))
    ray_run = load_test_sets(path).get("engine")
    if ray_run:
        where = {"local": "a local Ray instance started for this run",
                 "existing": "the Ray instance this process had joined"}.get(ray_run["connected"],
                                                                            f"the cluster at {ray_run['connected']}")
        click.echo(f"ray: {ray_run['utterances']} utterances from audio on {ray_run['workers']} worker(s) on {where}, "
                   f"start-up {ray_run['startup_s']:.1f} s, {ray_run['shards_retried']} shard(s) retried after "
                   f"{ray_run['worker_deaths']} worker death(s)")
    click.echo(f"report: {path / 'report.md'}")

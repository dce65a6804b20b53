"""`edge-ser train`: train the TC-GRU on a feature cache (one run, or k-fold x seeds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from edge_ser.cli.options import FiniteFloatRange, one_line_errors, progress_option, resume_option
from edge_ser.labels import LABEL_VOCABULARIES
from edge_ser.train.losses import DEFAULT_LOSS, LOSSES
from edge_ser.train.trainer import SELECTION_METRICS, TRAIN_PRECISIONS


def register(root: click.Group) -> None:
    root.add_command(train)
    root.add_command(ensemble)


def _int_list(value: str, *, what: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise click.BadParameter(f"{what} {value!r}: expected comma-separated integers such as 0,1,2.") from None


def chosen_layer_from_saliency(path: Path) -> int:
    """``chosen_layer`` of a saliency.json (a file, or a folder holding saliency.json)."""
    file = path / "saliency.json" if path.is_dir() else path
    if not file.is_file():
        raise click.BadParameter(f"{file} does not exist; pass the saliency.json written by `edge-ser saliency`.")
    data = json.loads(file.read_text(encoding="utf-8"))
    if "chosen_layer" not in data:
        raise click.BadParameter(f"{file} has no 'chosen_layer' (keys: {sorted(data)}); is it a saliency result?")
    return int(data["chosen_layer"])


@click.command("train")
@click.option("--features", "features", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Feature cache folder (edge-ser features extract).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder; with --folds or several --seeds, the folder of the runs (fold<f>_seed<s>/ or seed<s>/).")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="hidden_states index to train on (0 = transformer input).")
@click.option("--saliency", type=click.Path(exists=True, path_type=Path), default=None,
              help="saliency.json (or its folder): train on its chosen_layer instead of --layer.")
@click.option("--folds", default=None,
              help="Which speaker folds to train (k-fold): 'all' or comma-separated fold indices such as 0,1; uses the "
                   "table's fold column (made by edge-ser data prepare --n-folds).")
@click.option("--seeds", default="0", show_default=True, help="Training seeds, comma-separated; one run per seed.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (default 50).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Early-stopping patience in epochs (default 5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Mini-batch size (default 32).")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate (default 5e-4).")
@click.option("--loss", type=click.Choice(sorted(LOSSES)), default=DEFAULT_LOSS, show_default=True,
              help="ccc12: CCC on 3 dims + 9 probabilities; ccc+kl: CCC dims + soft-target KL; hard: CCC + CE.")
@click.option("--precision", type=click.Choice(list(TRAIN_PRECISIONS)), default="auto", show_default=True,
              help="Training compute: bf16 autocast of conv/linear layers (GRU, loss, weights stay fp32), fp32, or "
                   "auto = bf16 where the CPU has native bf16, else fp32.")
@click.option("--labels", type=click.Choice(list(LABEL_VOCABULARIES)), default="paper", show_default=True,
              help="Output classes: paper = the 9 categories with soft grader-vote targets (SPEC.md); corpus = the "
                   "corpus's own labels (source_label column, e.g. RAVDESS's 8 emotions incl. calm), one-hot.")
@click.option("--augment", "augment", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Feature cache of an augmented copy of the same corpus (edge-ser data augment / noisy / conditions, "
                   "then features extract; with --windows, data windows in between); used for training only: a copy's utterance trains only where its original "
                   "is in the train split. Repeat for several copies.")
@click.option("--windows", is_flag=True,
              help="--features is the cache of a window corpus (edge-ser data windows): train on one device-length "
                   "window per utterance and epoch; validate and test on the windows the runtime runs. --augment "
                   "copies must then be window corpora too.")
@click.option("--balance/--no-balance", default=False, show_default=True,
              help="Class-balanced sampling of training rows (each class drawn about equally often per epoch).")
@click.option("--feature-mask", type=FiniteFloatRange(min=0, max=0.5), default=None,
              help="SpecAugment-style masking of input features while training: 2 time spans and 2 channel bands, "
                   "each up to this fraction (default 0 = off).")
@click.option("--dropout", type=FiniteFloatRange(min=0, max=1, max_open=True), default=None,
              help="Dropout after the conv layer (default 0).")
@click.option("--ema-decay", type=FiniteFloatRange(min=0, max=1, max_open=True), default=None,
              help="Keep an exponential moving average of the weights with this decay per optimizer step (e.g. "
                   "0.99) and validate, select and save the average (default 0 = off).")
@click.option("--select-on", type=click.Choice(list(SELECTION_METRICS)), default=None,
              help="What early stopping and model selection watch (default valid_loss).")
@resume_option("Continue an interrupted run in --out from last.safetensors (only --epochs and --patience may "
               "differ; a finished run is kept as is). --no-resume refuses a folder that already holds a run.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --folds: train this many runs at once (one process and one thread each).")
@progress_option
@one_line_errors
def train(features: Path, out: Path, layer: int | None, saliency: Path | None, folds: str | None, seeds: str,
          epochs: int | None, patience: int | None, batch_size: int | None, lr: float | None, loss: str,
          precision: str, labels: str, augment: tuple[Path, ...], windows: bool, balance: bool, feature_mask: float | None,
          dropout: float | None, ema_decay: float | None, select_on: str | None, resume: bool, workers: int,
          progress: bool) -> None:
    """Train the TC-GRU multitask head on one layer of a feature cache."""
    from edge_ser.errors import EdgeSerError

    try:
        _train(features=features, out=out, layer=layer, saliency=saliency, folds=folds, seeds=seeds, epochs=epochs,
               patience=patience, batch_size=batch_size, lr=lr, loss=loss, precision=precision, resume=resume,
               workers=workers, progress=progress, labels=labels, augment=augment, windows=windows, balance=balance,
               feature_mask=feature_mask, dropout=dropout, ema_decay=ema_decay, select_on=select_on)
    except EdgeSerError as exc:
        raise click.ClickException(str(exc)) from exc


def _train(*, features: Path, out: Path, layer: int | None, saliency: Path | None, folds: str | None, seeds: str,
           epochs: int | None, patience: int | None, batch_size: int | None, lr: float | None, loss: str,
           resume: bool, progress: bool, workers: int = 1, precision: str = "auto", labels: str = "paper",
           augment: tuple[Path, ...] = (), windows: bool = False, balance: bool = False, feature_mask: float | None = None,
           dropout: float | None = None, ema_decay: float | None = None, select_on: str | None = None) -> None:
    from edge_ser.features.cache import FeatureCache
    from edge_ser.train.dataset import open_training_source
    from edge_ser.train import runs
    from edge_ser.train.trainer import TrainConfig, train_folds, train_run

    if layer is not None and saliency is not None:
        raise click.UsageError("give either --layer or --saliency, not both.")
    if saliency is not None:
        layer = chosen_layer_from_saliency(saliency)
    if layer is None:
        stored = FeatureCache.open(features).layers_stored
        if len(stored) != 1:
            raise click.UsageError(f"the cache stores layers {list(stored)}; choose one with --layer K or --saliency S.")
        layer = stored[0]
    seed_list = _int_list(seeds, what="--seeds")
    if not seed_list:
        raise click.BadParameter("--seeds is empty; give at least one seed, e.g. 0.")
    overrides = {k: v for k, v in (("max_epochs", epochs), ("patience", patience), ("batch_size", batch_size),
                                   ("lr", lr), ("feature_mask", feature_mask), ("dropout", dropout),
                                   ("ema_decay", ema_decay), ("select_on", select_on)) if v is not None}
    if balance:
        overrides["balance"] = True
    config = dataclasses.replace(TrainConfig(loss=loss, precision=precision), **overrides)

    if folds is not None:
        fold_list = None if folds.strip().lower() == "all" else _int_list(folds, what="--folds")
        summary = train_folds(cache_dir=features, layer=layer, out=out, folds=fold_list, seeds=seed_list,
                              config=config, resume=resume, progress=progress, workers=workers, labels=labels,
                              augment=augment, windows=windows)
        for key in ("test_uar6", "test_uar_corpus", "test_ccc_mean", "valid_uar6"):
            if key in summary.mean:
                click.echo(f"{key}: {summary.mean[key]:.4f} ± {summary.std[key]:.4f}")
        click.echo(f"{len(summary.runs)} runs; summary in {out / 'summary.md'}")
        return

    source = open_training_source(features, layer=layer, labels=labels, augment=augment, windows=windows)
    for seed in seed_list:
        run_dir = out if len(seed_list) == 1 else out / f"seed{seed}"
        result = train_run(source=source, out=run_dir, config=dataclasses.replace(config, seed=seed),
                           resume=resume and (run_dir / runs.STATE_FILE).is_file(), progress=progress)
        metrics = result.valid_metrics
        click.echo(f"{run_dir}: best epoch {result.best_epoch}/{result.epochs_run}, valid loss "
                   f"{result.best_valid_loss:.4f}, UAR6 {_fmt(metrics.get('uar6'))}, "
                   f"CCC {_fmt(metrics.get('ccc_mean'))}, {result.train_utterances_per_s:.0f} utt/s")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@click.command("ensemble")
@click.option("--run", "runs", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A finished run folder, or a k-fold folder (edge-ser train --folds); give it once per seed. "
                   "All run folders: one ensemble. All k-fold folders: one ensemble per fold.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write: a run folder, or fold<f>_seed<s> run folders for k-fold input.")
@click.option("--features", "features", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The runs' feature cache, if it moved since training (for the ensemble's validation and test "
                   "metrics; without it they are left out).")
@one_line_errors
def ensemble(runs: tuple[Path, ...], out: Path, features: Path | None) -> None:
    """Average seed runs of one recipe into one head (one artifact, one foundation-model pass).

    The runs must share features, layer, fold, labels and architecture and differ in --seeds; the
    ensemble is written as a run folder that evaluate, convert, verify and the runtime take as they
    take one run (docs/accuracy.md, session 12).
    """
    from edge_ser.errors import EdgeSerError
    from edge_ser.train.ensemble import make_ensemble_run, make_fold_ensembles

    single = [(r / "run.json").is_file() for r in runs]
    try:
        if all(single):
            info = make_ensemble_run(runs, out, features_dir=features)
            _echo_ensemble(out, info)
        elif not any(single):
            for fold, info in make_fold_ensembles(runs, out, features_dir=features).items():
                _echo_ensemble(Path(info["run_dir"]), info)
        else:
            raise click.UsageError("--run mixes run folders and k-fold folders; give only run folders (one ensemble) "
                                   "or only k-fold folders (one ensemble per fold).")
    except EdgeSerError as exc:
        raise click.ClickException(str(exc)) from exc


def _test_uar(record: dict) -> float | None:
    """A run record's test UAR: over the corpus vocabulary, else over the paper's scored classes."""
    test = record.get("test_metrics") or {}
    return test.get("uar_corpus", test.get("uar6"))


def _echo_ensemble(out: Path, info: dict) -> None:
    members = info["ensemble"]["members"]
    uar = _test_uar(info)
    each = ", ".join(_fmt(_test_uar(m)) for m in members)
    click.echo(f"{out}: {len(members)} heads, {info['n_parameters']:,} parameters; test UAR {_fmt(uar)} "
               f"(members {each})" if uar is not None else f"{out}: {len(members)} heads; {info['ensemble']['metrics']}")

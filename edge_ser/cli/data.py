"""`edge-ser data ...`: synthesise, prepare, add noise, describe corpora."""

from __future__ import annotations

from pathlib import Path

import click

from edge_ser.windowing import PAD_MODES
from edge_ser.cli.options import (FiniteFloatRange, VocabularyCommand, corpus_dir_option, one_line_errors,
                                  overwrite_option, progress_option)


def _corpus_names() -> list[str]:
    from edge_ser.data.prepare import CORPUS_READERS

    return sorted(CORPUS_READERS)


def _snr(ctx: click.Context, param: click.Parameter, values: tuple[float, ...]) -> tuple[float, ...]:
    from edge_ser.data.noise import check_snr_db
    from edge_ser.errors import CorpusError

    try:
        return tuple(check_snr_db(v) for v in values)
    except CorpusError as exc:
        raise click.BadParameter(str(exc)) from None


def register(root: click.Group) -> None:
    root.add_command(data)


@click.group()
def data() -> None:
    """Corpora: prepare real ones, synthesise the built-in one, make noisy copies."""


@data.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for audio/, utterances.csv and manifest.json.")
@click.option("--speakers", type=click.IntRange(min=3), default=12, show_default=True,
              help="Number of speakers (half female; train, valid and test need one each).")
@click.option("--per-speaker", type=click.IntRange(min=1), default=40, show_default=True,
              help="Utterances per speaker.")
@click.option("--seed", default=0, show_default=True, help="Same seed = byte-identical corpus.")
@overwrite_option
@progress_option
@one_line_errors
def synth(out: Path, speakers: int, per_speaker: int, seed: int, overwrite: bool, progress: bool) -> None:
    """Generate the built-in synthetic emotional-speech corpus."""
    from edge_ser.data.synthetic import synthesize_corpus

    corpus = synthesize_corpus(out=out, n_speakers=speakers, utterances_per_speaker=per_speaker, seed=seed,
                               overwrite=overwrite)
    _echo_counts(corpus)


@data.command("prepare", cls=VocabularyCommand, old_spellings={"--root": "--raw-root", "--folds": "--n-folds"})
@click.option("--corpus", "corpus_name", type=click.Choice(_corpus_names()), required=True,
              help="Which reader reads --raw-root.")
@click.option("--raw-root", "root", type=click.Path(exists=True, path_type=Path), required=True,
              help="The corpus as distributed: its folder (or the manifest CSV/JSONL file for --corpus manifest).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the prepared corpus (audio/, utterances.csv, manifest.json).")
@click.option("--n-folds", "folds", default=None, type=click.IntRange(min=3),
              help="How many speaker folds to make for k-fold corpora (RAVDESS default 6; at least 3: test, valid "
                   "and train); splits also assigned.")
@click.option("--seed", default=0, show_default=True)
@click.option("--strict", is_flag=True, help="Refuse stereo/odd files instead of fixing them with a note.")
@overwrite_option
@progress_option
@one_line_errors
def prepare(corpus_name: str, root: Path, out: Path, folds: int | None, seed: int, strict: bool,
            overwrite: bool, progress: bool) -> None:
    """Read a corpus into the utterance table + manifest."""
    from edge_ser.data.prepare import prepare_corpus

    corpus = prepare_corpus(corpus=corpus_name, root=root, out=out, folds=folds, seed=seed, strict=strict,
                            overwrite=overwrite)
    _echo_counts(corpus)


@data.command("noisy")
@corpus_dir_option
@click.option("--snr", "snrs", type=float, multiple=True, required=True, callback=_snr,
              help="SNR in dB, from -30 to 60; repeat for several.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="One sub-folder per SNR (e.g. snr15dB/) is written here.")
@click.option("--noise", default="babble", show_default=True,
              help="white, pink, babble (other speakers' utterances) or a folder of noise files.")
@click.option("--split", default="test", show_default=True, help="Which split to copy ('all' for every row).")
@click.option("--seed", default=0, show_default=True)
@overwrite_option
@progress_option
@one_line_errors
def noisy(corpus_dir: Path, snrs: tuple[float, ...], out: Path, noise: str, split: str, seed: int,
          overwrite: bool, progress: bool) -> None:
    """Make noisy copies of a corpus split at the given SNRs."""
    from edge_ser.data.noise import make_noisy_corpus
    from edge_ser.data.table import claim_corpus_folder

    for snr in snrs:  # refuse before the first copy is made, not after
        claim_corpus_folder(out / f"snr{snr:g}dB", overwrite=overwrite)
    for snr in snrs:
        corpus = make_noisy_corpus(corpus_dir=corpus_dir, snr_db=snr, out=out / f"snr{snr:g}dB", noise=noise,
                                   split=split, seed=seed, overwrite=overwrite)
        click.echo(f"{corpus.root}: {len(corpus.table)} utterances at {snr:g} dB SNR ({noise})")


@data.command("conditions")
@corpus_dir_option
@click.option("--condition", "conditions", multiple=True,
              help="gain+<dB>dB, gain-<dB>dB or telephone; repeat for several. Default: the standard sweep "
                   "gain-20dB, gain-10dB, gain+10dB, gain+20dB, telephone.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="One sub-folder per condition (e.g. gain+10dB/) is written here.")
@click.option("--split", default="test", show_default=True, help="Which split to copy ('all' for every row).")
@overwrite_option
@progress_option
@one_line_errors
def conditions(corpus_dir: Path, conditions: tuple[str, ...], out: Path, split: str, overwrite: bool,
               progress: bool) -> None:
    """Copies of a corpus split under recording conditions (level, telephone band) for robustness tests."""
    from edge_ser.data.conditions import STANDARD_CONDITIONS, make_condition_corpus, parse_condition
    from edge_ser.data.table import claim_corpus_folder

    names = conditions or STANDARD_CONDITIONS
    parsed = []
    for name in names:
        try:
            parsed.append(parse_condition(name))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--condition") from None
    for cond in parsed:
        claim_corpus_folder(out / cond.name, overwrite=overwrite)
    for cond in parsed:
        corpus = make_condition_corpus(corpus_dir=corpus_dir, condition=cond.name, out=out / cond.name, split=split)
        clipped = corpus.manifest["condition"]["clipped_fraction"]
        click.echo(f"{corpus.root}: {len(corpus.table)} utterances under {cond.name} "
                   f"({clipped['utterances_clipped']} with clipped samples)")


@data.command("augment")
@corpus_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the augmented copy (a prepared corpus: extract its features, then train with --augment).")
@click.option("--split", default="all", show_default=True,
              help="Rows to copy; 'all' lets k-fold training use each fold's train rows.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Each utterance's random chain depends only on (seed, utt_id).")
@click.option("--noise-probability", type=click.FloatRange(0, 1), default=0.6, show_default=True)
@click.option("--snr-db", nargs=2, type=float, default=(0.0, 20.0), show_default=True, help="SNR range (dB) of the noise.")
@click.option("--telephone-probability", type=click.FloatRange(0, 1), default=0.6, show_default=True)
@click.option("--gain-db", nargs=2, type=float, default=(-20.0, 20.0), show_default=True,
              help="Gain range (dB), applied last; samples beyond full scale are clipped as a real chain would.")
@click.option("--speed-probability", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of utterances whose speed changes first (tempo and pitch together, by resampling); "
                   "0 keeps the chains of earlier copies exactly.")
@click.option("--speed-factors", default="0.9,1.1", show_default=True,
              help="Comma-separated speed factors drawn from (each in 0.5..2.0; 1.1 = 10 % faster and higher).")
@overwrite_option
@progress_option
@one_line_errors
def augment(corpus_dir: Path, out: Path, split: str, seed: int, noise_probability: float,
            snr_db: tuple[float, float], telephone_probability: float, gain_db: tuple[float, float],
            speed_probability: float, speed_factors: str, progress: bool, overwrite: bool) -> None:
    """An augmented training copy of a corpus: random babble/white noise, telephone band and gain per
    utterance, optionally a speed change first."""
    from edge_ser.data.augment import AugmentRecipe, make_augmented_corpus

    try:
        factors = tuple(float(f) for f in speed_factors.split(",") if f.strip())
    except ValueError:
        raise click.BadParameter(f"{speed_factors!r}; expected comma-separated numbers such as 0.9,1.1.",
                                 param_hint="--speed-factors") from None
    try:
        recipe = AugmentRecipe(noise_probability=noise_probability, snr_db=tuple(snr_db),
                               telephone_probability=telephone_probability, gain_db=tuple(gain_db),
                               speed_probability=speed_probability, speed_factors=factors)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    corpus = make_augmented_corpus(corpus_dir=corpus_dir, out=out, split=split, seed=seed, recipe=recipe,
                                   overwrite=overwrite, progress=progress)
    block = corpus.manifest["augment"]
    click.echo(f"{corpus.root}: {len(corpus.table)} augmented utterances (seed {seed}; "
               f"{block['clipped_fraction']['utterances_clipped']} with clipped samples)")


@data.command("windows")
@corpus_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the window corpus (extract its features, then train with --windows).")
@click.option("--window-s", type=FiniteFloatRange(min=0.5, max=30.0), default=3.0, show_default=True,
              help="The artifact's window (edge-ser convert --window-s).")
@click.option("--random-crops", type=click.IntRange(min=0), default=2, show_default=True,
              help="Windows at random positions per utterance longer than one window, besides the device windows.")
@click.option("--pad", type=click.Choice(list(PAD_MODES)), default="repeat", show_default=True,
              help="How a clip shorter than the window is filled: the runtime's pad policy.")
@click.option("--split", default="all", show_default=True, help="Rows to window ('all' for k-fold training).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random window positions depend only on (seed, utt_id).")
@overwrite_option
@progress_option
@one_line_errors
def windows(corpus_dir: Path, out: Path, window_s: float, random_crops: int, pad: str, split: str, seed: int,
            progress: bool, overwrite: bool) -> None:
    """The windows an artifact runs, as a corpus: train and score a head on what the device computes."""
    from edge_ser.data.windows import make_window_corpus

    corpus = make_window_corpus(corpus_dir=corpus_dir, out=out, window_s=window_s, random_crops=random_crops, pad=pad,
                                split=split, seed=seed, overwrite=overwrite, progress=progress)
    block = corpus.manifest["windows"]
    click.echo(f"{corpus.root}: {block['utterances']} utterances -> {block['windows']['device']} device windows + "
               f"{block['windows']['random']} random-position windows of {window_s:g} s")


@data.command("stats", cls=VocabularyCommand, old_positional="--corpus-dir")
@corpus_dir_option
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write stats.png into the folder.")
def stats(corpus_dir: Path, plot: bool) -> None:
    """Counts per class, speaker, gender and duration of a prepared corpus."""
    from edge_ser.data.stats import corpus_stats

    result = corpus_stats(corpus_dir=corpus_dir, plot=plot)
    click.echo(result.to_text())


def _echo_counts(corpus) -> None:  # type: ignore[no-untyped-def]
    counts = corpus.manifest["counts"]
    click.echo(
        f"{corpus.root}: {counts['utterances']} utterances, {counts['speakers']} speakers "
        f"({counts['speakers_by_gender']['female']} female / {counts['speakers_by_gender']['male']} male), "
        f"{counts['hours']:.2f} h"
    )

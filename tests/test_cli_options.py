"""The shared CLI vocabulary (docs/cli.md): old spellings as hidden aliases, --progress, --resume."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from edge_ser.cli.options import VocabularyCommand, progress_option
from edge_ser.progress import progress_bar, progress_shown


@click.command("probe", cls=VocabularyCommand,
               old_spellings={"--test": "--corpus-dir", "--fresh": "--no-resume", "--seed": "--bootstrap-seed"},
               old_positional="--corpus-dir")
@click.option("--corpus-dir", "corpus_dirs", multiple=True)
@click.option("--resume/--no-resume", default=True)
@click.option("--bootstrap-seed", type=int, default=0)
@click.option("--title", default=None)
def probe(corpus_dirs: tuple[str, ...], resume: bool, bootstrap_seed: int, title: str | None) -> None:
    click.echo(f"dirs={list(corpus_dirs)} resume={resume} seed={bootstrap_seed} title={title}")


def _run(*args: str):
    return CliRunner().invoke(probe, list(args))


def test_new_spellings_print_no_deprecation():
    result = _run("--corpus-dir", "a", "--no-resume", "--bootstrap-seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "dirs=['a'] resume=False seed=3 title=None\n"
    assert result.stderr == ""


@pytest.mark.parametrize(("args", "old", "new"), [
    (["--test", "a"], "--test", "--corpus-dir"),
    (["--test=a"], "--test", "--corpus-dir"),
    (["a"], "a positional 'a'", "--corpus-dir a"),
])
def test_old_spelling_works_and_names_the_new_one(args, old, new):
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "dirs=['a'] resume=True seed=0 title=None\n"
    assert result.stderr == (f"probe: {old} is deprecated, use {new} (the old spelling is removed in the next "
                             "release)\n")


def test_old_flag_and_option_in_one_line_each_warn_once():
    result = _run("--fresh", "--seed", "5", "--test", "a", "--test", "b")
    assert result.exit_code == 0, result.output
    assert result.stdout == "dirs=['a', 'b'] resume=False seed=5 title=None\n"
    assert result.stderr.count("is deprecated") == 4
    assert "--fresh is deprecated, use --no-resume" in result.stderr
    assert "--seed is deprecated, use --bootstrap-seed" in result.stderr


def test_a_value_that_looks_like_an_old_spelling_is_left_alone():
    result = _run("--title", "--test", "--corpus-dir", "a")  # "--test" is --title's value
    assert result.exit_code == 0, result.output
    assert result.stdout == "dirs=['a'] resume=True seed=0 title=--test\n" and result.stderr == ""
    after_dashes = _run("--corpus-dir", "a", "--", "--fresh")  # after "--" nothing is an option: not rewritten
    assert after_dashes.exit_code == 2 and "is deprecated" not in after_dashes.stderr


def test_old_spellings_are_hidden_from_help():
    text = _run("--help").output
    assert "--corpus-dir" in text and "--bootstrap-seed" in text
    assert "--test" not in text and "--fresh" not in text and "--seed " not in text
    assert "DEPRECATED" not in text  # the command itself is not deprecated, only the old spellings


def test_an_alias_to_a_missing_option_is_refused_when_the_command_is_built():
    with pytest.raises(ValueError, match="--nowhere, which is not an option"):
        VocabularyCommand("bad", params=[click.Option(["--out"])], old_spellings={"--dest": "--nowhere"})
    with pytest.raises(ValueError, match="--out is still an option"):
        VocabularyCommand("bad", params=[click.Option(["--out"]), click.Option(["--json"])],
                          old_spellings={"--out": "--json"})


def test_no_progress_switches_off_bars_of_functions_without_a_progress_argument(capsys):
    @click.command()
    @progress_option
    def loop(progress: bool) -> None:
        for _ in progress_bar(range(2), desc="inner loop", unit="step"):  # no enabled= here
            pass
        click.echo(f"progress={progress}")

    shown = CliRunner().invoke(loop, [])
    assert shown.exit_code == 0 and "inner loop: 2/2 step" in shown.stderr
    hidden = CliRunner().invoke(loop, ["--no-progress"])
    assert hidden.exit_code == 0 and hidden.stdout == "progress=False\n" and hidden.stderr == ""
    with progress_shown(False):
        with progress_shown(True):  # an inner block cannot switch bars back on
            list(progress_bar(range(2), desc="still off"))
    list(progress_bar(range(2), desc="on again"))
    err = capsys.readouterr().err
    assert "still off" not in err and "on again: 2/2" in err


def test_every_long_running_command_has_the_same_progress_and_resume_options():
    from edge_ser.cli import root

    def command(path: str) -> click.Command:
        group: click.Command = root
        for part in path.split():
            group = group.commands[part]  # type: ignore[attr-defined]
        return group

    def options(path: str) -> dict[str, click.Option]:
        return {opt: p for p in command(path).params if isinstance(p, click.Option) for opt in p.opts}

    long_running = ["data synth", "data prepare", "data noisy", "data conditions", "data augment", "data windows",
                    "features extract", "saliency", "train", "evaluate", "convert", "verify", "demo"]
    for path in long_running:
        progress = options(path).get("--progress")
        assert progress is not None and progress.secondary_opts == ["--no-progress"] and progress.default is True, path
    for path in ("features extract", "train", "demo"):
        resume = options(path).get("--resume")
        assert resume is not None and resume.secondary_opts == ["--no-resume"] and resume.default is True, path


@pytest.mark.parametrize(("command", "old", "new"), [
    ("data prepare", ["--root", "x"], "--raw-root"),
    ("data prepare", ["--folds", "6"], "--n-folds"),
    ("data stats", ["corpus"], "--corpus-dir corpus"),
    ("evaluate", ["--test", "x"], "--corpus-dir"),
    ("evaluate", ["--seed", "1"], "--bootstrap-seed"),
    ("verify", ["--test", "x"], "--corpus-dir"),
    ("verify", ["--out", "r.json"], "--json"),
    ("bench", ["--out", "r.json"], "--json"),
    ("demo", ["--data", "x"], "--raw-root"),
    ("demo", ["--fresh"], "--no-resume"),
])
def test_the_old_spellings_of_the_real_commands(command, old, new):
    from edge_ser.cli import root

    result = CliRunner().invoke(root, [*command.split(), *old, "--help"])  # rewritten before --help is seen
    assert result.exit_code == 0, result.output
    assert f"edge-ser {command}: " in result.stderr or f"root {command}: " in result.stderr
    assert f"is deprecated, use {new}" in result.stderr
    if old[0].startswith("--"):  # the help lists only the new spelling
        assert not re.search(rf"(?<![\w-]){re.escape(old[0])}(?![\w-])", result.stdout), result.stdout

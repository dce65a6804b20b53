"""Every `edge-ser ...` command written in README.md and docs/*.md is a command the CLI accepts.

- Every command in a fenced ``bash``/``sh``/``console`` block is parsed against the CLI (click's
  ``make_context``, with path existence not checked: the folders are the reader's), so a renamed or
  removed option, a wrong choice or a missing required option in the docs fails here.
- Inline code (`` `edge-ser convert --run RUN ...` ``) and block commands written with ``...`` are
  partial by design: their subcommand and every option they name must exist.
- Every complete command (not partial) also runs, in document order, on the tiny chain:
  tests/test_doc_commands.py, with the substitutions of :data:`TINY_CHAIN` (toy sizes) and stand-ins
  for what this machine lacks (RAVDESS, MSP-Podcast, a Ray cluster). docs/cli.md says the same.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from edge_ser.cli import root

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOUR_HEADING = "## A 5-minute tour of the CLI"
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(edge-ser [^`]+)`")

# Substitutions for the tiny chain, applied in order to the docs' commands (a token sequence that
# appears in the command is replaced). Each keeps the command's meaning at toy size.
TINY_CHAIN: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # (command, tokens in it, replacement); each keeps the command's meaning at toy size
    ("features extract", ("--model", "whisper-base"), ("--model", "tiny-whisper", "--random-init")),  # no real weights
    ("features extract", ("--layers", "K"), ("--layers", "1")),  # docs/scale.md's placeholder for the chosen layer
    ("features extract", ("--layers", "6"), ("--layers", "3")),  # whisper-base's last layer -> tiny-whisper's (3)
    ("features extract", ("--layers", "1"), ("--layers", "all")),  # tiny saliency may pick any layer: store them all
    ("data synth", ("--out",), ("--speakers", "3", "--per-speaker", "4", "--out")),
    ("train", ("--out",), ("--epochs", "1", "--out")),
    ("evaluate", ("--out",), ("--bootstrap", "0", "--out")),
    # ExecuTorch int8 lowering alone took 82 s here; the ONNX int8 artifact runs the same verify/bench/predict
    # commands in seconds (tests/test_demo.py and tests/test_converters.py convert ExecuTorch int8).
    ("convert", ("--target", "executorch"), ("--target", "onnx")),
    ("convert", ("--out",), ("--window-s", "1", "--calibration-utterances", "2", "--validation-utterances", "2",
                             "--out")),
    # a stream that fits the tiny chain's 1 s window (--window-s 1 above): 0.2 s hops, 1 s context
    ("features extract", ("--stream-hop", "1.0"), ("--stream-hop", "0.2", "--stream-context", "1")),
    ("convert", ("--stream-hop", "1.0"), ("--stream-hop", "0.2")),
    ("verify", ("--artifact",), ("--max-utterances", "2", "--artifact")),
    ("bench", ("--artifact",), ("--runs", "2", "--warmup", "0", "--threads", "1", "--artifact")),
]


@dataclass(frozen=True)
class Example:
    file: str
    line: int
    text: str
    partial: bool  # inline code or '...': only the command and its option names are checked
    in_tour: bool

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text, comments=True)[1:]  # without "edge-ser"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_examples() -> list[Example]:
    examples: list[Example] = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        for match in INLINE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            command = " ".join(match.group(1).split())  # an inline span may wrap over lines
            examples.append(Example(name, line, command, partial=True, in_tour=False))
        lang, in_tour, pending, start = None, False, "", 0
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("## "):
                in_tour = line.strip() == TOUR_HEADING
            fence = FENCE.match(line)
            if fence:
                lang = None if lang is not None else fence.group(1)
                continue
            if lang not in ("bash", "sh", "console"):
                continue
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            if not pending and not stripped.startswith("edge-ser "):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            command = pending + stripped
            pending = ""
            examples.append(Example(name, start, command, partial="..." in shlex.split(command, comments=True),
                                    in_tour=in_tour and name == "README.md"))
    return examples


EXAMPLES = doc_examples()


def resolve(args: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The (sub)command ``args`` name, its path and the rest of the arguments."""
    command: click.Command = root
    path = ["edge-ser"]
    rest = list(args)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    return command, path, rest


@contextlib.contextmanager
def paths_not_checked(command: click.Command):
    """Paths in the docs are the reader's folders: parse as if they existed."""
    saved = [(p.type, p.type.exists) for p in command.params if isinstance(p.type, click.Path)]
    for path_type, _ in saved:
        path_type.exists = False
    try:
        yield
    finally:
        for path_type, exists in saved:
            path_type.exists = exists


def parse(example: Example) -> None:
    command, path, rest = resolve(example.args)
    if example.partial:
        placeholder = rest and (rest[0] == "..." or rest[0].isupper())  # `edge-ser COMMAND --help`
        if isinstance(command, click.Group) and rest and not rest[0].startswith("-") and not placeholder:
            pytest.fail(f"{example}: {' '.join(path)} has no subcommand {rest[0]!r}")
        names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
        unknown = [a.split("=")[0] for a in rest if a.startswith("--") and a.split("=")[0] not in names]
        assert not unknown, f"{example}: {' '.join(path)} has no option {unknown}"
        return
    with paths_not_checked(command), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            command.make_context(" ".join(path), rest)
        except click.exceptions.Exit as exit_:  # --help
            assert exit_.exit_code == 0, str(example)
        except click.UsageError as exc:
            pytest.fail(f"{example}\n  does not parse: {exc.format_message()}")
    assert "is deprecated" not in err.getvalue(), f"{example}: uses an old spelling ({err.getvalue().strip()})"


def test_the_docs_have_examples_to_check():
    assert len(EXAMPLES) > 60
    assert sum(1 for e in EXAMPLES if e.in_tour) >= 15


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e.file}:{e.line}")
def test_every_example_parses(example):
    parse(example)


def test_a_renamed_option_in_an_example_would_fail():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse(Example("x.md", 1, "edge-ser evaluate --run r --corpus c --out o", partial=False, in_tour=False))
    with pytest.raises(AssertionError, match="uses an old spelling"):
        parse(Example("x.md", 1, "edge-ser evaluate --run r --test c --out o", partial=False, in_tour=False))
    with pytest.raises(AssertionError, match="has no option"):
        parse(Example("x.md", 1, "edge-ser verify --artifact A --test CORPUS", partial=True, in_tour=False))


def substitute(args: list[str]) -> list[str]:
    for command, old, new in TINY_CHAIN:
        if args[:len(command.split())] != command.split():
            continue
        for i in range(len(args) - len(old) + 1):
            if tuple(args[i:i + len(old)]) == old:
                args = [*args[:i], *new, *args[i + len(old):]]
                break
    return args

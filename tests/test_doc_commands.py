"""Every complete `edge-ser ...` command in README.md and docs/*.md runs, in document order, on the tiny chain.

`tests/test_cli_examples.py` parses every example against the CLI; this module runs the complete
ones (a fenced ``bash`` block command without ``...``) the way a reader would, one workspace for all:
README.md first (its tour makes ``work/syn``, ``work/ravdess``, ``work/run`` and ``work/et-int8``,
which docs/robustness.md and others reuse), then docs/*.md by name.

What the reader has and this machine does not is stood in for at toy size, nothing else:

- ``$EDGE_SER_RAVDESS`` is a RAVDESS-layout folder of 6 actors x 8 emotions x 2 statements (1 s
  tones), made here; ``/data/MSP-Podcast`` an MSP-Podcast-layout folder (consensus and detailed
  labels, Train/Development/Test1), made here.
- ``--model whisper-base`` is tiny-whisper with random weights, with the other sizes of
  :data:`test_cli_examples.TINY_CHAIN` (1 epoch, 2 validation utterances, ONNX instead of the
  82 s ExecuTorch int8 lowering, ...).
- Ray: one local instance with 2 CPUs serves every ``--engine ray`` command (``--address auto``
  joins it, as it would join a cluster); ``--workers`` above 2 becomes 2. ``train --workers 2``
  (processes) becomes 1 to keep the fast tier fast; tests/test_trainer.py runs parallel folds.

A command that fails here is a command that fails for a reader: fix the doc or the CLI.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from edge_ser.audio import write_audio
from edge_ser.cli import root
from edge_ser.labels import SAMPLE_RATE
from test_cli_examples import EXAMPLES, substitute

pytestmark = pytest.mark.slow

MSP_ROOT_IN_DOCS = "/data/MSP-Podcast"
RAVDESS_EMOTIONS = ("01", "02", "03", "04", "05", "06", "07", "08")
MSP_CLASSES = ("N", "H", "S", "A")
MSP_WORDS = {"N": "Neutral", "H": "Happy", "S": "Sad", "A": "Angry"}


def voiced(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A harmonic tone with a little noise: different per class and speaker, so nothing is constant."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    return (0.1 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_ravdess_layout(root: Path) -> Path:
    """Actor_XX/03-01-EE-01-SS-01-XX.flac for 6 actors (one per speaker fold), 8 emotions, 2 statements."""
    for actor in range(1, 7):
        for e, emotion in enumerate(RAVDESS_EMOTIONS):
            for statement in ("01", "02"):
                name = f"03-01-{emotion}-01-{statement}-01-{actor:02d}.flac"
                write_audio(root / f"Actor_{actor:02d}" / name,
                            voiced(1.0, 110.0 + 15 * e + 3 * actor, seed=actor * 100 + e * 10 + int(statement)))
    return root


def make_msp_layout(root: Path) -> Path:
    """Audios/*.wav with Labels/labels_consensus.csv and labels_detailed.csv, 4 speakers x 3 sets."""
    consensus, detailed = [], []
    sets = {"10": "Train", "11": "Train", "12": "Development", "13": "Test1"}
    for s, (speaker, split_set) in enumerate(sets.items()):
        for u in range(8):
            cls = MSP_CLASSES[u % len(MSP_CLASSES)]
            name = f"MSP-PODCAST_{s + 1:04d}_{u + 1:04d}.wav"
            write_audio(root / "Audios" / name, voiced(1.0, 120.0 + 20 * (u % 4) + 5 * s, seed=s * 50 + u),
                        subtype="PCM_16")
            arousal = 2.0 + (u % 4)
            consensus.append((name, cls, arousal, 4.0, 4.0, speaker, "Female" if s % 2 else "Male", split_set))
            for worker in range(3):
                detailed.append((name, f"WORKER{worker:05d}", MSP_WORDS[cls], "", arousal, 4.0, 4.0))
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(consensus, columns=["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender",
                                     "Split_Set"]).to_csv(root / "Labels" / "labels_consensus.csv", index=False)
    pd.DataFrame(detailed, columns=["FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct",
                                    "EmoVal", "EmoDom"]).to_csv(root / "Labels" / "labels_detailed.csv", index=False)
    return root


def doc_order(example) -> tuple[int, str, int]:
    return (0 if example.file == "README.md" else 1, example.file, example.line)


RUNNABLE = sorted((e for e in EXAMPLES if not e.partial), key=doc_order)


def at_toy_size(args: list[str], *, msp_root: Path) -> list[str]:
    """The reader's command, with only what this machine lacks stood in for (see the module docstring)."""
    args = [os.path.expandvars(a).replace(MSP_ROOT_IN_DOCS, str(msp_root)) for a in substitute(list(args))]
    ray = "--engine" in args and args[args.index("--engine") + 1] == "ray"
    if "--workers" in args:
        i = args.index("--workers") + 1
        args[i] = str(min(int(args[i]), 2)) if ray else "1"
    return args


def test_every_complete_doc_command_runs_on_the_tiny_chain(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_SER_RAVDESS", str(make_ravdess_layout(tmp_path / "raw-ravdess")))
    msp_root = make_msp_layout(tmp_path / "raw-msp")
    write_audio(tmp_path / "some.wav", voiced(2.0, 150.0, seed=0), sample_rate=SAMPLE_RATE)

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ran: dict[str, int] = {}
    try:
        for example in RUNNABLE:
            args = at_toy_size(example.args, msp_root=msp_root)
            result = CliRunner().invoke(root, args)
            assert result.exit_code == 0, (
                f"{example}\n  ran as: edge-ser {shlex.join(args)}\n{result.output}\n{result.exception!r}")
            ran[example.file] = ran.get(example.file, 0) + 1
    finally:
        if started_ray:
            ray.shutdown()
    # every document with complete commands ran all of them (a doc cannot drop out of this test unseen)
    expected = {}
    for example in RUNNABLE:
        expected[example.file] = expected.get(example.file, 0) + 1
    assert ran == expected
    assert len(RUNNABLE) >= 40 and {"README.md", "docs/accuracy.md", "docs/robustness.md", "docs/scale.md"} <= set(ran)


def test_the_stand_ins_only_replace_what_the_machine_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SER_RAVDESS", "/somewhere/ravdess")
    msp = tmp_path / "msp"
    args = at_toy_size(shlex.split('data prepare --corpus ravdess --raw-root "$EDGE_SER_RAVDESS" --out work/r'),
                       msp_root=msp)
    assert args == ["data", "prepare", "--corpus", "ravdess", "--raw-root", "/somewhere/ravdess", "--out", "work/r"]
    args = at_toy_size(shlex.split("features extract --corpus-dir work/msp --model whisper-base --out work/f "
                                   "--engine ray --address auto --workers 64"), msp_root=msp)
    assert args[args.index("--workers") + 1] == "2" and "auto" in args and "tiny-whisper" in args
    args = at_toy_size(shlex.split("train --features f --folds all --workers 2 --out r"), msp_root=msp)
    assert args[args.index("--workers") + 1] == "1" and "--epochs" in args
    args = at_toy_size(shlex.split(f"data prepare --corpus msp-podcast --raw-root {MSP_ROOT_IN_DOCS} --out m"),
                       msp_root=msp)
    assert str(msp) in args

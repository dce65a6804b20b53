"""Known third-party noise is silenced at its source; edge-ser's own and unknown warnings still show."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from edge_ser.quiet import KNOWN_LOG_RECORDS, KNOWN_WARNINGS, silence_known_noise

# Messages as the pinned stack printed them on a first `make demo` (at least one per known entry).
LOGGED = [
    ("torchao", "Failed to load /x/.venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
                "Could not load this library"),
    ("torchao", "Failed to load /x/site-packages/torchao/_C_cutlass_90a.abi3.so: Could not load this library"),
    ("torchao.kernel.intmm", "Warning: Detected no triton, on systems without Triton certain kernels will not work"),
    ("torch.utils._pytree", "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by "
                            "torch.compile as an opaque value type."),
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed. Skipping torchvision::nms"),
    ("root", "Please consider to run pre-processing before quantization. Refer to example: https://github.com/..."),
    ("coremltools", "Torch version 2.13.0+cpu has not been tested with coremltools. You may run into unexpected "
                    "errors."),
    ("coremltools", "scikit-learn version 1.9.1 is not supported. Minimum required version: 0.17."),
    ("coremltools", "Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'"),
    ("coremltools", "Saving value type of int64 into a builtin type of int32, might lose precision!"),
]
WARNED = [
    ("The tensor attributes self.head.gru._flat_weights[0], self.head.gru._flat_weights[1] were assigned during "
     "export. Such attributes must be registered as buffers", UserWarning, "contextlib"),
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`",
     FutureWarning, "copyreg"),
    ("overflow encountered in cast", RuntimeWarning, "coremltools.converters.mil.mil.ops.defs.iOS15.elementwise_unary"),
]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _log_through(name: str, message: str, level: int = logging.WARNING) -> list[str]:
    logger = logging.getLogger() if name == "root" else logging.getLogger(name)
    collect = _Collect()
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    return collect.messages


def _warn_as(message: str, category: type[Warning], module: str) -> None:
    warnings.warn_explicit(message, category, filename=f"{module.replace('.', '/')}.py", lineno=1, module=module,
                           registry={})


def test_every_known_entry_has_a_sample_and_a_reason():
    for entry in KNOWN_LOG_RECORDS:
        assert any(name == entry.logger and re.match(entry.message, m) for name, m in LOGGED), entry
    for entry in KNOWN_WARNINGS:
        assert any(re.match(entry.message, m) and c is entry.category for m, c, _ in WARNED), entry
    assert all(len(entry.reason) > 20 for entry in (*KNOWN_LOG_RECORDS, *KNOWN_WARNINGS))


def test_known_messages_are_dropped_and_others_kept():
    silence_known_noise()
    silence_known_noise()  # idempotent: still one filter per logger
    assert sum(type(f).__name__ == "_KnownRecordFilter" for f in logging.getLogger("torchao").filters) == 1

    for name, message in LOGGED:
        assert _log_through(name, message) == [], name
        # the same logger's other warnings, and errors with a known text, still show
        assert _log_through(name, "something new went wrong") == ["something new went wrong"]
        assert _log_through(name, message, logging.ERROR) == [message]
    torchao_sample = LOGGED[0][1]
    assert _log_through("torchao.quantization", torchao_sample) == [torchao_sample]  # children unaffected

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()  # filters go in front of "always"
        for message, category, module in WARNED:
            _warn_as(message, category, module)
        _warn_as("overflow encountered in cast", RuntimeWarning, "edge_ser.features.extract")  # not coremltools
        _warn_as("The tensor attributes self.head.scale were assigned during export", UserWarning, "contextlib")
        warnings.warn("edge-ser's own warning", UserWarning)
    assert [str(w.message) for w in caught] == [
        "overflow encountered in cast", "The tensor attributes self.head.scale were assigned during export",
        "edge-ser's own warning"]


SCRIPT = """
import logging, sys, tempfile, warnings
from pathlib import Path

import edge_ser.cli  # what `edge-ser` runs first: silences the known noise, then imports every command

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
import coremltools  # warns at import (versions, macOS-only libraries)
import numpy as np
import torch

sys.path.insert(0, {tests!r})
from test_converters import FM_NAME, LAYER, WINDOW_S, voiced_utterance
from edge_ser.converters.fused import build_fused_model
from edge_ser.converters.pipeline import convert
from edge_ser.fm import load_foundation_model
from edge_ser.train.model import TCGRU

torch.manual_seed(0)
fm = load_foundation_model(FM_NAME, random_init=True, seed=0)
head = TCGRU(fm.spec.hidden_size, conv_channels=16, gru_hidden=16, gru_layers=1, embed_dim=256).eval()
fused = build_fused_model(feature_model=fm, layer=LAYER, head=head, window_s=WINDOW_S)
convert(fused=fused, target="onnx", precision="int8", out=Path(tempfile.mkdtemp()) / "onnx-int8",
        calibration_waveforms=[], validation_waveforms=[voiced_utterance(s) for s in range(3)],
        source_info={{**fused.source, "run": "quiet-test"}})
warnings.warn("edge-ser's own warning", UserWarning)
logging.getLogger("coremltools").warning("a coremltools warning nobody has seen yet")
print("converted", flush=True)
"""


@pytest.mark.slow
def test_imports_and_an_onnx_int8_conversion_print_no_known_noise(tmp_path):
    """A fresh process (import-time warnings included), as `edge-ser` starts: imports, export, quantization."""
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT.format(tests=tests))], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "converted" in done.stdout
    for entry in (*KNOWN_WARNINGS, *KNOWN_LOG_RECORDS):
        assert not re.search(entry.message, done.stderr, re.I), (entry.message, done.stderr[-3000:])
    assert "Warning" not in done.stderr.replace("UserWarning: edge-ser's own warning", ""), done.stderr[-3000:]
    assert "UserWarning: edge-ser's own warning" in done.stderr
    assert "WARNING coremltools: a coremltools warning nobody has seen yet" in done.stderr

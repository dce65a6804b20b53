"""Known third-party noise, silenced where it is raised; every other warning still shows.

edge-ser's stack (torch, torchao, the ONNX exporter, ONNX Runtime, coremltools) warns about
things that are expected on the pinned, CPU-only set-up: CUDA extensions that cannot load,
optional packages that are not installed, deprecations inside those libraries' own code.
A first run printed over a hundred such lines around the few that matter. Each entry below
names one message (a regular expression matched at its start), where it comes from and why it
says nothing to an edge-ser user; nothing else is filtered, so edge-ser's own warnings and
third-party warnings not listed here still show. If a listed message starts to matter (e.g.
after a version bump), delete its entry.

:func:`silence_known_noise` installs the filters; the ``edge-ser`` command calls it before it
imports the heavy libraries (several warn at import). Library users call it the same way::

    import edge_ser.quiet
    edge_ser.quiet.silence_known_noise()
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import warnings

ONNXRUNTIME_LOG_SEVERITY = 3
"""ONNX Runtime's C++ log floor while edge-ser runs sessions: 3 = errors only (its default, 2, also
prints warnings such as unused initializers and execution-provider placement on a CPU-only build)."""


@dataclasses.dataclass(frozen=True)
class KnownWarning:
    """A ``warnings.warn`` message known to be noise. ``module``: regex for the module the warning is
    attributed to ("" where the library's stack level points at an incidental frame, e.g. contextlib)."""

    message: str
    category: type[Warning]
    module: str
    reason: str


@dataclasses.dataclass(frozen=True)
class KnownLogRecord:
    """A log record known to be noise. ``logger``: the exact logger that emits it (a filter on a logger
    sees only records logged on that logger, so children are unaffected); "root" = the root logger."""

    logger: str
    message: str
    reason: str
    platforms: tuple[str, ...] | None = None  # sys.platform values where it is noise; None = everywhere


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        message=r"The tensor attributes (\S+\._flat_weights\[\d+\](, )?)+ were assigned during export",
        category=UserWarning, module="",
        reason="torch.export on nn.GRU: the GRU re-assigns its own parameter list (_flat_weights) in forward; they "
               "are parameters already, the exported graph reads them correctly (parity checks it)."),
    KnownWarning(
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning, module="",
        reason="torch's pytree deprecates LeafSpec checks that torch.export/ExecuTorch still make internally when "
               "copying exported programs; nothing in edge-ser calls it."),
    KnownWarning(
        message=r"overflow encountered in cast", category=RuntimeWarning,
        module=r"coremltools\.converters\.mil\.mil\.ops\.defs\.iOS15\.elementwise_unary$",
        reason="coremltools gives a torch.clamp with only a lower bound (log-mel floor) an upper bound of float32 "
               "max, which becomes +inf in float16: still no upper bound. Weights that overflow would show in the "
               "Core ML structural check (dequantized weights vs fp32)."),
)

KNOWN_LOG_RECORDS: tuple[KnownLogRecord, ...] = (
    KnownLogRecord(
        "torchao", r"Failed to load \S*torchao/_C_(mxfp8|cutlass)\S*\.so",
        reason="torchao's CUDA kernels (mxfp8, cutlass) cannot load into the CPU-only torch; edge-ser uses only its "
               "CPU quantization."),
    KnownLogRecord(
        "torchao.kernel.intmm", r"Warning: Detected no triton",
        reason="Triton is a GPU compiler; the CPU-only set-up has none and edge-ser needs none."),
    KnownLogRecord(
        "torch.utils._pytree", r"<enum '\w+'> is an Enum subclass and is now natively supported by torch.compile",
        reason="torchao registers its enums as pytree constants at import; a deprecation inside torchao."),
    KnownLogRecord(
        "torch.onnx._internal.exporter._registration", r"torchvision is not installed\. Skipping torchvision::",
        reason="the ONNX exporter offers torchvision's detection ops when torchvision is present; edge-ser uses "
               "none of them."),
    KnownLogRecord(
        "root", r"Please consider to run pre-processing before quantization",
        reason="onnxruntime.quantization advises shape inference and graph optimisation before quantize_dynamic; "
               "the exported graph is already shape-complete, and the int8 artifact is judged by its parity check."),
    KnownLogRecord(
        "coremltools", r"Torch version \S+ has not been tested with coremltools",
        reason="coremltools lists the newest torch its release was tested with; the pinned pair is tested by "
               "edge-ser's own conversion tests."),
    KnownLogRecord(
        "coremltools", r"scikit-learn version \S+ is not supported",
        reason="only coremltools' scikit-learn converter needs it; edge-ser converts PyTorch models."),
    KnownLogRecord(
        "coremltools", r"Failed to load _ML\w+Proxy: No module named 'coremltools\.libcoremlpython'",
        platforms=("linux", "win32"),
        reason="Core ML prediction exists only on macOS; elsewhere the package is verified structurally (README)."),
    KnownLogRecord(
        "coremltools", r"Saving value type of int64 into a builtin type of int32",
        reason="MIL stores torch's int64 shape and index constants as int32; these are small integers."),
)


class _KnownRecordFilter(logging.Filter):
    """Drops the records of one logger whose message matches one of its known patterns."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:  # errors are never noise
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        return not any(p.match(message) for p in self.patterns)


def silence_known_noise() -> None:
    """Install the filters for :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_RECORDS`; idempotent.

    Call it before importing torch, torchao, coremltools or the converters: some warn at import.
    ONNX Runtime's C++ log floor is set here too if onnxruntime is already imported; code that
    creates sessions calls :func:`quiet_onnxruntime` (importing onnxruntime here would slow every
    command by its import time).
    """
    for known in KNOWN_WARNINGS:
        # filterwarnings replaces an identical filter instead of adding a second one.
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for record in KNOWN_LOG_RECORDS:
        if record.platforms is None or sys.platform in record.platforms:
            by_logger.setdefault(record.logger, []).append(re.compile(record.message))
    for name, patterns in by_logger.items():
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _KnownRecordFilter)]:
            logger.removeFilter(old)
        logger.addFilter(_KnownRecordFilter(patterns))
    if "onnxruntime" in sys.modules:
        quiet_onnxruntime()


def quiet_onnxruntime() -> None:
    """Lower ONNX Runtime's C++ logging to errors (:data:`ONNXRUNTIME_LOG_SEVERITY`) for sessions made after."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(ONNXRUNTIME_LOG_SEVERITY)

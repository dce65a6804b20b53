"""What the CPU can do, as far as numerics and speed of our kernels depend on it.

int8 matrix products are computed by different kernels on different instruction sets, and
the kernels are not all arithmetically equal (docs/parity.md): ONNX Runtime's x86 kernel for
uint8 x int8 on CPUs without VNNI (AVX2, AVX-512 without VNNI) adds *pairs* of products in
int16 with saturation (``vpmaddubsw``) before widening to int32; with VNNI/AMX the products are
summed straight into int32 (``vpdpbusd``); ARM64 kernels accumulate in int32 (``udot``/``sdot`` or
widening multiplies). bf16 training is fast only with native bf16 units. So every parity
result and benchmark records the :func:`cpu_features` of the machine it came from.

Standard library only: the runtime, the converters and the trainer all read it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import subprocess
from typing import Any

# Flags that change which int8/bf16 kernel runs (Linux /proc/cpuinfo names).
X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")

U8S8_INT16_PAIRS = "u8s8-int16-pairs"
"""ONNX Runtime's uint8 x int8 kernel without VNNI: pairs of products summed in int16 with
saturation, then int32. Can saturate unless |w_2j| + |w_2j+1| <= 128 for every weight pair."""
INT32_EXACT = "int32-exact"
"""Products summed in int32 (VNNI, AMX, ARM dot-product and widening-multiply kernels): the
result of the ONNX MatMulInteger definition, bit for bit."""
INT8_ACCUMULATION_PATHS = (INT32_EXACT, U8S8_INT16_PAIRS)


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """The kernel-relevant facts about one CPU."""

    machine: str  # platform.machine(): x86_64, aarch64, arm64
    model_name: str
    flags: tuple[str, ...]  # the subset of X86_FLAGS / ARM_FLAGS this CPU has

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in ("avx512_bf16", "amx_bf16"))

    @property
    def isa_class(self) -> str:
        """A short class name for tables: ``x86-avx2``, ``x86-avx512``, ``x86-avx2-vnni``,
        ``x86-avx512-vnni``, ``x86-amx``, ``arm64-dotprod``, ``arm64``, or the machine name."""
        if self.is_x86:
            if "amx_int8" in self.flags:
                return "x86-amx"
            wide = "avx512" if "avx512f" in self.flags else "avx2" if "avx2" in self.flags else "sse"
            return f"x86-{wide}-vnni" if self.has_vnni else f"x86-{wide}"
        if self.machine.lower() in ("aarch64", "arm64"):
            return "arm64-dotprod" if "asimddp" in self.flags else "arm64"
        return self.machine or "unknown"

    @property
    def onnxruntime_u8s8_path(self) -> str:
        """How ONNX Runtime accumulates uint8 x int8 products on this CPU."""
        if self.is_x86 and not self.has_vnni:
            return U8S8_INT16_PAIRS
        return INT32_EXACT

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "model_name": self.model_name, "isa_class": self.isa_class,
                "flags": list(self.flags), "onnxruntime_u8s8_accumulation": self.onnxruntime_u8s8_path}

    def to_text(self) -> str:
        flags = " ".join(self.flags) or "none of the int8/bf16 flags"
        return f"{self.model_name or self.machine} [{self.isa_class}; {flags}]"


def _linux_cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _macos_cpuinfo() -> tuple[str, set[str]]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = set()
    # Apple silicon has dot product and (M2+) i8mm; the sysctl names are hw.optional.arm.FEAT_*.
    for feature, flag in (("FEAT_DotProd", "asimddp"), ("FEAT_I8MM", "i8mm"), ("FEAT_BF16", "bf16")):
        if sysctl(f"hw.optional.arm.{feature}") == "1":
            flags.add(flag)
    if platform.machine().lower() in ("arm64", "aarch64"):
        flags.add("asimd")
    return sysctl("machdep.cpu.brand_string"), flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """The running machine's :class:`CpuFeatures` (read once per process).

    ``EDGE_SER_CPU_FLAGS`` (space-separated) replaces the flag list; tests use it to describe
    another CPU, and it is recorded like a real reading, so do not set it in production."""
    machine = platform.machine()
    if platform.system() == "Darwin":
        model, flags = _macos_cpuinfo()
    else:
        model, flags = _linux_cpuinfo()
    override = os.environ.get("EDGE_SER_CPU_FLAGS")
    if override is not None:
        flags = set(override.split())
    known = X86_FLAGS + ARM_FLAGS
    return CpuFeatures(machine=machine, model_name=model, flags=tuple(f for f in known if f in flags))

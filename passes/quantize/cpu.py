"""What the CPU can do fast in INT8, which decides the quantize pass's defaults.

On x86 without VNNI, ONNX Runtime's u8s8 kernels multiply with ``vpmaddubsw``, which adds pairs of
uint8×int8 products into int16 and saturates: full 8-bit weights can overflow and silently lose accuracy.
Quantizing weights to 7 bits (``reduce_range``) avoids it. VNNI (``avx512_vnni`` / ``avx_vnni``) accumulates in
int32 and needs no such care; ARM's dot-product kernels do not have the problem either.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path

_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """The INT8-relevant features of the CPU this process runs on."""

    machine: str
    avx2: bool
    avx512: bool
    vnni: bool

    @property
    def is_x86(self) -> bool:
        return self.machine in ("x86_64", "amd64", "i386", "i686")

    @property
    def needs_reduce_range(self) -> bool:
        """7-bit weights avoid int16 saturation in the x86 u8s8 kernels that lack VNNI."""
        return self.is_x86 and not self.vnni

    def describe(self) -> str:
        if not self.is_x86:
            return f"{self.machine} CPU"
        features = [
            name for name, present in (("AVX2", self.avx2), ("AVX-512", self.avx512), ("VNNI", self.vnni)) if present
        ]
        return f"{self.machine} CPU with {', '.join(features) or 'no AVX2'}" + ("" if self.vnni else ", no VNNI")


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The feature flags of the first processor listed in ``/proc/cpuinfo`` text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def features_from_flags(machine: str, flags: frozenset[str]) -> CpuFeatures:
    return CpuFeatures(
        machine=machine,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=bool(flags & _VNNI_FLAGS),
    )


@functools.cache
def detect_cpu() -> CpuFeatures:
    """The features of this machine's CPU. Without ``/proc/cpuinfo`` (macOS, Windows) an x86 CPU is assumed
    to lack VNNI, the safe side: ``reduce_range`` costs a little accuracy, overflow costs much more."""
    machine = platform.machine().lower()
    try:
        flags = parse_cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = frozenset()
    return features_from_flags(machine, flags)


# The flags that decide which INT8 and float kernels ONNX Runtime picks (MLAS dispatches on them).
_KERNEL_FLAGS = frozenset(
    {"sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "asimd", "asimddp", "i8mm", "sve"}
    | _VNNI_FLAGS
)


def parse_cpuinfo_model(text: str) -> str:
    """The model name of the first processor listed in ``/proc/cpuinfo`` text ('' if none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Processor", "CPU part"):
            return " ".join(value.split())
    return ""


@functools.cache
def speed_key() -> str:
    """This CPU's model name and the kernel-relevant ISA flags it has: what op speeds depend on besides the
    onnxruntime version (``op_speed`` keys its table by both)."""
    machine = platform.machine().lower()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = parse_cpuinfo_model(text) or platform.processor() or "unknown CPU"
    flags = sorted(parse_cpuinfo_flags(text) & _KERNEL_FLAGS)
    return f"{machine} {model} [{' '.join(flags)}]"

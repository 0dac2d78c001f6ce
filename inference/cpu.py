"""The CPU's instruction-set features that decide which int8 format runs well on it.

``read_cpu()`` reads this machine's CPU model and flags (Linux ``/proc/cpuinfo``; elsewhere no
flags, so the portable choice); ``int8_format(flags)`` is the pure rule that picks the int8
weight format from them. inference/quantize.py explains the rule; the manifest records the
format and ``CpuFeatures.to_manifest()`` of the machine that made and measured the variant.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

Int8Format = Literal["s8", "u8"]
INT8_FORMATS: tuple[Int8Format, ...] = ("s8", "u8")

CPUINFO = Path("/proc/cpuinfo")
# Instructions that multiply u8 by s8 into int32 without an int16 intermediate: VNNI's
# vpdpbusd (AVX-512 VNNI, AVX-VNNI), AMX's tile multiply, and on aarch64 the dot-product
# (SDOT/UDOT) and int8 matrix-multiply (SMMLA) extensions.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm"})
# The flags a manifest records: the ones above and the vector widths they come with.
REPORTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
)


def int8_format(flags: Iterable[str]) -> Int8Format:
    """The int8 weight format native to a CPU with ``flags``: "s8" (signed int8 weights) where it
    has an int8 dot-product instruction (VNNI, AMX, Arm dot product), else "u8"."""
    return "s8" if INT8_DOT_FLAGS & set(flags) else "u8"


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset[str]

    @property
    def int8_format(self) -> Int8Format:
        return int8_format(self.flags)

    def reported_flags(self) -> list[str]:
        """The flags that matter for int8 that this CPU has, in REPORTED_FLAGS order."""
        return [flag for flag in REPORTED_FLAGS if flag in self.flags]

    def to_manifest(self) -> dict[str, Any]:
        return {"model": self.model, "flags": self.reported_flags()}

    def signature(self) -> str:
        """Model and int8-relevant flags, e.g. ``Intel(R) Xeon(R) ... [avx2 avx512f ...]``."""
        return f"{self.model} [{' '.join(self.reported_flags())}]"

    def describe(self) -> str:
        """For people: the model, what it offers for int8 and hence the native format."""
        flags = ", ".join(self.reported_flags()) or "none of the int8-relevant flags"
        return f"{self.model} ({flags}; native int8 format {self.int8_format})"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The model and flags of the first processor in a ``/proc/cpuinfo`` text (x86-64 names
    them ``model name`` and ``flags``, aarch64 ``Features`` and often no model name)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: all cores report the same
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    model = fields.get("model name") or fields.get("hardware") or ""
    if not model and "cpu implementer" in fields:
        model = f"implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return CpuFeatures(model or platform.machine() or "unknown", frozenset(flags.split()))


@cache
def read_cpu(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """This machine's CPU; where ``cpuinfo`` cannot be read (not Linux) no flags, hence u8."""
    try:
        return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return CpuFeatures(platform.processor() or platform.machine() or "unknown", frozenset())

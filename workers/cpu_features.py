"""What this CPU's int8 arithmetic can do, for the warning an 8-bit int8 export earns on a CPU
without VNNI.

With VNNI (AVX512-VNNI, AVX-VNNI; AMX CPUs have it too) onnxruntime's int8 kernel accumulates
u8 x s8 products in 32 bits. Without it (AVX2 only) it sums pairs of them in 16 bits first
(vpmaddubsw), which saturates where an activation and a weight are both large: 8-bit weights
then lose accuracy at the tail (README, "int8 exports"), 7-bit weights cannot saturate.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

from workers.model_dir import ModelCard

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The first processor's flags from Linux's /proc/cpuinfo; None where it cannot be read
    (another OS), so nothing is claimed about the CPU."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def int8_saturation_warning(
    card: ModelCard, read_flags: Callable[[], frozenset[str] | None]
) -> str | None:
    """Why and how to re-export, for an int8 export with 8-bit weights on an x86 CPU whose
    flags show no VNNI; None otherwise. read_flags (cpu_flags) is called only for such a card."""
    if card.int8_weight_bits != 8:
        return None
    flags = read_flags()
    if flags is None:
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or flags & VNNI_FLAGS:
        return None
    return (
        "this CPU has no VNNI (AVX2 only): onnxruntime's int8 kernel can saturate with this "
        "export's 8-bit weights (cosine to fp32 0.970 at worst over the stdlib texts on such a "
        "CPU, against 0.981 with 7-bit ones); for CPUs like this one, export with --dtype int8 "
        "--weight-bits 7"
    )

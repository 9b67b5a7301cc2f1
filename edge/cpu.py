"""What the CPU offers that changes how int8 files compute (numpy-free, stdlib only).

x86 int8 kernels without VNNI (ONNX Runtime's MLAS, OpenVINO's oneDNN on AVX2) multiply uint8 activations by
int8 weights with ``vpmaddubsw``, which adds each pair of products in int16 and saturates: 255·127·2 > 32767.
With 7-bit weights (|q| ≤ 64) a pair sum stays below 2^15, so such a file computes the same everywhere;
VNNI (``vpdpbusd``) and ARM's dot-product instructions accumulate in int32 and never saturate.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) of the instructions that sum u8×s8 products straight into int32.
INT32_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@lru_cache(maxsize=1)
def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's "key: value" lines of ``path`` (lower-case keys); empty where there is none."""
    info: dict[str, str] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def cpu_flags(info: dict[str, str] | None = None) -> frozenset[str]:
    """x86 "flags" or ARM "features" of the first processor."""
    info = cpu_info() if info is None else info
    return frozenset((info.get("flags") or info.get("features") or "").split())


def int16_pair_sums_saturate(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """True on an x86 CPU whose int8 kernels add u8×s8 product pairs in int16 (no VNNI / AMX): 8-bit weights can
    overflow there. Unknown flags (no /proc/cpuinfo) count as "may saturate" on x86."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not (flags & INT32_DOT_PRODUCT_FLAGS)

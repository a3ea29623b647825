"""What the host CPU's int8 dot products can hold: x86 kernels without VNNI saturate u8 x s8 pair sums.

onnxruntime's and OpenVINO's AVX2 / AVX-512 (non-VNNI) int8 GEMMs multiply u8 activations by s8 weights
with ``vpmaddubsw``, which adds two products into a *saturating* int16: 2 * 255 * 128 = 65280 does not fit.
VNNI's ``vpdpbusd`` accumulates in int32 and is exact. Weights in [-64, 63] (``reduce_range``: 7 of 8
bits, onnxruntime's ``reduce_range`` and OpenVINO's saturation fix) keep every pair sum within int16.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: the widest symmetric weight range whose u8 x s8 pair sums fit int16: 2 * 255 * 64 = 32640
REDUCED_WEIGHT_RANGE = (-64, 63)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The host's CPU flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def int8_dot_saturates() -> bool:
    """True on an x86-64 host whose flags show AVX2 but no VNNI: its u8 x s8 int8 kernels saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return "avx2" in flags and not any(f in flags for f in VNNI_FLAGS)

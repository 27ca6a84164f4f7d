"""What ``--precision auto`` picks, and why: pure rules plus two cheap probes (CPU flags, the UNet's size).

- CUDA: fp16. Apple MPS and other devices: fp32.
- CPU: bf16 when the CPU has bf16 instructions (AVX-512 BF16 or AMX) and the UNet is large enough for the
  arithmetic to dominate; fp32 otherwise. Measured on an AMD EPYC with avx512_bf16 (BENCHMARKS.md "Precision"):
  full-size SD 1.5 runs a step ~1.7x faster in bf16, within a few grey levels of fp32; a small UNet (the demo
  model's 1.7 M parameters) is ~10 % *slower* in bf16 because converting costs more than it saves. Without the
  instructions bf16 is emulated and many times slower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names, best first
BF16_MIN_UNET_BYTES = 256 * 2**20  # below this (weights on disk), bf16 does not pay on a CPU


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32, fp16 or bf16
    auto: str = ""  # why auto picked it ("" when the user set the precision)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_instructions(flags: Optional[frozenset] = None) -> Optional[str]:
    """The CPU's bf16 instruction set ("amx_bf16", "avx512_bf16"), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in BF16_FLAGS if f in flags), None)


def unet_bytes(source) -> Optional[int]:
    """Size on disk of the model's UNet weights (a single file: the whole checkpoint); None if unknown."""
    from .hashes import source_files

    try:
        files = source_files(source)
        return sum(f.stat().st_size for f in files) if files else None
    except OSError:
        return None


def choose(asked: str, device: str, flags: Optional[frozenset] = None, weights: Optional[int] = None) -> Choice:
    """``asked`` is fp32, fp16, bf16 or auto; ``weights`` the UNet's bytes (None: unknown)."""
    if asked != "auto":
        return Choice(asked)
    if device.startswith("cuda"):
        return Choice("fp16", "fp16 on CUDA")
    if device != "cpu":
        return Choice("fp32", f"fp32 on {device}")
    isa = bf16_instructions(flags)
    if isa is None:
        return Choice("fp32", "fp32: this CPU has no bf16 instructions")
    if weights is None or weights < BF16_MIN_UNET_BYTES:
        size = "of unknown size" if weights is None else f"of {weights / 2**20:.0f} MiB"
        return Choice("fp32", f"fp32: bf16 ({isa}) does not pay for a UNet {size}")
    return Choice("bf16", f"bf16: this CPU has {isa}")

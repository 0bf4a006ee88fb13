"""How torch should run on this host: allocator tuning, dtype and device choice.

CPU speed differs a lot between hosts, so these are decided at run time from
what the machine reports, and every choice can be overridden.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h). Keeping freed memory in one arena and
# never giving it back to the kernel avoids the page-fault storm torch causes
# by allocating and freeing large activation buffers on every layer.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
ALLOCATOR_SETTINGS = {
    "MALLOC_ARENA_MAX": 1,
    "MALLOC_MMAP_MAX_": 0,
    "MALLOC_TRIM_THRESHOLD_": 100_000_000_000,
    "MALLOC_TOP_PAD_": 1 << 30,
}


def tune_allocator() -> bool:
    """Apply the glibc malloc tuning to this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            # mallopt takes an int: the largest value still means "never trim".
            (_M_TRIM_THRESHOLD, 2**31 - 1),
            (_M_TOP_PAD, 1 << 30),
        )
    )
    log.debug("glibc allocator tuning applied: %s", ok)
    return ok


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls are only fast with native support; on AVX2-only CPUs they are ~5x slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def choose_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def choose_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        if requested not in _DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; use one of auto, {', '.join(sorted(_DTYPES))}")
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def set_threads(n: int) -> None:
    """``n`` intra-op threads (0: leave torch's default), here and on the torch thread, whose OpenMP setting
    is its own once it has run (``uio/torch_thread.py``)."""
    if n > 0:
        from uio.torch_thread import run_on_torch

        torch.set_num_threads(n)
        run_on_torch(torch.set_num_threads, n)

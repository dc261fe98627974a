"""Keep freed host memory in the process, so a CPU step's temporaries do not fault in anew.

XLA's CPU runtime allocates every step's temporaries with ``malloc`` and frees them after the
step. glibc hands large blocks out as fresh ``mmap`` regions (and trims its per-thread heaps),
so the kernel zero-fills every page again on first touch, each step. Measured on a 2-core CPU
(jax 0.10.2, the DPO step of ``tools/bench_vs_trl.py`` on TRL's padded layout, 64 x 358 tokens):
1.05 million page faults (4 GiB) and 2.7 s of system CPU time per step; with one arena, no
``mmap`` and no trimming, none, and the step took 4.6 s instead of 5.8 s (packed 6 x 1,024:
2.27 -> 2.07 s; docs/performance.md).

The price: memory freed by the process stays mapped to it (its resident size keeps its peak),
which a training process, whose steps all need that peak again, does not mind. The ``fbjax``
command applies it before JAX starts, unless ``--system-malloc``; the benchmarks apply it for
every library in their process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """One malloc arena, no ``mmap``-served blocks, no trimming (glibc ``mallopt``).

    Call it before JAX (or any library that starts threads) allocates: a thread keeps the arena
    it first allocated from. Returns False, changing nothing, where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # A trim threshold of -1 becomes SIZE_MAX inside glibc: never trim.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(param, value) == 1 for param, value in settings)

"""Keeping freed CPU memory inside the process (glibc), so that training steps do not fault it back in.

On Linux with glibc, ``free`` hands memory back to the kernel once the free space at the top of the
heap exceeds a trim threshold, and serves large blocks with ``mmap`` / ``munmap``. A training step
allocates and frees the same feature maps every step, so the memory it gave back is asked for again
in the next step, and every 4 KiB page of it costs a page fault (the kernel zeroes it). For PGD-10 AT
and AT-LR on model B at batch 128 (CPU) that was anywhere from ~1k to ~90k minor faults per step, up to
~150 ms of a ~650 ms step, depending on the heap's history (what ran before in the process), so step
times and their ratios moved by 10-20 % between processes running the same code.
:func:`retain_freed_memory` raises both thresholds, so the heap keeps what a step freed for the next
one: no faults once the first steps have shaped the heap, the same numbers (only where the memory
comes from changes). The process's resident memory then no longer shrinks between steps, and it can
stay a little above the step's peak (freed pieces that later aligned requests do not fit).
"""

from __future__ import annotations

import ctypes
import platform
import sys
from collections.abc import Callable

#: ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Default thresholds, in bytes: free space kept at the heap top, and the block size from which
#: ``malloc`` uses ``mmap``. 1 GiB: above any feature map of the CPU runs.
DEFAULT_THRESHOLD = 1 << 30
#: glibc versions that cap the mmap threshold accept at most this (``HEAP_MAX_SIZE / 2`` on 64 bits).
_CAPPED_MMAP_THRESHOLD = 32 << 20

_applied: int | None = None


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt(param, value) -> 1 on success, 0 on refusal``, or ``None`` off Linux/glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def retain_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Makes glibc keep freed memory in the process (``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``).

    Process-wide and permanent (glibc cannot go back to its adaptive thresholds); a no-op off
    Linux/glibc and when already applied with a threshold at least as large.

    Args:
        threshold: Both thresholds, in bytes (``> 0``, at most ``2**31 - 1``): free space at the top
            of the heap kept instead of trimmed, and the size from which blocks are ``mmap``-ed (glibc
            versions that refuse it get 32 MiB).

    Returns:
        Whether glibc accepted the settings (now or in an earlier call).

    Raises:
        ValueError: ``threshold`` outside ``(0, 2**31 - 1]``.
    """
    global _applied
    if not 0 < threshold <= 2**31 - 1:
        raise ValueError(f"threshold must lie in (0, 2**31 - 1] bytes, got {threshold}")
    if _applied is not None and _applied >= threshold:
        return True
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    if not mallopt(M_TRIM_THRESHOLD, threshold):
        return False
    capped = min(threshold, _CAPPED_MMAP_THRESHOLD)
    if not mallopt(M_MMAP_THRESHOLD, threshold) and not mallopt(M_MMAP_THRESHOLD, capped):
        return False
    _applied = threshold
    return True

"""Bounds on what a data file or folder from elsewhere may make this program read: ``max_gib`` (bytes of
decoded arrays) and ``max_files`` (entries of an image folder walk)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

#: Bytes in one GiB (2**30).
GIB = 2**30

#: ``max_gib`` of ``null``/``"auto"``: this fraction of the machine's memory.
AUTO_MEMORY_FRACTION = 0.25

#: Memory assumed where the OS does not say (``os.sysconf`` missing, e.g. on Windows): 16 GiB.
_FALLBACK_MEMORY = 16 * GIB

#: The cgroup v2 memory limit of this process's container, when there is one.
_CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")

#: Default ``max_files`` of image folders: ImageNet-1k's 1.33 million images fit.
DEFAULT_MAX_FILES = 2_000_000


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or the container's cgroup v2 limit
    when that is lower; 16 GiB where the OS does not say."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        memory = _FALLBACK_MEMORY
    try:
        limit = _CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return memory
    return min(memory, int(limit)) if limit.isdigit() else memory


def resolve_max_gib(max_gib: float | str | None) -> float:
    """``max_gib`` in GiB: a positive finite number as it is; ``None``/``"auto"`` a quarter of
    :func:`machine_memory`.

    Raises:
        ValueError: Anything else (zero, negative, not finite, a bool or another string), in one line.
    """
    if max_gib is None or (isinstance(max_gib, str) and max_gib.strip().lower() == "auto"):
        return AUTO_MEMORY_FRACTION * machine_memory() / GIB
    if isinstance(max_gib, bool) or not isinstance(max_gib, numbers.Real) or not 0 < max_gib < math.inf:
        raise ValueError(
            f"max_gib must be a positive number of GiB (e.g. 0.5 or 8) or null/auto (a quarter of this machine's "
            f"memory, {AUTO_MEMORY_FRACTION * machine_memory() / GIB:.1f} GiB), got {max_gib!r}"
        )
    return float(max_gib)


def check_max_files(max_files: int) -> int:
    """``max_files`` as an int.

    Raises:
        ValueError: Not an integer ``>= 1`` (bools and strings included), in one line.
    """
    if isinstance(max_files, bool) or not isinstance(max_files, numbers.Integral) or max_files < 1:
        raise ValueError(f"max_files must be an integer >= 1 (default {DEFAULT_MAX_FILES}), got {max_files!r}")
    return int(max_files)


def size_text(nbytes: int) -> str:
    """``nbytes`` for messages: ``"3.0 GiB"``, ``"12.5 MiB"``, ``"256 bytes"``."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"

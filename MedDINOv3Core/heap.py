"""The process's heap policy for long CPU runs: large blocks get their own memory mapping (glibc only).

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it when freed, but it raises
that threshold each time such a block is freed (up to 32 MB). After a few freed tensors, blocks of many sizes come
from the heap instead, whose freed pieces it can rarely give back. Runs that allocate tensors of changing sizes
(``predict --fast``: every batch has its own body crop and token subset) then grow: 1.3 -> 2.3 GB resident over a
300 x 512 x 512 volume, against a flat 1.2 GB with a fixed 1 MB threshold (BENCHMARKS.md, issue 19).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
LARGE_BLOCK = 1 << 20


def map_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Give every allocation of at least ``threshold`` bytes its own mapping, returned to the system when freed
    (a fixed threshold: glibc no longer raises it). Process-wide; the command line sets it at start. Returns whether
    it applied (False off Linux or without glibc's ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1


__all__ = ["LARGE_BLOCK", "M_MMAP_THRESHOLD", "map_large_blocks"]

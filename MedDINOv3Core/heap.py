"""Returning freed heap memory to the system during long CPU runs (glibc only).

glibc serves a block of at least its mmap threshold with its own mapping, unmapped when freed, but it raises that
threshold each time such a block is freed (up to 32 MB). After a few freed tensors, blocks of many sizes come from
the heap instead, and the heap keeps the pages of freed pieces it cannot merge. Runs that allocate tensors of
changing sizes (``predict --fast``: every batch has its own body crop and token subset) then grow: 1.3 -> 2.3 GB
resident over a 300 x 512 x 512 volume (BENCHMARKS.md, issue 19).

``malloc_trim(0)`` hands the free pages inside the heap back. It is called every ``TRIM_EVERY_SLICES`` slices, not
after every batch: the pages a batch frees are faulted in again by the next one, which cost 8 % of a ViT-B
forward when trimmed after each (and 50 % with a fixed 1 MB mmap threshold, the other cure).
"""

from __future__ import annotations

import ctypes
import sys

TRIM_EVERY_SLICES = 32


def release_free_memory() -> bool:
    """Give the free pages inside the process's heap back to the system (glibc ``malloc_trim(0)``). Returns whether
    it ran (False off Linux or without glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def crossed(k0: int, k1: int, every: int = TRIM_EVERY_SLICES) -> bool:
    """Whether slices k0..k1-1 cross a multiple of ``every`` (the loops trim once per ``every`` slices)."""
    return k1 // every != k0 // every


__all__ = ["TRIM_EVERY_SLICES", "crossed", "release_free_memory"]

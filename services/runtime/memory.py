"""Keeping a long-running process's resident memory near what it uses (glibc's ``mallopt`` and
``malloc_trim``).

Why: an API process's read model follows the archive copy-on-write (``services/retrieval/
incremental.py``): each change allocates new per-row arrays, a few MiB at 223,648 images, and
frees the old ones when the searches on them finish. After the first such array is freed glibc
raises its mmap threshold (up to 32 MiB), so the later copies come from the threads' heaps, and
what they free there stays resident. Measured on the live-load graph (227,000 images, 16 clients,
writes every 5 s, ``mallinfo2``): after 5 minutes of writes the heaps held 220 MiB in use and
460 MiB free, RSS 1,871 MiB against 1,329 MiB for the same model without writes.
Two remedies (same graph and workload, scratch probe, 2026-12-06; RSS sampled every 10 s): the
trim alone left RSS at 1,570-1,690 MiB (free heap 400-540 MiB); both together kept the free heap
under 75 MiB and RSS at 1,390-1,440 MiB during the writes, 1,515-1,615 MiB while a new partition
was regrouped:

- ``bound_heap_growth``: a fixed mmap threshold (which also turns the raising off), so every
  array of at least that size is mapped on its own and unmapped when freed;
- ``release_free_heap``: ``malloc_trim(0)`` hands the free pages of every arena back
  (``MADV_DONTNEED``) without moving anything in use, for what stays below the threshold.

Other C libraries: both are no-ops.
"""

from __future__ import annotations

import ctypes
import sys

_C_LIBRARY = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_MALLOC_TRIM = getattr(_C_LIBRARY, "malloc_trim", None)
if _MALLOC_TRIM is not None:
    _MALLOC_TRIM.argtypes = [ctypes.c_size_t]
    _MALLOC_TRIM.restype = ctypes.c_int
_MALLOPT = getattr(_C_LIBRARY, "mallopt", None)
if _MALLOPT is not None:
    _MALLOPT.argtypes = [ctypes.c_int, ctypes.c_int]
    _MALLOPT.restype = ctypes.c_int
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
# Below one per-row array of a large archive (a 224,000-row int32 column is 875 KiB), above a
# search's boolean masks, which are reused from the heap at once.
MMAP_THRESHOLD_BYTES = 512 * 1024


def bound_heap_growth(mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Allocations of at least ``mmap_threshold_bytes`` are mapped on their own from now on (and
    the threshold stays put); False where the C library cannot."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, mmap_threshold_bytes))


def release_free_heap() -> bool:
    """Returns the heap's free pages to the system; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True

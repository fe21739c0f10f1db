"""Freed arrays leave the resident set: by ``release_free_heap`` (glibc's ``malloc_trim``), and by
``bound_heap_growth`` (a fixed mmap threshold) with no trim at all. A process whose read model is
copied on every write relies on both to keep its RSS near what it uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter, so that no earlier allocation shapes the heap. One freed 8 MiB array
# raises glibc's default mmap threshold past 1 MiB, so the next arrays come from the heap, as the
# read model's copies did; the array kept last pins the heap's top, so free() alone cannot
# shrink it. Prints how many MiB left the resident set once the 300 arrays were freed.
SCENARIO = """
import sys
import numpy as np, psutil
from services.runtime.memory import bound_heap_growth, release_free_heap
mode = sys.argv[1]
if mode == "bounded":
    assert bound_heap_growth()
process = psutil.Process()
raised = np.ones(8 << 20, np.uint8); del raised
blocks = [np.ones(1 << 20, np.uint8) for _ in range(300)]
pin = np.ones(1 << 20, np.uint8)
held = process.memory_info().rss
del blocks
if mode == "trim":
    assert release_free_heap()
print((held - process.memory_info().rss) >> 20)
"""


@pytest.mark.parametrize("mode", ["trim", "bounded"])
def test_freed_arrays_leave_the_resident_set(mode: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True,
                          text=True, check=True, timeout=120)  # fmt: skip
    dropped_mib = int(done.stdout)
    assert dropped_mib >= 200, f"only {dropped_mib} MiB of 300 MiB freed left the resident set"

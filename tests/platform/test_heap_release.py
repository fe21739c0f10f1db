"""``release_free_heap`` gives freed heap pages back to the system (glibc), which a process
whose read model is copied on every write relies on to keep its RSS near what it uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter, so that no earlier allocation shapes the heap. One freed 8 MiB array
# raises glibc's mmap threshold past 1 MiB, so the next arrays come from the heap, as the read
# model's copies do; the array kept last pins the heap's top, so free() alone cannot shrink it.
SCENARIO = """
import numpy as np, psutil
from services.runtime.memory import release_free_heap
process = psutil.Process()
raised = np.ones(8 << 20, np.uint8); del raised
blocks = [np.ones(1 << 20, np.uint8) for _ in range(300)]
pin = np.ones(1 << 20, np.uint8)
del blocks
before = process.memory_info().rss
released = release_free_heap()
after = process.memory_info().rss
print(int(released), (before - after) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_pages_leave_the_resident_set() -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    released, dropped_mib = map(int, done.stdout.split())
    assert released == 1
    assert dropped_mib >= 200, f"only {dropped_mib} MiB of 300 MiB freed left the resident set"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_bounded_heap_hands_large_arrays_back_when_they_are_freed() -> None:
    # The same allocations without a trim: with the threshold fixed, the 1 MiB arrays are
    # mapped on their own and leave the resident set as they are freed.
    bounded = SCENARIO.replace(
        "process = psutil.Process()",
        "from services.runtime.memory import bound_heap_growth\n"
        "assert bound_heap_growth()\nprocess = psutil.Process()\nstart = process.memory_info().rss",
    ).replace("before = process.memory_info().rss", "before = start + (301 << 20)")
    bounded = bounded.replace("released = release_free_heap()", "released = True")
    done = subprocess.run([sys.executable, "-c", bounded], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    _, dropped_mib = map(int, done.stdout.split())
    assert dropped_mib >= 200, f"only {dropped_mib} MiB of 300 MiB freed left the resident set"

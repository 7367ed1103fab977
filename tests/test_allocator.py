"""glibc keeps large freed blocks in the heap once fpt has set it up (pipeline/allocator.py).

Measured by the minor page faults of re-allocating and filling a 64 MB array, in a fresh
interpreter with and without the setting: a block served by a fresh mapping is faulted in page
by page again, a block reused from the heap is not.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
import numpy as np
from pipeline.allocator import keep_large_allocations_in_heap
applied = keep_large_allocations_in_heap() if sys.argv[1] == "heap" else False
block = np.ones(16 * 2**20, np.float32); del block   # 64 MB, above glibc's default mmap limit
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block = np.ones(16 * 2**20, np.float32); del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def test_large_blocks_are_reused_from_the_heap_without_page_faults() -> None:
    applied, with_setting = page_faults("heap")
    _, without = page_faults("default")
    assert applied  # Linux with glibc, as on every machine fpt is tested on
    assert with_setting < 20, with_setting
    assert without > with_setting, (without, with_setting)

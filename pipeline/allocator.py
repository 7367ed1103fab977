"""glibc's malloc set up for tensors of tens of megabytes.

By default glibc serves every allocation above an adaptive threshold (at most 32 MiB) with a
fresh memory mapping and unmaps it when it is freed, so the next allocation of that size has
every page faulted in and zeroed by the kernel again. fpt allocates such buffers at every
step: a ViT-B batch's float32 keys and values (60 MB each), zarr's buffer for a shard read
(55 MB), a stacked fusion's attention weights. Raising the threshold (and the one at which
glibc returns free heap memory to the system) keeps them in the heap, where freed blocks are
reused. Reading a ViT-B training batch from the cache went from 256-332 to 144-160 ms, a demo
trial from 4.9-5.5 to 4.4-5.0 s (bench/README.md). The price: memory freed after a peak stays
with the process until it exits.

On Linux with glibc only; elsewhere nothing is changed.
"""

from __future__ import annotations

import ctypes
import sys

HEAP_LIMIT = 1 << 30  # allocations below 1 GiB come from the heap; up to 1 GiB of free heap is kept
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_large_allocations_in_heap() -> bool:
    """Apply the thresholds to this process; True when glibc accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_LIMIT))

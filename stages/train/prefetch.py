"""Reading the next batch while the current one trains.

Stage two alternates reading a batch from the cache (zarr, decompressing, gathering rows, float16 to
float32) and a training step on it. A background thread prepares batch i+1 while the step of
batch i runs, so an epoch takes about max(read, step) instead of their sum. The codecs, numpy copies
and torch release the GIL, so the thread runs on another core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")

_END = object()


def prefetched(items: Iterable[Item], prepare: Callable[[Item], Prepared]) -> Iterator[Prepared]:
    """prepare(item) for each item, computed one item ahead in a background thread, in order.

    An exception from the iteration or from `prepare` is raised here, at the item it belongs to.
    """
    iterator = iter(items)

    def produce() -> object:
        item = next(iterator, _END)
        return item if item is _END else prepare(item)  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpt-prefetch") as pool:
        pending = pool.submit(produce)
        while True:
            ready = pending.result()
            if ready is _END:
                return
            pending = pool.submit(produce)
            yield ready  # type: ignore[misc]

"""A pack's stacks stepped side by side in threads of one torch thread each, on a multi-core CPU.

A stack of 16 demo models makes some 500 small tensor operations a step, and torch splits each of
them over its intra-op threads: on 2 cores the second thread gains little on operations this
small. Two stacks of 8, each in its own Python thread with one intra-op thread, keep both cores
busy instead (torch releases the GIL inside its kernels): a 16-model step of the demo takes 264 ms
against 364 ms for one stack on 2 threads on a 2-core AMD EPYC (bench/README.md).

It also makes a packed trial repeatable: every model is computed on one torch thread, as
`OMP_NUM_THREADS=1 fpt train-side` computes it alone, so the two agree bit for bit
(docs/sweeps.md, "Packed trials").

torch's thread count is per thread once set (OpenMP's own setting of each thread), but
`torch.set_num_threads` also sets the count that threads started later begin with; `map`
therefore sets the calling thread's count again after the workers have set theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


class StackThreads:
    """`workers` threads, each running torch on one intra-op thread."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.caller_threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fpt-stack", initializer=torch.set_num_threads,
                                        initargs=(1,))

    @staticmethod
    def for_pack(device: torch.device, models: int) -> StackThreads | None:
        """Threads for a pack of `models` on `device`: one per torch thread of this process, on a CPU
        with at least two of them and a pack of at least two models; None otherwise (a GPU runs one
        stack, and a lone model cannot be split)."""
        threads = torch.get_num_threads()
        if device.type != "cpu" or threads < 2 or models < 2:
            return None
        return StackThreads(min(threads, models))

    def map(self, action: Callable[..., T], *arguments: Iterable) -> list[T]:
        """action(*row) for each row of the arguments, in the workers; results in order. An
        exception in a worker is raised here, after every submitted call has ended."""
        futures = [self._pool.submit(action, *row) for row in zip(*arguments)]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:  # let no call still run on the models when an error leaves here
                future.cancel() or future.exception()
            torch.set_num_threads(self.caller_threads)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

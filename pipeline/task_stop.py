"""How an interrupted sweep or distributed extraction stops the tasks its dask workers run.

dask cannot interrupt a running task, and on a cluster the user started, a task outlives the
client that submitted it. So each run names a dask `Event`. On Ctrl-C the client sets it. A sweep's
packs check it before each training step; an extraction task checks it before each batch. A started
task stops after its current step or batch, and one that starts later stops at once. A trial keeps
the resume state of its last finished epoch; a shard being written is finished first. The client
waits for the tasks to end, so running the command again cannot train a trial, or write a shard,
in two tasks at once.

On the worker, a thread reads the event every `POLL_SECONDS`, so a step only reads a flag.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POLL_SECONDS = 1.0
WAIT_SECONDS = 60.0


def new_stop_name() -> str:
    return f"fpt-stop-{uuid.uuid4().hex}"


@contextmanager
def stop_requests(name: str | None) -> Iterator[Callable[[], bool]]:
    """Inside a dask task: a check that says whether the client asked its tasks to stop."""
    if name is None:
        yield lambda: False
        return
    from distributed import Event

    event = Event(name)
    requested, finished = threading.Event(), threading.Event()

    def read() -> bool:
        try:
            return event.is_set()
        except Exception:  # the scheduler is gone: the worker goes with it, nothing to stop here
            return False

    if read():
        requested.set()

    def poll() -> None:
        while not requested.is_set() and not finished.wait(POLL_SECONDS):
            if read():
                requested.set()

    thread = threading.Thread(target=poll, name="fpt-stop", daemon=True)
    thread.start()
    try:
        yield requested.is_set
    finally:
        finished.set()
        thread.join()


def stop_tasks(client: Any, futures: list[Any], name: str, on_wait: Callable[[], None] | None = None) -> int:
    """Ask the run's tasks to stop and wait up to WAIT_SECONDS for them to end; then cancel the
    rest. Returns how many had not ended."""
    from distributed import Event, wait

    Event(name, client=client).set()
    if on_wait is not None:
        on_wait()
    try:
        wait(futures, timeout=WAIT_SECONDS)
    except TimeoutError:
        pass
    still_running = sum(not future.done() for future in futures)
    client.cancel(futures)
    return still_running

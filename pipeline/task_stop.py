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


class TasksStopped(Exception):
    """Ctrl-C in the client, which asked its tasks to stop; `still_running` of them had not ended
    when it stopped waiting."""

    def __init__(self, still_running: int) -> None:
        self.still_running = still_running
        super().__init__(f"{still_running} task(s) still running")


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


@contextmanager
def stopping_on_interrupt(client: Any, futures: list[Any], name: str,
                          on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C inside: ask the tasks to stop, wait up to WAIT_SECONDS for them to end, cancel the
    rest and raise `TasksStopped`."""
    try:
        yield
    except KeyboardInterrupt:
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
        raise TasksStopped(still_running) from None


def still_running_hint(scheduler: str | None, still_running: int | None, clash: str) -> str:
    """The caveat for an interruption message when tasks on a cluster the user started may still
    run (`still_running` None: unknown, after a second Ctrl-C); `clash` says what two would do."""
    if not scheduler or still_running == 0:
        return ""
    running = "Some tasks" if still_running is None else f"{still_running} task(s)"
    return (f" {running} on the cluster at {scheduler} may still be running: wait until its workers are idle (the "
            f"dask dashboard shows them) before running the command again, so that no {clash} by two tasks at once.")

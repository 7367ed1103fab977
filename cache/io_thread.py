"""Stopping zarr's IO thread at the end of a command, with time for it to finish.

zarr reads and writes through an event loop running in a thread of its own, and stops that thread
from an atexit handler that waits only 0.2 s for it. On a loaded machine the thread can take
longer to wake up; the handler then prints "Thread did not finish cleanly" and a RuntimeError
traceback after a run that succeeded. Stopping the thread here first, with a longer wait, leaves
the handler nothing to do. zarr starts a new thread the next time it is used.
"""

from __future__ import annotations

import atexit
import sys

STOP_TIMEOUT_S = 10.0
_stopping_at_exit = False


def stop_zarr_io_thread(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop zarr's event-loop thread, waiting up to `timeout_s`; False if it is still running."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:  # zarr was never imported: no thread to stop
        return True
    loops, threads = getattr(sync, "loop", None), getattr(sync, "iothread", None)
    if not loops or not threads or loops[0] is None or threads[0] is None:
        return True
    loop, thread = loops[0], threads[0]
    executor = getattr(sync, "_executor", None)
    if executor is not None:
        # as zarr's own handler does: let running codec jobs hand their results to the live loop
        executor.shutdown(wait=True, cancel_futures=True)
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout_s)
    if thread.is_alive():
        return False
    sync.cleanup_resources()  # the thread has ended: this only closes the loop and forgets both
    return True


def stop_zarr_io_thread_at_exit() -> None:
    """Have this process run `stop_zarr_io_thread` when it exits, before zarr's own handler (for
    processes that end without going through the CLI, such as dask workers)."""
    global _stopping_at_exit
    if _stopping_at_exit:
        return
    import zarr.core.sync  # noqa: F401  zarr registers its handler on import; atexit runs the last registered first

    atexit.register(stop_zarr_io_thread)
    _stopping_at_exit = True

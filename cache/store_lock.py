"""One writer per store: a lock that two `fpt extract` runs on the same store cannot both hold.

Without it, a second extraction of the same dataset and settings started while the first runs
would find the store incomplete and compute the same shards again beside it. The lock is an
advisory `flock` on `.<store name>.lock` beside the store (inside it, `create_store`'s fresh group
would remove it). The kernel drops the lock when its process ends, however it ends, so a crashed
or killed run never leaves the store locked; the file itself stays and only says who held it last.
Dask workers of a distributed extraction write shards under the lock their client holds.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fpt.cache.errors import UserError

_held: set[Path] = set()  # stores this process holds: a nested writer (a transcode inside extract) goes on


def lock_file(store: Path) -> Path:
    return store.with_name(f".{store.name}.lock")


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's lock for the block, or a UserError at once if another process holds it."""
    key = store.resolve()
    if key in _held:
        yield
        return
    with open(lock_file(store), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"Another fpt command ({holder}) is writing the cache {store} right now.",
                "Wait for it to finish, then run this command again: it reuses what the other one wrote.",
            ) from None
        handle.seek(0)
        handle.truncate()
        now = dt.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {now}\n")
        handle.flush()
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)

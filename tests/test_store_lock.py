"""Two `fpt extract` runs on one store: the second is refused while the first writes, and a run that
crashed (killed) leaves no lock behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_config

from fpt.cache.errors import UserError
from fpt.cache.layout import store_name
from fpt.stages.extract.run import run_extract

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from pathlib import Path
from fpt.cache.store_lock import store_lock
with store_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(store: Path) -> subprocess.Popen:
    """Another process that holds the store's lock, as an `fpt extract` writing it would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_extraction_of_a_store_being_written_is_refused_and_a_killed_one_leaves_no_lock(tmp_path: Path) -> None:
    first = run_extract(tiny_config(tmp_path), show_progress=False)  # to learn the store's name
    store = tmp_path / "cache" / store_name("demo", first.metadata.cache_key)
    holder = _holder(store)
    try:
        with pytest.raises(UserError) as refused:
            run_extract(tiny_config(tmp_path), show_progress=False)
        message = refused.value.paragraph()
        assert f"Another fpt command (pid {holder.pid} on " in message and f"is writing the cache {store}" in message
        assert "Wait for it to finish, then run this command again" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the process never releases the lock itself
        holder.wait()
    again = run_extract(tiny_config(tmp_path), show_progress=False)
    assert again.reused and again.path == store

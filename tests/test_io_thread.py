"""A command that used zarr exits without zarr's "Thread did not finish cleanly" traceback.

zarr's atexit handler waits 0.2 s for its IO thread; a loop kept busy for 0.5 s at exit stands in
for a loaded machine, where that wait is too short.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZARR_WARNING = "Thread did not finish cleanly"


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    prelude = textwrap.dedent(f"""
        import sys, time
        import numpy as np, zarr
        from zarr.core import sync
        sys.path.insert(0, {str(REPO)!r})
        array = zarr.create_array(store={str(tmp_path / "a.zarr")!r}, shape=(40,), chunks=(10,), dtype="f4")
        array[:] = np.arange(40)
        def keep_loop_busy():
            sync.loop[0].call_soon_threadsafe(time.sleep, 0.5)
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120)


def test_zarr_own_exit_handler_warns_when_its_loop_is_busy(tmp_path: Path):
    """The control: without fpt's stop, the situation this module guards against does happen."""
    result = _run("keep_loop_busy()\n", tmp_path)
    assert result.returncode == 0
    assert ZARR_WARNING in result.stderr and "RuntimeError" in result.stderr


def test_stopping_the_thread_first_leaves_a_clean_exit_and_zarr_usable(tmp_path: Path):
    result = _run("""
        from fpt.cache.io_thread import stop_zarr_io_thread
        keep_loop_busy()
        assert stop_zarr_io_thread()
        assert sync.iothread[0] is None and sync.loop[0] is None
        print(array[7:10].tolist())  # zarr starts a new thread when used again
        keep_loop_busy()
        assert stop_zarr_io_thread()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[7.0, 8.0, 9.0]"
    assert ZARR_WARNING not in result.stderr and "Traceback" not in result.stderr


def test_a_process_that_asked_for_it_stops_the_thread_at_exit(tmp_path: Path):
    """As a dask worker does (pipeline/cluster.py worker_setup): no CLI around it, only atexit."""
    result = _run("""
        from fpt.cache.io_thread import stop_zarr_io_thread_at_exit
        stop_zarr_io_thread_at_exit()
        stop_zarr_io_thread_at_exit()  # a second task on the same worker: registered once
        keep_loop_busy()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ZARR_WARNING not in result.stderr and "Traceback" not in result.stderr


def test_worker_setup_asks_for_it(monkeypatch):
    import fpt.pipeline.cluster as cluster

    calls: list[int] = []
    monkeypatch.setattr(cluster, "stop_zarr_io_thread_at_exit", lambda: calls.append(1))
    import torch

    threads = torch.get_num_threads()
    try:
        assert cluster.worker_setup(cluster.plan_local(num_tasks=1, use_gpu=False), "cpu") == "cpu"
    finally:
        torch.set_num_threads(threads)  # worker_setup bounds this process's threads
    assert calls == [1]


def test_a_thread_that_does_not_stop_in_time_is_reported(tmp_path: Path):
    result = _run("""
        from fpt.cache.io_thread import stop_zarr_io_thread
        keep_loop_busy()
        print(stop_zarr_io_thread(timeout_s=0.05))
        time.sleep(0.6)
    """, tmp_path)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("args, code", [(["datasets"], 0), (["train-side", "--set", "no.such=1"], 2)])
def test_every_command_stops_the_thread_on_its_way_out(monkeypatch, args: list[str], code: int):
    import fpt.pipeline.cli as cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "stop_zarr_io_thread", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["fpt", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    assert (exit_info.value.code or 0) == code
    assert calls == [1]

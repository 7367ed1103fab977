"""Crash safety: an extraction killed (SIGINT, then SIGKILL) mid-run resumes from its unfinished
shards without recomputing finished ones and ends equal to an uninterrupted run; an incomplete
store is never read as complete; a full disk gives a clear message and loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from cache_testing import stored_arrays
from tiny import cli_args, demo_source, tiny_assignments, tiny_config

from fpt.cache.errors import UserError
from fpt.cache.integrity import verify_store
from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader, read_metadata
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.cache.writer import ShardWriter
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_choice import find_cache

REPO = Path(__file__).resolve().parents[1]
# The real CLI, with a pause after each written shard so the test can interrupt it between shards.
# SIGINT is restored to Python's default handler: a child of a background job inherits it ignored.
SLOW_EXTRACT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import fpt.cache.writer as writer
write_shard = writer.ShardWriter.write_shard
def slowly(self, *args, **kwargs):
    write_shard(self, *args, **kwargs)
    time.sleep(0.3)
writer.ShardWriter.write_shard = slowly
from fpt.pipeline.cli import main
sys.argv = ["fpt", *sys.argv[1:]]
main()
"""


def _start_extract(root: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", SLOW_EXTRACT, "extract", "-q", *cli_args(tiny_assignments(root))]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _completed_shards(cache_root: Path) -> set[int]:
    marks = list(cache_root.glob("*.zarr/shard_complete/c/*"))
    return {int(p.name) for p in marks}


def _interrupt_after(process: subprocess.Popen, cache_root: Path, shards: int, sig: signal.Signals) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while len(_completed_shards(cache_root)) < shards:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "extraction made no progress"
        time.sleep(0.02)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def _file_stamps(store: Path, shards: set[int]) -> dict[str, tuple[int, bytes]]:
    group = zarr.open_group(store, mode="r")
    from fpt.cache.integrity import shard_file

    stamps = {}
    for name in ("keys", "values", "side_images"):
        for shard in shards:
            path = shard_file(store, group[name], shard)
            stamps[f"{name}/{shard}"] = (path.stat().st_mtime_ns, path.read_bytes())
    return stamps


def test_interrupted_extraction_resumes_and_equals_a_clean_run(tmp_path: Path) -> None:
    cache_root = tmp_path / "cache"
    code, err = _interrupt_after(_start_extract(tmp_path), cache_root, 2, signal.SIGINT)
    assert code == 130 and "Interrupted" in err and "Traceback" not in err
    (store,) = cache_root.glob("*.zarr")
    assert not read_metadata(store).complete

    code, _ = _interrupt_after(_start_extract(tmp_path), cache_root, 4, signal.SIGKILL)
    assert code == -signal.SIGKILL
    finished = _completed_shards(cache_root)
    assert 4 <= len(finished) < 6
    # An incomplete store is never taken for a complete one.
    with pytest.raises(UserError, match="incomplete"):
        CacheReader(store)
    with pytest.raises(UserError, match="incomplete"):
        find_cache(tiny_config(tmp_path), demo_source(tmp_path))
    report = verify_store(store, read_metadata(store))
    assert report.incomplete_shards == sorted(set(range(6)) - finished) and not report.damaged
    stamps = _file_stamps(store, finished)

    resumed = run_extract(tiny_config(tmp_path), show_progress=False)
    assert resumed.path == store and resumed.metadata.complete
    assert resumed.computed_samples == 4 * (6 - len(finished))
    assert _file_stamps(store, finished) == stamps  # finished shards were not rewritten

    clean = run_extract(tiny_config(tmp_path, f"cache.root={tmp_path / 'clean'}"), show_progress=False)
    assert clean.path.name == store.name
    got, want = stored_arrays(store), stored_arrays(clean.path)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert verify_store(store, resumed.metadata).ok


def test_store_marked_complete_with_unwritten_shards_is_refused(tmp_path: Path) -> None:
    metadata = synthetic_metadata({"train": 8, "val": 4, "test": 4}, selected=3, head_dim=8, side_store_size=16,
                                  storage=StorageSettings(dtype="float16", codec="zstd", codec_level=3, shard_size=4,
                                                          chunk_size=2))
    path = write_synthetic_cache(tmp_path, metadata)
    CacheReader(path)  # complete: readable
    group = zarr.open_group(path, mode="r+")
    group["shard_complete"][3] = 0
    with pytest.raises(UserError, match=r"shards \[3\] are not marked"):
        CacheReader(path)


def test_full_disk_gives_a_clear_message_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = ShardWriter._write

    def disk_fills_at_shard_2(self, shard, start, stop, features, side_images, token_indices):
        if shard == 2:
            self.group["keys"][start:stop] = np.ones_like(features["keys"])  # a half-written shard
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, shard, start, stop, features, side_images, token_indices)

    monkeypatch.setattr(ShardWriter, "_write", disk_fills_at_shard_2)
    with pytest.raises(UserError) as caught:
        run_extract(tiny_config(tmp_path), show_progress=False)
    message = caught.value.paragraph()
    assert "is full" in message and "the 2 of 6 shards" in message and "run the same `fpt extract`" in message
    (store,) = (tmp_path / "cache").glob("*.zarr")
    assert _completed_shards(tmp_path / "cache") == {0, 1}

    monkeypatch.setattr(ShardWriter, "_write", write)
    resumed = run_extract(tiny_config(tmp_path), show_progress=False)
    assert resumed.computed_samples == 16
    clean = run_extract(tiny_config(tmp_path, f"cache.root={tmp_path / 'clean'}"), show_progress=False)
    np.testing.assert_array_equal(CacheReader(store).read(0, 24)["keys"], CacheReader(clean.path).read(0, 24)["keys"])

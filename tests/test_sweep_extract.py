"""Extraction split by whole shards over dask workers equals single-process extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from sweep_support import tiny_config

from fpt.cache.reader import read_metadata
from fpt.pipeline.distributed_extract import run_extract, shard_groups

ARRAYS = ("keys", "values", "side_images", "token_indices", "contents", "sample_ids", "shard_complete")


def test_shard_groups_cover_every_shard_once() -> None:
    groups = shard_groups([0, 1, 2, 3, 5, 7, 8], 3)
    assert len(groups) == 3 and sorted(s for g in groups for s in g) == [0, 1, 2, 3, 5, 7, 8]
    assert shard_groups([4], 8) == [[4]] and shard_groups([], 2) == []


def test_distributed_extraction_equals_single_process(tmp_path: Path, torch_threads) -> None:
    from distributed import LocalCluster

    # the same batches (one shard each) and one torch thread on both sides: identical arithmetic
    same = [f"dataset.data_root={tmp_path / 'data'}", "extract.batch_size=4"]
    torch_threads(1)
    single = run_extract(tiny_config(tmp_path / "single", same), show_progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        spread = run_extract(tiny_config(tmp_path / "spread", same), show_progress=False,
                             scheduler=cluster.scheduler_address)
    assert spread.computed_samples == single.computed_samples == 24
    assert spread.path != single.path and spread.path.name == single.path.name
    meta_a, meta_b = read_metadata(single.path), read_metadata(spread.path)
    assert meta_b.complete and meta_a.cache_key == meta_b.cache_key and meta_b.num_shards == 6
    a = zarr.open_group(single.path, mode="r")
    b = zarr.open_group(spread.path, mode="r")
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:]), name
    assert float(np.abs(b["keys"][:].astype(np.float32)).sum()) > 0  # really computed, not fill values
    # a second run finds the store complete and reuses it
    assert run_extract(tiny_config(tmp_path / "spread", same), show_progress=False, scheduler="local").reused


def _flagged(cache_root: Path) -> int:
    stores = list(cache_root.glob("*.zarr"))
    if not stores:
        return 0
    try:
        return int(np.count_nonzero(zarr.open_group(stores[0], mode="r")["shard_complete"][:]))
    except (KeyError, FileNotFoundError):  # the client is still creating the store
        return 0


def test_ctrl_c_stops_distributed_extraction_on_a_cluster_and_a_rerun_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks stop after their current batch (a started shard write is finished and flagged), the
    client waits for them, and running the command again extracts only the missing shards."""
    import time

    import distributed
    from distributed import Client, LocalCluster

    from fpt.stages.core.errors import Interrupted
    from fpt.stages.lpm.token_selection import TokenSelectingLPM

    config = tiny_config(tmp_path, ["extract.batch_size=4"])  # one shard per batch, 6 shards
    cache_root = config.cache.root
    selection = TokenSelectingLPM.forward

    def slow_selection(self, images):  # 0.3 s a batch, so the interruption comes mid-extraction
        time.sleep(0.3)
        return selection(self, images)

    def ctrl_c_after_one_shard(futures, *args, **kwargs):
        deadline = time.monotonic() + 120
        while _flagged(cache_root) < 1:
            assert time.monotonic() < deadline, "no shard written in two minutes"
            time.sleep(0.05)
        raise KeyboardInterrupt
        yield  # a generator, like as_completed

    monkeypatch.setattr(TokenSelectingLPM, "forward", slow_selection)
    # in-process workers, so that the slow selection applies to them; reached through its address as
    # a cluster the user started
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            monkeypatch.setattr(distributed, "as_completed", ctrl_c_after_one_shard)
            with pytest.raises(Interrupted) as stopped:
                run_extract(config, show_progress=False, scheduler=cluster.scheduler_address)
            monkeypatch.undo()
            assert not any(client.processing().values())  # the task has ended: nothing writes any more
    assert "keeps every shard written" in stopped.value.hint and "may still be running" not in stopped.value.hint
    kept = _flagged(cache_root)
    assert 1 <= kept < 6
    time.sleep(1)
    assert _flagged(cache_root) == kept  # no shard was written after the command ended
    again = run_extract(config, show_progress=False)
    assert again.computed_samples == 24 - 4 * kept and read_metadata(again.path).complete

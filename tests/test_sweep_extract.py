"""Extraction split by whole shards over dask workers equals single-process extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from cache.reader import read_metadata
from pipeline.distributed_extract import shard_groups
from stages.extract import run_extract
from sweep_support import tiny_config

ARRAYS = ("keys", "values", "side_images", "labels", "splits", "sample_ids", "shard_complete")


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

"""The train split is stored in one seeded random order and read by whole shards; a store written
sorted (no shuffled splits in its metadata) is resumed in its own order and read chunk by chunk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from cache_testing import stored_arrays
from tiny import tiny_config

import fpt.stages.extract.run
from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.cache.writer import ShardWriter
from fpt.stages.datasets.registry import resolve_dataset
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_batches import SplitBatches


def _reads(reader: CacheReader, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    reads: list[tuple[int, int]] = []
    real = reader.read_stored_into
    monkeypatch.setattr(reader, "read_stored_into", lambda a, b, rows: reads.append((a, b)) or real(a, b, rows))
    return reads


def test_train_split_is_stored_shuffled_and_read_by_whole_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, "demo.num_train=24")
    result = run_extract(config, show_progress=False)
    reader = CacheReader(result.path)
    assert reader.metadata.shuffled_splits == ["train"]
    ids = reader.sample_ids()
    ranges = reader.metadata.split_ranges
    train_ids = ids[slice(*ranges["train"])]
    assert sorted(train_ids) == train_ids_sorted(config) and train_ids != sorted(train_ids)
    for split in ("val", "test"):
        part = ids[slice(*ranges[split])]
        assert part == sorted(part)
    # every stored label is its sample's own (the order moved whole samples)
    labels = {s.sample_id: s.label for s in resolve_dataset(config, show_progress=False).samples}
    assert [labels[i] for i in ids] == stored_arrays(result.path)["labels"].tolist()
    # the first 8 stored samples (two shards) are no longer one class run: demo classes are folders
    assert len({labels[i] for i in train_ids[:8]}) > 1

    reads = _reads(reader, monkeypatch)
    batches = SplitBatches(reader, "train", batch_size=4, shuffle=True, with_features=True, seed=0, buffer_shards=2)
    seen = np.concatenate([batch.indices for batch in batches])
    assert sorted(seen.tolist()) == list(range(*ranges["train"]))
    shard = reader.metadata.storage.shard_size
    assert all(a % shard == 0 and b - a == shard for a, b in reads)  # whole shards, one read each
    assert len(reads) == 24 // shard


def train_ids_sorted(config) -> list[str]:
    return sorted(s.sample_id for s in resolve_dataset(config, show_progress=False).samples if s.split == "train")


def test_a_store_written_sorted_is_resumed_in_its_own_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store sorted throughout, with no shuffled splits in its metadata; interrupted at shard 2."""
    config = tiny_config(tmp_path)
    write = ShardWriter._write

    def disk_fills_at_shard_2(self, shard, *args):
        if shard == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, shard, *args)

    with monkeypatch.context() as patch:
        patch.setattr(fpt.stages.extract.run, "storage_order", lambda samples: list(samples))
        patch.setattr(fpt.stages.extract.run, "SHUFFLED_SPLITS", ())
        patch.setattr(ShardWriter, "_write", disk_fills_at_shard_2)
        with pytest.raises(UserError, match="is full"):
            run_extract(config, show_progress=False)

    resumed = run_extract(config, show_progress=False)
    assert resumed.metadata.complete and resumed.metadata.shuffled_splits == []
    ids = CacheReader(resumed.path).sample_ids()
    assert ids == sorted(ids[:12]) + sorted(ids[12:18]) + sorted(ids[18:])

    clean = run_extract(tiny_config(tmp_path, f"cache.root={tmp_path / 'clean'}"), show_progress=False)
    assert clean.path.name == resumed.path.name  # the storage order is not part of the cache key
    clean_ids = CacheReader(clean.path).sample_ids()
    assert clean_ids != ids
    position = {sample_id: i for i, sample_id in enumerate(clean_ids)}
    got, want = stored_arrays(resumed.path), stored_arrays(clean.path)
    in_clean_order = [position[i] for i in ids]
    for name in ("keys", "values", "side_images", "labels"):
        np.testing.assert_array_equal(got[name], want[name][in_clean_order], err_msg=name)

    reader = CacheReader(resumed.path)
    reads = _reads(reader, monkeypatch)
    next(iter(SplitBatches(reader, "train", batch_size=4, shuffle=True, with_features=False, seed=0, buffer_shards=2)))
    assert all(b - a <= reader.metadata.storage.chunk_size for a, b in reads)  # chunks from all over the split

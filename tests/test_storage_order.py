"""The train split is stored in one seeded random order and read by whole shards; a split stored
sorted (no shuffled splits in the metadata) is read chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_config

from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader
from fpt.cache.storage_order import storage_order
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.stages.datasets.registry import resolve_dataset
from fpt.stages.datasets.samples import Sample
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
    assert [labels[i] for i in ids] == reader.labels().tolist()
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


def test_a_split_stored_sorted_is_read_chunk_by_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label table whose train split is sorted by id (no shuffled splits, as in stores written before the
    shuffled order): training reads chunks from all over the split, not whole shards."""
    storage = StorageSettings(dtype="float16", codec="zstd", codec_level=1, shard_size=8, chunk_size=2)
    metadata = synthetic_metadata({"train": 16, "val": 4, "test": 4}, selected=4, head_dim=8, side_store_size=16,
                                  storage=storage)
    reader = CacheReader(write_synthetic_cache(tmp_path, metadata))
    assert reader.metadata.shuffled_splits == []
    reads = _reads(reader, monkeypatch)
    next(iter(SplitBatches(reader, "train", batch_size=4, shuffle=True, with_features=False, seed=0, buffer_shards=2)))
    assert reads and all(b - a <= storage.chunk_size for a, b in reads)


def test_the_train_order_keeps_its_samples_in_place_when_images_are_added() -> None:
    """Each train sample's place comes from a hash of its id: adding images inserts them among the others,
    whose relative order stays (a grown store reads its old rows in long runs until it is compacted)."""
    samples = [Sample(f"train/c/{i:03d}.png", Path("x"), i % 3, "train") for i in range(40)]
    before = [s.sample_id for s in storage_order(samples)]
    added = [Sample(f"train/c/new{i}.png", Path("x"), 0, "train") for i in range(5)]
    after = [s.sample_id for s in storage_order(samples + added) if not s.sample_id.startswith("train/c/new")]
    assert after == before and before != sorted(before)

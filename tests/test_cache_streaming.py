"""Stage two's reading of a cache: every sample once per epoch, shuffled differently each epoch,
with a bounded number of samples in memory while streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.stages.train.cache_batches import SplitBatches

SHARD = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = StorageSettings(dtype="int8", codec="zstd", codec_level=1, shard_size=SHARD, chunk_size=2)
    metadata = synthetic_metadata({"train": 37, "val": 9, "test": 10}, selected=4, head_dim=8, side_store_size=16,
                                  storage=storage)
    return write_synthetic_cache(tmp_path_factory.mktemp("cache"), metadata)


def _epoch(batches: SplitBatches) -> np.ndarray:
    return np.concatenate([batch.indices for batch in batches])


@pytest.mark.parametrize("in_memory", [False, True])
def test_each_train_sample_once_per_epoch_in_a_new_order(store: Path, in_memory: bool) -> None:
    reader = CacheReader(store)
    batches = SplitBatches(reader, "train", batch_size=5, shuffle=True, with_features=True, seed=3,
                           buffer_shards=2, in_memory=in_memory)
    first, second = _epoch(batches), _epoch(batches)
    start, stop = reader.split_range("train")
    assert sorted(first.tolist()) == list(range(start, stop)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()
    assert first.tolist() != list(range(start, stop))


def test_batches_carry_the_samples_they_name(store: Path) -> None:
    reader = CacheReader(store)
    for batch in SplitBatches(reader, "train", batch_size=6, shuffle=True, with_features=True, seed=1, buffer_shards=2):
        assert batch.keys is not None and batch.keys.dtype == torch.float32  # int8 storage is decoded
        for row, index in enumerate(batch.indices):
            one = reader.read(int(index), int(index) + 1)
            np.testing.assert_array_equal(batch.keys[row], one["keys"][0])
            np.testing.assert_array_equal(batch.side_images[row], one["side_images"][0])
            assert batch.labels[row] == one["labels"][0]


def test_evaluation_order_is_cache_order(store: Path) -> None:
    reader = CacheReader(store)
    start, stop = reader.split_range("test")
    batches = SplitBatches(reader, "test", batch_size=4, shuffle=False, with_features=False)
    assert _epoch(batches).tolist() == list(range(start, stop))


def test_streaming_holds_a_bounded_number_of_samples(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = CacheReader(store)
    read_rows = 0
    real_read = reader.read_stored_into

    def counting(start: int, stop: int, rows: dict[str, np.ndarray]) -> None:
        nonlocal read_rows
        read_rows += stop - start
        real_read(start, stop, rows)

    monkeypatch.setattr(reader, "read_stored_into", counting)
    batch_size, buffer = 3, 2
    yielded = 0
    for batch in SplitBatches(reader, "train", batch_size, shuffle=True, with_features=True, seed=0, buffer_shards=buffer):
        assert read_rows - yielded <= buffer * SHARD + batch_size
        yielded += len(batch.indices)
    assert yielded == read_rows == 37


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8", "int4"])
def test_decode_rows_gathers_and_converts_like_decode(dtype: str) -> None:
    from fpt.cache.encoding import decode, decode_rows, encode

    features = np.random.default_rng(0).normal(size=(9, 2, 3, 5, 8)).astype(np.float32)
    stored, scales = encode(features, dtype)
    rows = np.array([7, 0, 7, 3])
    expected = decode(stored[rows], None if scales is None else scales[rows], dtype, 8).astype(np.float32)
    got = decode_rows(stored, scales, rows, dtype, channels=8)
    assert got.dtype == torch.float32 and got.shape == (4, 2, 3, 5, 8)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_decode_rows_writes_into_a_given_tensor() -> None:
    from fpt.cache.encoding import decode_rows, encode

    stored, scales = encode(np.random.default_rng(1).normal(size=(6, 2, 4)).astype(np.float32), "int8")
    rows = np.array([5, 1])
    out = torch.full((2, 2, 4), float("nan"))
    assert decode_rows(stored, scales, rows, "int8", out) is out
    torch.testing.assert_close(out, decode_rows(stored, scales, rows, "int8"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="float32"):
        decode_rows(stored, scales, rows, "int8", torch.empty(3, 2, 4))


def _copies(batches) -> list[tuple]:
    """Each batch copied as soon as it is handed out (reused buffers are overwritten later)."""
    return [(b.indices.copy(), b.labels.copy(), b.side_images.copy(), b.keys.clone(), b.values.clone())
            for b in batches]


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("split,shuffle", [("train", True), ("val", False)])
def test_reused_buffers_give_the_same_batches(store: Path, in_memory: bool, split: str, shuffle: bool) -> None:
    from fpt.stages.train.recipe import ready_batches

    reader = CacheReader(store)

    def batches() -> SplitBatches:  # 37 train and 9 val samples: a short last batch
        return SplitBatches(reader, split, batch_size=5, shuffle=shuffle, with_features=True, seed=4,
                            buffer_shards=2, in_memory=in_memory)

    expected = _copies(batches())
    cpu = torch.device("cpu")
    for got in (_copies(batches().batches(reuse=1)), _copies(batches().batches(reuse=3)),
                _copies(r.batch for r in ready_batches(batches(), cpu, prefetch=False)),
                _copies(r.batch for r in ready_batches(batches(), cpu, prefetch=True))):  # one batch ahead
        assert len(got) == len(expected) > 1
        for mine, theirs in zip(got, expected):
            for a, b in zip(mine, theirs):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("reuse", [1, 2])
def test_reused_buffers_are_used_in_turn(store: Path, reuse: int) -> None:
    reader = CacheReader(store)
    batches = SplitBatches(reader, "train", batch_size=5, shuffle=True, with_features=True, seed=0, buffer_shards=2)
    held = list(batches.batches(reuse=reuse))
    keys = [b.keys.untyped_storage().data_ptr() for b in held]
    values = [b.values.untyped_storage().data_ptr() for b in held]
    assert len(held) == 8 and len(set(keys)) == len(set(values)) == reuse and not set(keys) & set(values)
    assert all(keys[i] == keys[i % reuse] and values[i] == values[i % reuse] for i in range(len(held)))
    fresh = list(batches)  # iterating: a new tensor per batch
    assert len({b.keys.untyped_storage().data_ptr() for b in fresh}) == len(fresh)


@pytest.mark.parametrize("start,stop", [(0, 37), (5, 30), (8, 9)])
def test_large_reads_come_in_pieces_of_whole_chunks_with_the_same_data(
        store: Path, monkeypatch: pytest.MonkeyPatch, start: int, stop: int) -> None:
    import zarr

    import fpt.cache.reader

    reader = CacheReader(store)
    layout = reader.stored_row_layout(True)

    def read_all() -> dict[str, np.ndarray]:
        rows = {name: np.zeros((stop - start, *shape), dtype) for name, (shape, dtype) in layout.items()}
        reader.read_stored_into(start, stop, rows)
        return rows

    whole = read_all()

    def sample_bytes(name: str) -> int:
        shape, dtype = layout[name]
        return int(np.prod(shape)) * dtype.itemsize

    budget = 3 * sample_bytes("keys")  # keys: one chunk (2 samples) per read
    monkeypatch.setattr(fpt.cache.reader, "READ_PIECE_BYTES", budget)
    selections: dict[str, list[tuple[int, int]]] = {}
    real = zarr.Array.get_basic_selection

    def spy(self, selection, *args, **kwargs):
        selections.setdefault(self.basename, []).append((selection.start, selection.stop))
        return real(self, selection, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, "get_basic_selection", spy)
    pieces = read_all()
    for name in whole:
        np.testing.assert_array_equal(pieces[name], whole[name])
    assert selections.keys() == {"keys", "values", "keys_scale", "values_scale", "side_images"}
    for name, reads in selections.items():
        most = max(2, budget // sample_bytes(name) // 2 * 2)  # whole chunks of 2 within the budget
        assert reads[0][0] == start and reads[-1][1] == stop and all(b == c for (_, b), (c, _) in zip(reads, reads[1:]))
        assert all(b - a <= most and (b % 2 == 0 or b == stop) for a, b in reads), name
    assert len(selections["keys"]) == len(range(start - start % 2, stop, 2))


def test_a_shuffle_buffer_draws_chunks_from_across_the_split(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a store whose train split is sorted (by class, for class-per-folder data; a store without
    shuffled splits, as this synthetic one is), a buffer of whole shards would hold a few long runs: it is
    filled from chunks all over the split instead."""
    reader = CacheReader(store)
    reads: list[tuple[int, int]] = []
    real_read = reader.read_stored_into
    monkeypatch.setattr(reader, "read_stored_into", lambda a, b, rows: reads.append((a, b)) or real_read(a, b, rows))
    batches = SplitBatches(reader, "train", batch_size=3, shuffle=True, with_features=False, seed=0, buffer_shards=2)
    next(iter(batches))
    first_fill = reads[: 2 * SHARD // 2]  # 2 shards of 4 samples = 4 chunks of 2
    assert all(b - a <= 2 for a, b in first_fill)
    shards_touched = {a // SHARD for a, _ in first_fill}
    assert len(shards_touched) > 2  # more shards than the buffer could hold whole

"""Batches for stage two, read from the cache a shard at a time.

Training streams the split: shard order is shuffled every epoch and samples are shuffled
within a buffer of a few shards, so memory is bounded by the buffer, not the dataset.
`in_memory` loads the split once and shuffles globally instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cache.reader import CacheReader


@dataclass
class Batch:
    indices: np.ndarray  # global sample indices in the cache
    side_images: np.ndarray  # (B, S, S, 3) uint8
    labels: np.ndarray  # (B,) int64
    keys: np.ndarray | None  # (B, L, H, n, Dh)
    values: np.ndarray | None


def shard_blocks(reader: CacheReader, start: int, stop: int) -> list[tuple[int, int]]:
    """[start, stop) cut at shard boundaries, so each block reads whole (or edge) shards."""
    size = reader.metadata.storage.shard_size
    blocks = []
    position = start
    while position < stop:
        end = min((position // size + 1) * size, stop)
        blocks.append((position, end))
        position = end
    return blocks


def _read_blocks(reader: CacheReader, blocks: list[tuple[int, int]], with_features: bool) -> dict[str, np.ndarray]:
    parts = [reader.read(a, b, with_features) | {"indices": np.arange(a, b)} for a, b in blocks]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _batches_from(arrays: dict[str, np.ndarray], order: np.ndarray, batch_size: int) -> Iterator[Batch]:
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        yield Batch(
            indices=arrays["indices"][rows],
            side_images=arrays["side_images"][rows],
            labels=arrays["labels"][rows],
            keys=arrays["keys"][rows] if "keys" in arrays else None,
            values=arrays["values"][rows] if "values" in arrays else None,
        )


class SplitBatches:
    """Iterable over one split's batches; each iteration is one epoch."""

    def __init__(
        self, reader: CacheReader, split: str, batch_size: int, shuffle: bool, with_features: bool,
        seed: int = 0, buffer_shards: int = 4, in_memory: bool = False,
    ) -> None:
        self.reader = reader
        self.start, self.stop = reader.split_range(split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.with_features = with_features
        self.rng = np.random.default_rng(seed)
        self.buffer_shards = buffer_shards
        self.blocks = shard_blocks(reader, self.start, self.stop)
        self._memory = _read_blocks(reader, self.blocks, with_features) if in_memory and self.blocks else None

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Batch]:
        if not self.blocks:
            return
        if self._memory is not None:
            count = len(self._memory["labels"])
            order = self.rng.permutation(count) if self.shuffle else np.arange(count)
            yield from _batches_from(self._memory, order, self.batch_size)
            return
        blocks = list(self.blocks)
        if self.shuffle:
            blocks = [blocks[i] for i in self.rng.permutation(len(blocks))]
        group = self.buffer_shards if self.shuffle else 1
        leftover: dict[str, np.ndarray] | None = None
        for begin in range(0, len(blocks), group):
            arrays = _read_blocks(self.reader, blocks[begin : begin + group], self.with_features)
            if leftover is not None:
                arrays = {name: np.concatenate([leftover[name], arrays[name]]) for name in arrays}
            count = len(arrays["labels"])
            order = self.rng.permutation(count) if self.shuffle else np.arange(count)
            is_last = begin + group >= len(blocks)
            usable = count if is_last else count - count % self.batch_size
            yield from _batches_from(arrays, order[:usable], self.batch_size)
            leftover = {name: value[order[usable:]] for name, value in arrays.items()} if usable < count else None

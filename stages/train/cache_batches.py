"""Batches for stage two, streamed from the cache.

Training streams the split: every epoch its shards (or, for a split stored sorted by id, its
chunks of a few samples) are read in a new random order into a buffer the size of a few shards,
and samples are shuffled within it, so memory is bounded by the buffer, not the dataset.
Evaluation reads a shard at a time in order.
The buffer is allocated once per epoch and holds the arrays as stored (float16, or int8 or int4 with
their scales): shards are read into it, batches are gathered from it and decoded to float32 one
batch at a time (in one pass, cache/encoding.decode_rows), and the leftover rows move to its
front. A set of samples other than a split (a cross-validation fold) is read the same way by the
chunks that hold it, and a class-balanced epoch (train.sampler: balanced) by the blocks its draws
fall in (`SplitBatches`).

With a resident copy of the samples (stages/train/resident.py, in RAM or on the GPU) the same
schedule is walked with the same random stream, the buffer holding only the samples' indices, and
each batch is gathered from the copy: the same batches as streaming, bit for bit, without reading.
`in_memory` shuffles the whole split at once instead (another order), from the resident copy or
from one of its own in RAM.

Iterating gives each batch new keys/values tensors. `batches(reuse=n)` decodes them into n
float32 buffers in turn instead, so a batch's keys/values are overwritten n batches later: one
buffer for a loop that finishes with a batch before it asks for the next, two when a thread reads
one batch ahead (stages/train/recipe.ready_batches chooses). A new batch tensor is large (121 MB at
ViT-B/512, batch 16): the allocator maps it afresh every time and its pages fault in as they are
written, which cost about as much as the float16 to float32 conversion itself. The buffers are
made once and kept (`FeatureRings`), shared by a pack's splits, which are never read at once: made
afresh each epoch, a ViT-B buffer's pages cost 8 ms to fault in, and 130 ms at times (the kernel
compacting memory for its huge pages), which at 4 batches an epoch was a third of the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fpt.cache.encoding import decode_rows, scale_name
from fpt.cache.layout import aligned_blocks
from fpt.cache.reader import CacheReader
from fpt.stages.train.resident import ResidentSamples


@dataclass
class Batch:
    indices: np.ndarray  # global sample indices in the cache
    side_images: np.ndarray  # (B, S, S, 3) uint8
    labels: np.ndarray  # (B,) int64
    keys: torch.Tensor | None  # (B, L, H, n, Dh) float32, on the CPU (on the GPU where the copy is resident there)
    values: torch.Tensor | None


class _Rows:
    """Preallocated rows for every stored array of a sample; `count` of them are filled. With
    `stored=False` the rows are only the samples' cache indices (their data are resident elsewhere)."""

    def __init__(self, reader: CacheReader, capacity: int, with_features: bool, stored: bool = True) -> None:
        layout = reader.stored_row_layout(with_features) if stored else {}
        self.arrays = {name: np.empty((capacity, *shape), dtype) for name, (shape, dtype) in layout.items()}
        self.arrays["indices"] = np.empty(capacity, np.int64)
        self.count = 0

    def read(self, reader: CacheReader, start: int, stop: int) -> None:
        """Append samples [start, stop), read straight into the free rows."""
        end = self.count + stop - start
        if len(self.arrays) > 1:
            reader.read_stored_into(start, stop, {name: value[self.count : end] for name, value in self.arrays.items()
                                                  if name != "indices"})
        self.arrays["indices"][self.count : end] = np.arange(start, stop)
        self.count = end

    def take(self, rows: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        return {name: np.take(value, rows, axis=0) for name, value in self.arrays.items() if names is None or name in names}

    def keep_only(self, rows: np.ndarray) -> None:
        """Move `rows` (fewer than a batch) to the front; the rest of the buffer is free again."""
        kept = self.take(rows)
        for name, value in kept.items():
            self.arrays[name][: len(rows)] = value
        self.count = len(rows)


class _FeatureRing:
    """`size` float32 buffers per feature array, each a batch large, handed out in turn (one pass), on `device`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], batch_size: int, size: int,
                 device: torch.device = torch.device("cpu")) -> None:
        self.shapes = shapes
        self.batch_size = batch_size
        self.size = size
        self.device = device
        self.slots: list[dict[str, torch.Tensor]] = []
        self.turn = 0

    def next_slot(self) -> dict[str, torch.Tensor]:
        index = self.turn % self.size
        self.turn += 1
        if index == len(self.slots):  # made when first needed: a split of one batch needs one
            # numpy asks the kernel for transparent huge pages for large arrays (torch.empty does not):
            # a ViT-B slot (60 MB) then faults in 30 times instead of 15,000 times
            self.slots.append({name: torch.from_numpy(np.empty((self.batch_size, *shape), dtype=np.float32))
                               if self.device.type == "cpu" else
                               torch.empty((self.batch_size, *shape), dtype=torch.float32, device=self.device)
                               for name, shape in self.shapes.items()})
        return self.slots[index]


class FeatureRings:
    """The float32 batch buffers (`_FeatureRing`) of one or more splits, made when first needed and kept,
    one ring per device, batch shape and size: splits that are never read at once share them."""

    def __init__(self) -> None:
        self._rings: dict[tuple, _FeatureRing] = {}

    def ring(self, shapes: dict[str, tuple[int, ...]], batch_size: int, size: int,
             device: torch.device) -> _FeatureRing:
        key = (str(device), batch_size, size, tuple(sorted(shapes.items())))
        if key not in self._rings:
            self._rings[key] = _FeatureRing(shapes, batch_size, size, device)
        return self._rings[key]


class SplitBatches:
    """Iterable over the batches of one split, or of any set of samples (a cross-validation fold);
    each iteration is one epoch.

    `split`: a split's name, or the cache indices of the samples. A set of samples is read by the
    chunks that hold them (a few samples each, as a split stored sorted is), the others in those
    chunks skipped, so a fold drawn from all over train + val costs a chunk read per few samples.

    `balanced`: each epoch is as many draws as there are samples, with replacement, a class drawn
    uniformly and then a sample of it uniformly, so each sample's chance is inversely proportional
    to its class's count. The draws come from the shuffle's random stream (seeded, and kept in a
    resume state), and the reading is the same: blocks in random order into the buffer, the draws
    shuffled within it; a block with no draw is not read. A sample drawn several times is drawn
    into the same buffer, so its copies land a few batches apart at most (their augmentations differ).

    `resident`: a copy of (at least) these samples (stages/train/resident.py) the batches are gathered
    from, in streaming's order; `in_memory`: the whole set shuffled at once, from `resident` or from a
    copy of its own in RAM. `rings`: the float32 buffers of `batches(reuse=n)`, shared with other
    splits never read at the same time (a ring of its own by default).
    """

    def __init__(
        self, reader: CacheReader, split: str | np.ndarray, batch_size: int, shuffle: bool, with_features: bool,
        seed: int = 0, buffer_shards: int = 4, in_memory: bool = False, balanced: bool = False,
        resident: ResidentSamples | None = None, rings: FeatureRings | None = None,
    ) -> None:
        self.reader = reader
        self.rings = rings if rings is not None else FeatureRings()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.with_features = with_features
        self.balanced = balanced
        self.rng = np.random.default_rng(seed)
        metadata = reader.metadata
        storage = metadata.storage
        if isinstance(split, str):
            start, stop = reader.split_range(split)
            self.samples = np.arange(start, stop, dtype=np.int64)
            self.blocks = aligned_blocks(start, stop, storage.shard_size)
            # A split stored in random order (cache/storage_order.py) is read by whole shards in random
            # order. A split stored sorted by id, which for class-per-folder data means by class (a store
            # whose metadata lists no shuffled splits), is read by chunks (a few samples each) drawn from
            # the whole split: a buffer of whole shards would hold a few long single-class runs. Same
            # memory either way.
            stored_shuffled = split in metadata.shuffled_splits
            self.shuffle_blocks = self.blocks if stored_shuffled else aligned_blocks(start, stop, storage.chunk_size)
        else:
            self.samples = np.unique(np.asarray(split, dtype=np.int64))
            size = storage.chunk_size
            self.blocks = [(int(c) * size, min(int(c) * size + size, metadata.num_samples))
                           for c in np.unique(self.samples // size)]
            stored_shuffled = False
            self.shuffle_blocks = self.blocks
        block_size = storage.shard_size if stored_shuffled else storage.chunk_size
        self.blocks_per_buffer = max(1, buffer_shards * storage.shard_size // block_size)
        self.labels = reader.labels()[self.samples]
        self.in_memory = in_memory
        if resident is None and in_memory and self.blocks:
            resident = ResidentSamples(reader, self.samples, with_features)
        if resident is not None and not resident.holds(self.samples):
            raise ValueError("the resident copy lacks some of the samples")
        self.resident = resident

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples an epoch yields: the split's (or the set's) size, whichever way they are drawn."""
        return len(self.samples)

    @property
    def class_counts(self) -> np.ndarray:
        """How many of the samples each class of the cache has."""
        return np.bincount(self.labels, minlength=len(self.reader.metadata.class_names))

    def _draws(self) -> np.ndarray:
        """How often each sample of the cache is drawn this epoch (by cache index; 0 outside the set)."""
        draws = np.zeros(self.reader.metadata.num_samples, dtype=np.int64)
        if not self.balanced:
            draws[self.samples] = 1
            return draws
        present = np.flatnonzero(self.class_counts)
        by_class = self.samples[np.argsort(self.labels, kind="stable")]  # the samples grouped by class, in class order
        counts = self.class_counts[present]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        classes = self.rng.integers(len(present), size=self.num_samples)
        picked = by_class[offsets[classes] + self.rng.integers(counts[classes])]
        np.add.at(draws, picked, 1)
        return draws

    def _batch(self, rows: _Rows, selected: np.ndarray, ring: _FeatureRing | None = None) -> Batch:
        """The batch of the buffer's rows `selected`: read into the buffer, or gathered from the resident copy."""
        indices = rows.arrays["indices"][selected]
        source, at = (rows.arrays, selected) if self.resident is None else \
            (self.resident.arrays, self.resident.position[indices])
        keys = values = None
        if self.with_features:
            dtype = self.reader.metadata.storage.dtype
            slot = ring.next_slot() if ring is not None else None
            channels = self.reader.metadata.lpm.head_dim
            keys, values = (decode_rows(source[name], source.get(scale_name(name)), at, dtype,
                                        None if slot is None else slot[name][: len(at)], channels)
                            for name in ("keys", "values"))
        return Batch(indices=indices, side_images=np.take(source["side_images"], at, axis=0),
                     labels=np.take(source["labels"], at, axis=0), keys=keys, values=values)

    def _batches(self, rows: _Rows, order: np.ndarray, ring: _FeatureRing | None) -> Iterator[Batch]:
        for begin in range(0, len(order), self.batch_size):
            yield self._batch(rows, order[begin : begin + self.batch_size], ring)

    def _ring(self, reuse: int) -> _FeatureRing | None:
        if not (reuse and self.with_features):
            return None
        shape = self.reader.metadata.feature_shape  # as decoded: int4's stored rows are half as wide
        device = self.resident.device if self.resident is not None else torch.device("cpu")
        return self.rings.ring({name: shape for name in ("keys", "values")}, self.batch_size, reuse, device)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, reuse: int = 0) -> Iterator[Batch]:
        """One epoch; with `reuse` = n > 0, keys/values live in n buffers used in turn (module docstring)."""
        if not self.blocks:
            return
        draws = self._draws()
        if self.in_memory:
            memory = _Rows(self.reader, sum(b - a for a, b in self.blocks), self.with_features, stored=False)
            for a, b in self.blocks:
                memory.read(self.reader, a, b)
            # each sample as often as it is drawn: once for a plain epoch, where this is arange(count)
            pool = np.repeat(np.arange(memory.count), draws[memory.arrays["indices"]])
            order = self.rng.permutation(pool) if self.shuffle else pool
            yield from self._batches(memory, order, self._ring(reuse))
            return
        if self.shuffle:
            blocks = [self.shuffle_blocks[i] for i in self.rng.permutation(len(self.shuffle_blocks))]
            group = self.blocks_per_buffer
        else:
            blocks, group = list(self.blocks), 1
        blocks = [(a, b) for a, b in blocks if draws[a:b].any()]  # a balanced epoch leaves some out
        if not blocks:
            return
        rows = _Rows(self.reader, group * max(b - a for a, b in blocks) + self.batch_size, self.with_features,
                     stored=self.resident is None)
        ring = self._ring(reuse)
        for begin in range(0, len(blocks), group):
            pool = [np.arange(rows.count)]  # the rows left over from the last buffer, each drawn once
            for a, b in blocks[begin : begin + group]:
                first = rows.count
                rows.read(self.reader, a, b)
                pool.append(np.repeat(np.arange(first, rows.count), draws[a:b]))
            drawn = np.concatenate(pool)
            count = len(drawn)
            order = self.rng.permutation(drawn) if self.shuffle else drawn
            is_last = begin + group >= len(blocks)
            usable = count if is_last else count - count % self.batch_size
            yield from self._batches(rows, order[:usable], ring)
            rows.keep_only(order[usable:])

"""The order in which samples are read and stored: the train split shuffled once, by a seeded key.

Datasets list their samples sorted by id, which for class-per-folder data means by class. Stored
that way, a training buffer of a few whole shards would hold a few long single-class runs, so
training would have to read small chunks from all over the split (one zarr call each). Stored in
one seeded random order, any few whole shards are already a mixed sample of the split, and
training reads whole shards (bench/README.md: 0.65 vs 1.14 s per demo epoch of reading).

The order is a label table's (cache/label_table.py), and `fpt cache compact` lays a store's rows
out in it. Each train sample's place is given by a seeded hash of its id rather than by a
permutation of the whole split, so adding or removing images keeps the others in their relative
order: a store that has grown by appends still reads the old images of a split as long runs of
consecutive rows. The cache key does not depend on it. A store whose `shuffled_splits` is empty
holds every split sorted; it is valid, and training reads its train split chunk by chunk.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, TypeVar

from fpt.cache.layout import SPLIT_CODES

SHUFFLED_SPLITS = ("train",)
ORDER_SEED = 0


class StoredSample(Protocol):
    """What the order needs of a dataset's sample."""

    @property
    def sample_id(self) -> str: ...

    @property
    def split(self) -> str: ...


Sample = TypeVar("Sample", bound=StoredSample)


def order_key(sample_id: str) -> str:
    """A train sample's place in the order: a hash of the seed and its id."""
    return hashlib.sha256(f"{ORDER_SEED}:{sample_id}".encode()).hexdigest()


def storage_order(samples: list[Sample]) -> list[Sample]:
    """Split-ordered samples (train, val, test): the train split in its seeded order (`order_key`), val and
    test as given (sorted by id)."""
    ordered: list[Sample] = []
    for split in SPLIT_CODES:  # train, val, test
        part = [s for s in samples if s.split == split]
        if split in SHUFFLED_SPLITS:
            part = sorted(part, key=lambda s: order_key(s.sample_id))
        ordered.extend(part)
    return ordered

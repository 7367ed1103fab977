"""The order in which samples are stored: the train split shuffled once, at extraction.

Datasets list their samples sorted by id, which for class-per-folder data means by class. Stored
that way, a training buffer of a few whole shards would hold a few long single-class runs, so
training would have to read small chunks from all over the split (one zarr call each). Stored in
one seeded random order, any few whole shards are already a mixed sample of the split, and
training reads whole shards (bench/README.md: 0.65 vs 1.14 s per demo epoch of reading).

The order is the store's own: `sample_ids` lists it, resuming or a dask worker follows it, and
the cache key does not depend on it (the dataset fingerprint is taken in sorted order). A store
whose `shuffled_splits` is empty holds every split sorted; it is valid, and training reads its
train split chunk by chunk.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import numpy as np

from fpt.cache.errors import UserError
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


def storage_order(samples: list[Sample]) -> list[Sample]:
    """Split-ordered samples (train, val, test) with the train split in one seeded random order."""
    ordered: list[Sample] = []
    for split in SPLIT_CODES:  # train, val, test
        part = [s for s in samples if s.split == split]
        if split in SHUFFLED_SPLITS:
            permutation = np.random.default_rng(ORDER_SEED).permutation(len(part))
            part = [part[i] for i in permutation]
        ordered.extend(part)
    return ordered


def in_store_order(samples: list[Sample], sample_ids: list[str]) -> list[Sample]:
    """The samples in the order an existing store holds them (for resuming, and for dask workers)."""
    by_id = {s.sample_id: s for s in samples}
    missing = [sample_id for sample_id in sample_ids if sample_id not in by_id]
    if missing or len(sample_ids) != len(samples):
        raise UserError(
            f"The dataset's images do not match the samples listed in the cache being completed "
            f"({len(missing)} listed sample(s) not found, e.g. {missing[:3]}).",
            "Give the same dataset files, or move the unfinished cache away and extract again.",
        )
    return [by_id[sample_id] for sample_id in sample_ids]

"""Whole-store reads for the tests of the cache, and small synthetic stores with chosen class counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from fpt.cache.metadata import StorageSettings
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache


def stored_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store as numpy, read with zarr alone."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    return {name: array[...] for name, array in group.arrays()}


def class_count_store(root: Path, counts: dict[str, list[int]]) -> Path:
    """A small synthetic store (4 kept tokens of 8 channels, 16 px side images, shards of 8 in chunks of 2)
    whose splits hold `counts[split][c]` samples of class c."""
    storage = StorageSettings(dtype="float16", codec="zstd", codec_level=1, shard_size=8, chunk_size=2)
    metadata = synthetic_metadata({split: sum(c) for split, c in counts.items()}, selected=4, head_dim=8,
                                  side_store_size=16, storage=storage, class_counts=counts)
    return write_synthetic_cache(root, metadata)

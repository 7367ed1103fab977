"""Writing stage one's output into a cache store, whole shards at a time.

A shard is written only once all of its samples are computed, and `shard_complete[i]` is set
after its data. Concurrent writers (dask workers) therefore never share a shard file, and a
store interrupted at any point is known to be incomplete: the metadata says `complete: false`
until every shard is marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cache.layout import feature_numpy_dtype, write_metadata
from cache.metadata import CacheMetadata


class ShardWriter:
    def __init__(self, path: Path, metadata: CacheMetadata) -> None:
        self.path = path
        self.metadata = metadata
        self.group = zarr.open_group(path, mode="r+", zarr_format=3)
        self.dtype = feature_numpy_dtype(metadata.storage)

    def completed_shards(self) -> set[int]:
        flags = self.group["shard_complete"][:]
        return {int(i) for i in np.flatnonzero(flags)}

    def write_shard(self, shard: int, keys: np.ndarray, values: np.ndarray, side_images: np.ndarray) -> None:
        start, stop = self.metadata.shard_range(shard)
        expected = stop - start
        if not (len(keys) == len(values) == len(side_images) == expected):
            raise ValueError(f"shard {shard} needs {expected} samples, got {len(keys)}")
        self.group["keys"][start:stop] = keys.astype(self.dtype, copy=False)
        self.group["values"][start:stop] = values.astype(self.dtype, copy=False)
        self.group["side_images"][start:stop] = side_images
        self.group["shard_complete"][shard] = 1

    def finish(self, skipped: list | None = None) -> CacheMetadata:
        missing = set(range(self.metadata.num_shards)) - self.completed_shards()
        if missing:
            raise RuntimeError(f"cannot finish: shards {sorted(missing)[:10]} are not written")
        update = {"complete": True}
        if skipped is not None:
            update["skipped"] = skipped
        self.metadata = self.metadata.model_copy(update=update)
        write_metadata(self.group, self.metadata)
        return self.metadata

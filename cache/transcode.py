"""Re-writing a complete cache with other storage settings (dtype, codec, shards) without the LPM.

The new store gets the key `fpt extract` would give those settings, so it is found and reused
exactly as if it had been extracted with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache.identity import store_key
from cache.layout import create_store, store_name
from cache.metadata import StorageSettings
from cache.reader import CacheReader
from cache.writer import ShardWriter


def transcode(source: Path, root: Path, storage: StorageSettings) -> Path:
    reader = CacheReader(source)
    old = reader.metadata
    key = store_key(old.dataset, old.dataset_fingerprint, old.lpm, old.extraction, old.normalization, storage)
    metadata = old.model_copy(update={"storage": storage, "cache_key": key, "complete": False})
    path = root / store_name(old.dataset, key)
    root.mkdir(parents=True, exist_ok=True)
    group = reader.group
    create_store(path, metadata, group["labels"][:], group["splits"][:], reader.sample_ids())
    writer = ShardWriter(path, metadata)
    for shard in range(metadata.num_shards):
        start, stop = metadata.shard_range(shard)
        arrays = reader.read(start, stop)
        writer.write_shard(shard, arrays["keys"].astype(np.float32), arrays["values"].astype(np.float32),
                           arrays["side_images"])
    writer.finish(skipped=old.skipped)
    return path

"""Re-writing a complete cache with other storage settings (dtype, codec, shards) without the LPM.

The new store gets the key `fpt extract` would give those settings, so it is found and reused
exactly as if it had been extracted with them. It is written shard by shard through the same
`ShardWriter` as an extraction: an interrupted transcode keeps its finished shards, and running it
again continues from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fpt.cache.catalog import list_caches
from fpt.cache.errors import UserError
from fpt.cache.identity import store_key
from fpt.cache.layout import TOKEN_INDICES, create_store, store_name
from fpt.cache.metadata import CacheMetadata, StorageSettings
from fpt.cache.progress import open_progress
from fpt.cache.reader import CacheReader, read_metadata
from fpt.cache.store_lock import store_lock
from fpt.cache.writer import ShardWriter


def transcoded_key(source: CacheMetadata, storage: StorageSettings) -> str:
    """The key of `source`'s samples in `storage`'s settings, in `source`'s format version."""
    return store_key(source.dataset, source.dataset_fingerprint, source.lpm, source.extraction, source.normalization,
                     storage, source.format_version)


def transcode(source: Path, root: Path, storage: StorageSettings, show_progress: bool = False,
              resume_command: str = "the same `fpt extract` command") -> Path:
    """The store of `source`'s samples in `storage`'s settings under `root` (written, resumed, or reused).
    `resume_command` is what the full-disk message tells the user to run again."""
    reader = CacheReader(source)
    old = reader.metadata
    key = transcoded_key(old, storage)
    metadata = old.model_copy(update={"storage": storage, "cache_key": key, "complete": False})
    path = root / store_name(old.dataset, key)
    if path.resolve() == source.resolve():
        return path  # already in these settings
    root.mkdir(parents=True, exist_ok=True)
    with store_lock(path):
        _write(reader, metadata, path, show_progress, resume_command)
    return path


def _write(reader: CacheReader, metadata: CacheMetadata, path: Path, show_progress: bool, resume_command: str) -> None:
    """Create or resume the store at `path` and write its missing shards from `reader`'s store."""
    if path.exists():
        existing = read_metadata(path)
        if existing.cache_key != metadata.cache_key:
            raise UserError(f"{path} holds a cache with another key.", "Move it away and run again.")
        if existing.complete:
            return
    else:
        group = reader.group
        create_store(path, metadata, group["labels"][:], group["splits"][:], reader.sample_ids())
    writer = ShardWriter(path, metadata, resume_command)
    pending = [shard for shard in range(metadata.num_shards) if shard not in writer.completed_shards()]
    with open_progress(show_progress) as progress:
        task = progress.add_task(f"Transcoding to {metadata.storage.dtype}/{metadata.storage.codec}", total=len(pending))
        for shard in pending:
            start, stop = metadata.shard_range(shard)
            arrays = reader.read(start, stop, with_token_indices=metadata.has_token_indices)
            writer.write_shard(shard, arrays["keys"].astype(np.float32, copy=False),
                               arrays["values"].astype(np.float32, copy=False), arrays["side_images"],
                               arrays.get(TOKEN_INDICES))
            progress.advance(task)
    writer.finish(skipped=reader.metadata.skipped)


def equivalent_store(root: Path, wanted: CacheMetadata) -> Path | None:
    """A complete store under `root` with exactly the samples `wanted` describes, stored in another
    codec or shard layout but the same dtype: transcoding it gives the same store as running the LPM."""
    for path, metadata, _ in list_caches(root):
        if metadata is None or not metadata.complete or metadata.cache_key == wanted.cache_key:
            continue
        if metadata.storage.dtype != wanted.storage.dtype:
            continue
        if transcoded_key(wanted, metadata.storage) == metadata.cache_key:
            return path
    return None

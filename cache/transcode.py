"""Re-writing a complete cache with other storage settings (dtype, codec, shards) without the LPM.

The new store gets the key `fpt extract` would give those settings, so it is found and reused
exactly as if it had been extracted with them. It is written shard by shard through the same
`ShardWriter` as an extraction: an interrupted transcode keeps its finished shards, and running it
again continues from them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from fpt.cache.catalog import list_caches
from fpt.cache.errors import UserError
from fpt.cache.identity import features_key, store_key
from fpt.cache.label_table import TABLES
from fpt.cache.layout import TOKEN_INDICES, allot_rows, create_content_store, create_store, store_name
from fpt.cache.metadata import CacheMetadata, StorageSettings, StoreMetadata
from fpt.cache.progress import open_progress
from fpt.cache.reader import CacheReader, read_store_metadata
from fpt.cache.store_lock import store_lock
from fpt.cache.writer import ShardWriter


def transcoded_key(source: StoreMetadata, storage: StorageSettings) -> str:
    """The key of `source`'s samples in `storage`'s settings, in `source`'s format version."""
    if source.by_content:
        return features_key(source.dataset, source.lpm, source.extraction, source.normalization, storage,
                            source.format_version)
    assert isinstance(source, CacheMetadata)
    return store_key(source.dataset, source.dataset_fingerprint, source.lpm, source.extraction, source.normalization,
                     storage, source.format_version)


def transcode(source: Path, root: Path, storage: StorageSettings, show_progress: bool = False,
              resume_command: str = "the same `fpt extract` command") -> Path:
    """The store of `source`'s samples in `storage`'s settings under `root` (written, resumed, or reused).
    `resume_command` is what the full-disk message tells the user to run again."""
    reader = CacheReader(source)
    old = read_store_metadata(source)
    key = transcoded_key(old, storage)
    metadata = old.model_copy(update={"storage": storage, "cache_key": key, "complete": False})
    path = root / store_name(old.dataset, key)
    if path.resolve() == source.resolve():
        return path  # already in these settings
    root.mkdir(parents=True, exist_ok=True)
    with store_lock(path):
        _write(reader, metadata, path, show_progress, resume_command)
    return path


def _write(reader: CacheReader, metadata: StoreMetadata, path: Path, show_progress: bool, resume_command: str) -> None:
    """Create or resume the store at `path` and write its missing shards from `reader`'s store (row for row)."""
    if path.exists():
        existing = read_store_metadata(path)
        if existing.cache_key != metadata.cache_key:
            raise UserError(f"{path} holds a cache with another key.", "Move it away and run again.")
        if existing.complete:
            return
        if not same_rows(reader.path, path):
            raise UserError(f"{path} is an unfinished store whose rows are not those of {reader.path}.",
                            "Run the `fpt extract` command that started it to finish it, or move it away and run again.")
        metadata = existing
    elif metadata.by_content:
        group = reader.group
        create_content_store(path, metadata)
        empty = metadata.model_copy(update={"num_rows": 0})
        metadata = allot_rows(path, empty, [str(c) for c in group["contents"][:]], [str(x) for x in group["sample_ids"][:]])
        shutil.copytree(reader.path / TABLES, path / TABLES, dirs_exist_ok=True)
    else:
        group = reader.group
        assert isinstance(metadata, CacheMetadata)
        create_store(path, metadata, group["labels"][:], group["splits"][:], reader.sample_ids())
    writer = ShardWriter(path, metadata, resume_command)
    pending = [shard for shard in range(metadata.num_shards) if shard not in writer.completed_shards()]
    with open_progress(show_progress) as progress:
        task = progress.add_task(f"Transcoding to {metadata.storage.dtype}/{metadata.storage.codec}", total=len(pending))
        for shard in pending:
            start, stop = metadata.shard_range(shard)
            arrays = reader.read_rows(start, stop, with_token_indices=metadata.has_token_indices)
            writer.write_shard(shard, arrays["keys"].astype(np.float32, copy=False),
                               arrays["values"].astype(np.float32, copy=False), arrays["side_images"],
                               arrays.get(TOKEN_INDICES))
            progress.advance(task)
    writer.finish(skipped=None if metadata.by_content else reader.metadata.skipped)


def same_rows(source: Path, target: Path) -> bool:
    """Whether the store at `target` (possibly unfinished) holds the rows of `source` in the same order: a
    transcode of it, which transcoding again continues. A store the extraction itself grew does not."""
    if not target.exists():
        return True
    contents = [zarr.open_group(path, mode="r", zarr_format=3).get("contents") for path in (source, target)]
    if contents[0] is None or contents[1] is None:  # formats 2 and 3: the key names the samples and their order
        return contents[0] is None and contents[1] is None
    return np.array_equal(contents[0][:], contents[1][:])


def equivalent_store(root: Path, wanted: StoreMetadata) -> Path | None:
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

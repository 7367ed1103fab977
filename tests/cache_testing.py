"""Whole-store reads for the tests of the cache, and small synthetic stores with chosen class counts."""

from __future__ import annotations

from pathlib import Path

import shutil

import numpy as np
import zarr

from fpt.cache.identity import store_key
from fpt.cache.integrity import shard_digests
from fpt.cache.layout import SPLIT_CODES, store_name
from fpt.cache.metadata import CacheMetadata, StorageSettings
from fpt.cache.reader import CacheReader
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


def as_legacy(path: Path, version: int, fingerprint: str = "legacy") -> Path:
    """A copy of a format-4 store of one label table, its rows in the table's order (a fresh extraction), as
    fpt wrote formats 3 and 2: labels, splits and sample ids as arrays, the key over the dataset's
    `fingerprint`; format 2 without token indices."""
    reader = CacheReader(path)
    metadata = reader.metadata
    count = metadata.num_samples
    assert metadata.num_rows == count and reader.contiguous(0, count) and reader.rows[0] == 0
    key = store_key(metadata.dataset, fingerprint, metadata.lpm, metadata.extraction, metadata.normalization,
                    metadata.storage, format_version=version)
    target = path.parent / store_name(metadata.dataset, key)
    shutil.copytree(path, target)
    for name in ("tables", "contents"):
        shutil.rmtree(target / name)
    group = zarr.open_group(target, mode="r+", zarr_format=3)
    group.create_array("labels", data=reader.labels().astype(np.int16), chunks=(count,))
    splits = np.zeros(count, np.uint8)
    for split, (start, stop) in metadata.split_ranges.items():
        splits[start:stop] = SPLIT_CODES[split]
    group.create_array("splits", data=splits, chunks=(count,))
    if version == 2:
        shutil.rmtree(target / "token_indices")
        names = ["keys", "values", "side_images"]
        checksums = group.create_array("shard_sha256", shape=(metadata.num_shards, len(names), 32), dtype="uint8",
                                       chunks=(1, len(names), 32), fill_value=0, overwrite=True)
        checksums.attrs["arrays"] = names
        for shard in range(metadata.num_shards):
            checksums[shard] = shard_digests(target, group, names, shard)
    legacy = metadata.model_dump(exclude={"num_rows", "label_tables", "latest_table", "label_table"})
    legacy |= {"format_version": version, "cache_key": key, "dataset_fingerprint": fingerprint}
    group.attrs["fpt"] = CacheMetadata.model_validate(legacy).model_dump(mode="json", exclude={"num_rows"})
    return target

"""Where each array lives in a cache store, its shape, chunks, shards and codec.

    <root>/<dataset>-<key>.zarr/          zarr v3 group; attributes["fpt"] = StoreMetadata (format 4)
        keys          (N, L, H, n, Dh)   cache.dtype as stored (see cache/encoding.py); chunks (c, ...), shards (s, ...)
                                         int4: (N, L, H, n, ceil(Dh/2)) uint8, two channels a byte
        values        (N, L, H, n, Dh)   same
        keys_scale    (N, L, H, n)       float16   int8 only: per-token scales; same sample-axis chunks/shards
                      (N, L, H, n, ceil(Dh/32))    int4: one scale per 32 channels
        values_scale  same as keys_scale
        token_indices (N, L, H, n)       int16     the LPM token index of each kept key/value (format 3 on)
        side_images   (N, S', S', 3)     uint8     same sample-axis chunking and sharding
        contents      (N,)               string    format 4: sha256 of the image file each row holds ("" unused)
        sample_ids    (N,)               string    the image's path relative to its dataset folder (format 4: the
                                                   file the row was extracted from, for messages)
        labels        (N,)               int16     formats 2 and 3 only (format 4: tables/<sha256>.json)
        splits        (N,)               uint8     formats 2 and 3 only: 0 train, 1 val, 2 test
        shard_sha256  (num_shards, A, 32) uint8    sha256 of each sharded array's stored shard file
        shard_complete (num_shards,)     uint8     1 once that shard's data and checksums are written
        tables/<sha256>.json                       format 4: the label tables (cache/label_table.py)

N is the number of rows. A format-4 store grows by appending rows, each extraction's from a shard
boundary (`allot_rows`), so no written shard is ever rewritten to make room.

Every chunk of a sharded array ends with a crc32c that zarr checks as it reads it (`compressors`).
docs/cache-format.md describes this for readers that use zarr or dask alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

from fpt.cache.encoding import has_scales, scale_name, scale_shape, stored_dtype, stored_shape
from fpt.cache.metadata import CacheMetadata, StorageSettings, StoreMetadata

FEATURE_ARRAYS = ("keys", "values")
SAMPLE_ARRAYS = FEATURE_ARRAYS + ("side_images",)
TOKEN_INDICES = "token_indices"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def aligned_blocks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) cut at multiples of `size` (shard or chunk boundaries, or a multiple of
    the chunk size), so each block reads whole (or edge) shards or chunks."""
    blocks = []
    position = start
    while position < stop:
        end = min((position // size + 1) * size, stop)
        blocks.append((position, end))
        position = end
    return blocks


def store_name(dataset: str, cache_key: str) -> str:
    return f"{dataset}-{cache_key[:16]}.zarr"


def compressors(storage: StorageSettings) -> tuple:
    """The byte codecs of every per-sample chunk: the configured compressor, then a crc32c of the
    compressed bytes, which zarr checks on every read of the chunk (a flipped bit in the compressed
    payload may otherwise decode to a wrong number without an error); about 13 GB/s on one core."""
    return _compressor(storage) + (Crc32cCodec(),)


def _compressor(storage: StorageSettings) -> tuple:
    level = storage.codec_level
    if storage.codec == "zstd":
        return (ZstdCodec(level=level),)
    if storage.codec == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=min(level, 9), shuffle="shuffle"),)
    if storage.codec == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=min(level, 9), shuffle="shuffle"),)
    if storage.codec == "gzip":
        return (GzipCodec(level=min(level, 9)),)
    if storage.codec == "none":
        return ()
    raise ValueError(f"unknown codec {storage.codec!r}")


def chunks_checksummed(array: zarr.Array) -> bool:
    """Whether every chunk of this sharded array carries a crc32c that zarr checks as it reads it (the
    shard index always does; its chunks do in stores written with `compressors`)."""
    return any(isinstance(inner, Crc32cCodec)
               for codec in array.metadata.codecs if isinstance(codec, ShardingCodec) for inner in codec.codecs)


def feature_numpy_dtype(storage: StorageSettings) -> np.dtype:
    return stored_dtype(storage.dtype)


def token_index_dtype(num_tokens: int) -> np.dtype:
    """int16 holds the token index of every LPM input up to 32,767 tokens (2,896 px at patch 16);
    larger grids take int32. Readers take the dtype from the array itself."""
    return np.dtype(np.int16) if num_tokens <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def sharded_arrays(metadata: StoreMetadata) -> tuple[str, ...]:
    """The per-sample arrays written shard by shard, in the order of shard_sha256's second axis."""
    scales = tuple(scale_name(name) for name in FEATURE_ARRAYS) if has_scales(metadata.storage.dtype) else ()
    indices = (TOKEN_INDICES,) if metadata.has_token_indices else ()
    return FEATURE_ARRAYS + scales + indices + ("side_images",)


def create_store(path: Path, metadata: CacheMetadata, labels: np.ndarray, splits: np.ndarray, sample_ids: list[str]) -> zarr.Group:
    """Create an empty store of format 2 or 3 (one row per sample, labels as arrays) with every array
    allocated; sample data is written shard by shard."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    count = metadata.num_samples
    _sample_arrays(group, metadata, count)
    group.create_array("labels", data=labels.astype(np.int16), chunks=(max(1, count),))
    group.create_array("splits", data=splits.astype(np.uint8), chunks=(max(1, count),))
    ids = group.create_array("sample_ids", shape=(count,), dtype=str, chunks=(max(1, count),))
    ids[:] = np.array(sample_ids, dtype=object)
    _shard_arrays(group, metadata)
    write_metadata(group, metadata)
    return group


ROW_LIST_CHUNK = 4096  # rows per chunk of `contents` and `sample_ids` in a store that grows


def create_content_store(path: Path, metadata: StoreMetadata) -> zarr.Group:
    """Create an empty format-4 store (no rows yet; `allot_rows` adds them)."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    metadata = metadata.model_copy(update={"num_rows": 0})
    _sample_arrays(group, metadata, 0)
    for name in ("contents", "sample_ids"):
        group.create_array(name, shape=(0,), dtype=str, chunks=(ROW_LIST_CHUNK,))
    _shard_arrays(group, metadata)
    write_metadata(group, metadata)
    return group


def allot_rows(path: Path, metadata: StoreMetadata, contents: list[str], origins: list[str]) -> StoreMetadata:
    """Append rows for `contents` (extracted from the files `origins`), from the next shard boundary, so
    no written shard changes; the new shards are unmarked and the store incomplete until they are written.

    Crash-safe in this order: the metadata says incomplete first, then every array grows (growing is
    idempotent), `contents` last, then the metadata counts the rows."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    metadata = metadata.model_copy(update={"complete": False})
    write_metadata(group, metadata)
    first = metadata.num_shards * metadata.storage.shard_size
    total = first + len(contents)
    grown = metadata.model_copy(update={"num_rows": total})
    for name in sharded_arrays(metadata):
        array = group[name]
        array.resize((total, *array.shape[1:]))
    for name in ("shard_sha256", "shard_complete"):
        array = group[name]
        array.resize((grown.num_shards, *array.shape[1:]))
    for name, values in (("sample_ids", origins), ("contents", contents)):
        array = group[name]
        array.resize((total,))
        if values:
            array[first:total] = np.array(values, dtype=object)
    write_metadata(group, grown)
    return grown


def _sample_arrays(group: zarr.Group, metadata: StoreMetadata, count: int) -> None:
    """The per-sample arrays of `count` rows, sharded along the rows."""
    storage = metadata.storage
    chunk, shard = storage.chunk_size, storage.shard_size
    feature_shape = metadata.feature_shape
    side = metadata.extraction.side_store_size
    packed = storage.dtype == "int4"
    stored = stored_shape(feature_shape, storage.dtype)
    for name in FEATURE_ARRAYS:
        group.create_array(
            name,
            shape=(count, *stored),
            dtype=feature_numpy_dtype(storage),
            chunks=(chunk, *stored),
            shards=(shard, *stored),
            compressors=compressors(storage),
            fill_value=0,
            dimension_names=("sample", "layer", "head", "token", "channel_pair" if packed else "channel"),
        )
    if has_scales(storage.dtype):
        scales = scale_shape(feature_shape, storage.dtype)
        for name in FEATURE_ARRAYS:
            group.create_array(
                scale_name(name),
                shape=(count, *scales),
                dtype="float16",
                chunks=(chunk, *scales),
                shards=(shard, *scales),
                compressors=compressors(storage),
                fill_value=0,
                dimension_names=("sample", "layer", "head", "token") + (("channel_group",) if packed else ()),
            )
    if metadata.has_token_indices:
        group.create_array(
            TOKEN_INDICES,
            shape=(count, *feature_shape[:-1]),
            dtype=token_index_dtype(metadata.extraction.num_tokens),
            chunks=(chunk, *feature_shape[:-1]),
            shards=(shard, *feature_shape[:-1]),
            compressors=compressors(storage),
            fill_value=0,
            dimension_names=("sample", "layer", "head", "token"),
        )
    group.create_array(
        "side_images",
        shape=(count, side, side, 3),
        dtype="uint8",
        chunks=(chunk, side, side, 3),
        shards=(shard, side, side, 3),
        compressors=compressors(storage),
        fill_value=0,
        dimension_names=("sample", "y", "x", "rgb"),
    )


def _shard_arrays(group: zarr.Group, metadata: StoreMetadata) -> None:
    names = sharded_arrays(metadata)
    checksums = group.create_array(
        "shard_sha256", shape=(metadata.num_shards, len(names), 32), dtype="uint8",
        chunks=(1, len(names), 32), fill_value=0,
    )
    checksums.attrs["arrays"] = list(names)
    group.create_array(
        "shard_complete", shape=(metadata.num_shards,), dtype="uint8", chunks=(1,), fill_value=0
    )


def write_metadata(group: zarr.Group, metadata: StoreMetadata) -> None:
    """The store's attributes: a format-4 store's own metadata (never a label table's view of it), or the
    whole CacheMetadata of a store of formats 2 and 3."""
    if metadata.by_content and isinstance(metadata, CacheMetadata):
        metadata = metadata.store_part()
    group.attrs["fpt"] = metadata.model_dump(mode="json")


def record_source(path: Path, metadata: StoreMetadata, source: Path | None, table: str = "") -> StoreMetadata:
    """The store's metadata with `source` (a dataset folder or CSV whose images it holds) listed, and in a
    format-4 store `table` as that source's label table and the latest one (no source: only the latest)."""
    update: dict = {}
    if source is not None and str(source) not in metadata.sources:
        update["sources"] = [*metadata.sources, str(source)]
    if table and source is not None and metadata.label_tables.get(str(source)) != table:
        update["label_tables"] = metadata.label_tables | {str(source): table}
    if table and metadata.latest_table != table:
        update["latest_table"] = table
    if not update:
        return metadata
    metadata = metadata.model_copy(update=update)
    write_metadata(zarr.open_group(path, mode="r+", zarr_format=3), metadata)
    return metadata

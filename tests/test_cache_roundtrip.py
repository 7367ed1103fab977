"""A cache written then read gives back the same arrays and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fpt.cache.errors import UserError
from fpt.cache.layout import create_store
from fpt.cache.metadata import CacheMetadata, ExtractionSettings, LPMIdentity, Normalization, StorageSettings
from fpt.cache.reader import CacheReader
from fpt.cache.writer import ShardWriter


def make_metadata(count: int, dtype: str = "float16", shard: int = 4, chunk: int = 2, format_version: int = 3
                  ) -> CacheMetadata:
    lpm = LPMIdentity(name="vit_tiny_patch16_224", weights_source="none", weights_identity="random:0",
                      embed_dim=32, num_heads=2, head_dim=16, patch_size=16, depth=4, num_prefix_tokens=1,
                      num_params=1000)
    return CacheMetadata(
        format_version=format_version, fpt_version="test", created_at="2026-01-01T00:00:00+00:00", cache_key="ab" * 32, dataset="demo",
        dataset_fingerprint="cd" * 32, class_names=["a", "b", "c"], default_lr=1e-3, num_samples=count,
        split_ranges={"train": (0, 6), "val": (6, 8), "test": (8, count)},
        class_counts={"train": [2, 2, 2], "val": [1, 1, 0], "test": [1, 1, 1]},
        lpm=lpm,
        extraction=ExtractionSettings(input_size=64, layers=[1, 3], token_ratio=0.3, importance="global",
                                      num_tokens=17, num_selected=5, side_store_size=12),
        normalization=Normalization(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), source="auto"),
        storage=StorageSettings(dtype=dtype, codec="zstd", codec_level=3, shard_size=shard, chunk_size=chunk),
    )


def write_cache(path: Path, metadata: CacheMetadata, seed: int = 0):
    rng = np.random.default_rng(seed)
    count = metadata.num_samples
    keys = rng.normal(size=(count, *metadata.feature_shape)).astype(np.float32)
    values = rng.normal(size=(count, *metadata.feature_shape)).astype(np.float32)
    side = rng.integers(0, 256, size=(count, 12, 12, 3), dtype=np.uint8)
    layers, heads, selected, _ = metadata.feature_shape
    token_indices = np.sort(rng.random((count, layers, heads, metadata.extraction.num_tokens)).argsort(-1)[..., :selected], -1)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2])[:count]
    splits = np.array([0] * 6 + [1] * 2 + [2] * (count - 8))
    ids = [f"split/{i:03d}.png" for i in range(count)]
    create_store(path, metadata, labels, splits, ids)
    writer = ShardWriter(path, metadata)
    for shard in range(metadata.num_shards):
        a, b = metadata.shard_range(shard)
        writer.write_shard(shard, keys[a:b], values[a:b], side[a:b],
                           token_indices[a:b] if metadata.has_token_indices else None)
    writer.finish()
    return keys, values, side, labels, ids, token_indices


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_arrays_and_metadata(tmp_path: Path, dtype: str):
    metadata = make_metadata(11, dtype)
    keys, values, side, labels, ids, token_indices = write_cache(tmp_path / "c.zarr", metadata)
    reader = CacheReader(tmp_path / "c.zarr")
    expected = metadata.model_copy(update={"complete": True})
    assert reader.metadata == expected
    data = reader.read(0, 11)
    tolerance = 1e-3 if dtype == "float16" else 0
    np.testing.assert_allclose(data["keys"].astype(np.float32), keys, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(data["values"].astype(np.float32), values, rtol=tolerance, atol=tolerance)
    assert np.array_equal(data["side_images"], side)
    assert np.array_equal(data["labels"], labels)
    assert reader.sample_ids() == ids
    assert reader.split_range("val") == (6, 8)
    part = reader.read(5, 9, with_token_indices=True)
    np.testing.assert_array_equal(part["side_images"], side[5:9])
    np.testing.assert_array_equal(part["token_indices"], token_indices[5:9])
    assert reader.array("token_indices").dtype == np.int16


def test_a_previous_version_store_reads_without_token_indices(tmp_path: Path):
    """A format-2 store (no token_indices array) is still read for training and prediction; asking it
    for token indices says what it lacks."""
    metadata = make_metadata(11, format_version=2)
    keys, _, side, labels, _, _ = write_cache(tmp_path / "c.zarr", metadata)
    assert not (tmp_path / "c.zarr" / "token_indices").exists()
    reader = CacheReader(tmp_path / "c.zarr")
    assert reader.metadata.format_version == 2 and not reader.metadata.has_token_indices
    data = reader.read(0, 11)
    np.testing.assert_allclose(data["keys"], keys, rtol=1e-3, atol=1e-3)
    assert np.array_equal(data["labels"], labels) and np.array_equal(data["side_images"], side)
    with pytest.raises(ValueError, match="no token indices"):
        reader.read(0, 4, with_token_indices=True)


def test_store_is_sharded_not_one_file_per_sample(tmp_path: Path):
    metadata = make_metadata(11, shard=4, chunk=2)
    write_cache(tmp_path / "c.zarr", metadata)
    shard_files = [p for p in (tmp_path / "c.zarr" / "keys").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == metadata.num_shards == 3


def test_incomplete_cache_is_refused(tmp_path: Path):
    metadata = make_metadata(11)
    create_store(tmp_path / "c.zarr", metadata, np.zeros(11), np.zeros(11), [str(i) for i in range(11)])
    writer = ShardWriter(tmp_path / "c.zarr", metadata)
    a, b = metadata.shard_range(0)
    writer.write_shard(0, np.zeros((b - a, *metadata.feature_shape)), np.zeros((b - a, *metadata.feature_shape)),
                       np.zeros((b - a, 12, 12, 3), np.uint8), np.zeros((b - a, *metadata.feature_shape[:-1]), np.int16))
    assert writer.completed_shards() == {0}
    with pytest.raises(UserError, match="incomplete"):
        CacheReader(tmp_path / "c.zarr")
    with pytest.raises(RuntimeError):
        writer.finish()

"""`fpt cache verify`: checksums recorded at write time catch a single flipped byte and name the samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

import fpt.cache.integrity
import fpt.cache.layout
from fpt.cache.errors import UserError
from fpt.cache.integrity import shard_file, verify_store
from fpt.cache.layout import chunks_checksummed
from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import read_metadata
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.pipeline.cli import app


def _store(root: Path, dtype: str, chunk_checksums: bool = True) -> Path:
    """A small store; without chunk checksums, the stores that are checked by hashing their shard files."""
    storage = StorageSettings(dtype=dtype, codec="zstd", codec_level=3, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 6, "val": 3, "test": 3}, selected=5, head_dim=8, side_store_size=16,
                                  storage=storage)
    with pytest.MonkeyPatch.context() as patch:
        if not chunk_checksums:
            patch.setattr(fpt.cache.layout, "compressors", fpt.cache.layout._compressor)
        path = write_synthetic_cache(root, metadata)
    group = zarr.open_group(path, mode="r")
    assert all(chunks_checksummed(group[name]) == chunk_checksums for name in ("keys", "values", "side_images"))
    return path


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("dtype, array", [("float16", "keys"), ("int8", "values_scale"), ("bfloat16", "side_images")])
def test_a_flipped_byte_is_found_and_its_samples_named(tmp_path: Path, dtype: str, array: str) -> None:
    store = _store(tmp_path, dtype)
    assert verify_store(store, read_metadata(store)).ok
    group = zarr.open_group(store, mode="r")
    _flip_byte(shard_file(store, group[array], 1), 17)
    report = verify_store(store, read_metadata(store))
    assert report.shards_checked == 3 and not report.incomplete_shards
    assert [(d.shard, d.arrays) for d in report.damaged] == [(1, [array])]
    assert report.damaged[0].sample_ids == [f"sample_{i:06d}" for i in range(4, 8)]


def test_cli_verify_reports_ok_and_damage(tmp_path: Path) -> None:
    store = _store(tmp_path / "cache", "float16")
    runner = CliRunner()
    ok = runner.invoke(app, ["cache", "verify", "--set", f"cache.root={tmp_path / 'cache'}"], env={"COLUMNS": "200"})
    assert ok.exit_code == 0 and "3 shards match" in ok.output
    _flip_byte(shard_file(store, zarr.open_group(store, mode="r")["keys"], 2), 5)
    damaged = runner.invoke(app, ["cache", "verify", str(store)])
    assert isinstance(damaged.exception, UserError)
    message = damaged.exception.paragraph()
    assert "shard 2 (keys) is damaged: samples sample_000008, sample_000009, sample_000010, sample_000011" in message


def _batches_until_error(store: Path) -> tuple[list[int], UserError]:
    """The sample indices training received from the store before it stopped, and why it stopped."""
    from fpt.cache.reader import CacheReader
    from fpt.stages.train.cache_batches import SplitBatches

    received: list[int] = []
    batches = SplitBatches(CacheReader(store), "train", batch_size=2, shuffle=True, with_features=True)
    with pytest.raises(UserError) as error:
        for batch in batches:
            received.extend(batch.indices.tolist())
    return received, error.value


@pytest.mark.parametrize("chunk_checksums", [True, False])
@pytest.mark.parametrize("damage", ["flipped byte", "cut short"])
def test_training_stops_at_a_damaged_shard_before_using_its_samples(tmp_path: Path, damage: str,
                                                                     chunk_checksums: bool) -> None:
    store = _store(tmp_path, "float16", chunk_checksums)
    damaged = shard_file(store, zarr.open_group(store, mode="r")["keys"], 1)
    if damage == "flipped byte":  # inside the compressed payload: blosc and zstd may still decode it
        _flip_byte(damaged, len(damaged.read_bytes()) // 3)
    else:  # as by a full disk or a failed copy
        damaged.write_bytes(damaged.read_bytes()[:40])
    received, error = _batches_until_error(store)
    assert not set(received) & {4, 5, 6, 7}  # shard 1's samples never reach training
    message = error.paragraph()
    assert f"The cache {store} is damaged: shard 1 (keys)" in message
    assert "sample_000004, sample_000005, sample_000006, sample_000007" in message
    assert "`fpt extract` command that built this store again" in message and "fpt cache verify" in message


@pytest.mark.parametrize("chunk_checksums", [True, False])
def test_shard_files_are_hashed_once_per_process_only_without_chunk_checksums(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_checksums: bool) -> None:
    store = _store(tmp_path, "float16", chunk_checksums)
    hashed: list[Path] = []
    real = fpt.cache.integrity.file_digest
    monkeypatch.setattr(fpt.cache.integrity, "file_digest", lambda path: hashed.append(path) or real(path))
    for _ in range(2):  # two epochs, each from a reader of its own
        assert len(_all_train_batches(store)) == 3
    if chunk_checksums:  # zarr checks every chunk's crc32c as it reads: no second read of the files
        assert hashed == []
    else:  # 6 train samples in shards 0 and 1 (4 per shard): keys, values and side images of each, once
        assert len(hashed) == 6 and len(set(hashed)) == 6


def _all_train_batches(store: Path) -> list:
    from fpt.cache.reader import CacheReader
    from fpt.stages.train.cache_batches import SplitBatches

    return list(SplitBatches(CacheReader(store), "train", batch_size=2, shuffle=True, with_features=True))

"""Checksums of a cache's stored shard files, recorded at write time and re-checked by `fpt cache verify`.

Each sharded array's shard file (e.g. `keys/c/3/0/0/0/0`) is hashed as it lies on disk, so any
changed byte is found, whether or not the codec would still decode it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr
from pydantic import BaseModel, Field

from cache.metadata import CacheMetadata


def shard_file(store: Path, array: zarr.Array, shard: int) -> Path:
    """Where the shard `shard` (along the sample axis) of a sharded array lies on disk."""
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return store / array.basename / key


def file_digest(path: Path) -> bytes:
    """sha256 of a file's bytes; a file zarr never wrote (an all-fill shard) hashes as empty."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.digest()


def shard_digests(store: Path, group: zarr.Group, names: list[str], shard: int) -> np.ndarray:
    """(len(names), 32) uint8: the digest of each array's stored shard file."""
    rows = [np.frombuffer(file_digest(shard_file(store, group[name], shard)), dtype=np.uint8) for name in names]
    return np.stack(rows)


class DamagedShard(BaseModel):
    shard: int
    arrays: list[str]
    sample_ids: list[str]


class VerifyReport(BaseModel):
    path: Path
    shards_checked: int
    incomplete_shards: list[int] = Field(default_factory=list)
    damaged: list[DamagedShard] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.incomplete_shards


def verify_store(path: Path, metadata: CacheMetadata) -> VerifyReport:
    """Re-hash every completed shard and compare with the digests recorded when it was written."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    recorded = group["shard_sha256"]
    names = [str(name) for name in recorded.attrs["arrays"]]
    complete = group["shard_complete"][:]
    sample_ids = [str(x) for x in group["sample_ids"][:]]
    report = VerifyReport(path=path, shards_checked=0)
    for shard in range(metadata.num_shards):
        if not complete[shard]:
            report.incomplete_shards.append(shard)
            continue
        expected = recorded[shard]
        actual = shard_digests(path, group, names, shard)
        report.shards_checked += 1
        bad = [name for name, want, have in zip(names, expected, actual) if not np.array_equal(want, have)]
        if bad:
            start, stop = metadata.shard_range(shard)
            report.damaged.append(DamagedShard(shard=shard, arrays=bad, sample_ids=sample_ids[start:stop]))
    return report

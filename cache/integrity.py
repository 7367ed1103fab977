"""Checksums of a cache's stored shard files, recorded at write time and checked again when read.

Each sharded array's shard file (e.g. `keys/c/3/0/0/0/0`) is hashed as it lies on disk, so any
changed byte is found, whether or not the codec would still decode it (a flipped bit inside
blosc-lz4's payload decodes to a wrong number without an error). `fpt cache verify` and `fpt
extract` re-hash a whole store. Reading, zarr checks the crc32c that ends every chunk
(cache/layout.compressors); in a store written without chunk checksums, every reader (training,
evaluation, sweeps, transcoding) instead re-hashes each shard file it reads once per process,
before the samples are used (`ShardReadCheck`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr
from pydantic import BaseModel, Field

from fpt.cache.errors import UserError
from fpt.cache.hashing import file_digest
from fpt.cache.layout import write_metadata
from fpt.cache.metadata import StoreMetadata


def shard_file(store: Path, array: zarr.Array, shard: int) -> Path:
    """Where the shard `shard` (along the sample axis) of a sharded array lies on disk."""
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return store / array.basename / key


EMPTY_DIGEST = hashlib.sha256().digest()


def shard_file_digest(path: Path) -> bytes:
    """sha256 of a shard file's bytes; a file zarr never wrote (an all-fill shard) hashes as empty."""
    return file_digest(path) if path.is_file() else EMPTY_DIGEST


def shard_digests(store: Path, group: zarr.Group, names: list[str], shard: int) -> np.ndarray:
    """(len(names), 32) uint8: the digest of each array's stored shard file."""
    rows = [np.frombuffer(shard_file_digest(shard_file(store, group[name], shard)), dtype=np.uint8) for name in names]
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


def verify_store(path: Path, metadata: StoreMetadata) -> VerifyReport:
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


# (store, array, shard, recorded digest) of every shard file that matched its digest in this process:
# a shard is hashed once per process however many epochs, readers or trials read it. The recorded
# digest is part of the key, so a shard written again since (a repair) is checked again.
_matched: set[tuple[str, str, int, bytes]] = set()


class ShardReadCheck:
    """The check a reader makes before it uses samples: every shard file of the arrays it reads is
    re-hashed, once per process, against the digest recorded when the shard was written."""

    def __init__(self, store: Path, group: zarr.Group, metadata: StoreMetadata) -> None:
        recorded = group["shard_sha256"]
        self.store = store
        self.group = group
        self.metadata = metadata
        self.names = [str(name) for name in recorded.attrs["arrays"]]
        self.recorded = recorded[:]
        self.store_key = str(store.resolve())

    def check(self, start: int, stop: int, arrays: tuple[str, ...] | list[str]) -> None:
        """Raise a UserError naming the shard and its samples if a shard file of samples [start, stop) changed."""
        size = self.metadata.storage.shard_size
        for shard in range(start // size, (stop - 1) // size + 1):
            bad = [name for name in arrays if name in self.names and not self._matches(name, shard)]
            if bad:
                raise damaged_shard_error(self.store, self.group, self.metadata, shard, bad,
                                          "no longer matches the checksum recorded when it was written")

    def _matches(self, name: str, shard: int) -> bool:
        want = self.recorded[shard, self.names.index(name)]
        key = (self.store_key, name, shard, want.tobytes())
        if key in _matched:
            return True
        have = np.frombuffer(shard_file_digest(shard_file(self.store, self.group[name], shard)), dtype=np.uint8)
        if not np.array_equal(want, have):
            return False
        _matched.add(key)
        return True


def damaged_shard_error(store: Path, group: zarr.Group, metadata: StoreMetadata, shard: int, arrays: list[str],
                        why: str) -> UserError:
    """The message for a shard whose data cannot be trusted, naming its samples: `why` says how it was found."""
    sample_ids = [str(x) for x in group["sample_ids"][slice(*metadata.shard_range(shard))]]
    shown = ", ".join(sample_ids[:5]) + (f" and {len(sample_ids) - 5} more" if len(sample_ids) > 5 else "")
    origin = f"dataset {metadata.dataset}" + (f" from {metadata.sources[0]}" if metadata.sources else "")
    return UserError(
        f"The cache {store} is damaged: shard {shard} ({', '.join(arrays)}) {why}, so its samples ({shown}) "
        "would be read wrong; the command stopped before using them.",
        f"Run the `fpt extract` command that built this store again ({origin}, the same settings): it checks every "
        f"shard and extracts only the damaged ones again. `fpt cache verify {store}` lists every damaged shard.",
    )


def mark_for_rewrite(store: Path, metadata: StoreMetadata, shards: list[int]) -> StoreMetadata:
    """Unmark damaged shards and the store's completeness, so that resuming the extraction writes them again."""
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    for shard in shards:
        group["shard_complete"][shard] = 0
    metadata = metadata.model_copy(update={"complete": False})
    write_metadata(group, metadata)
    return metadata

"""Writing stage one's output into a cache store, whole shards at a time.

A shard is written only once all of its samples are computed. After its data, the sha256 of
each of its stored files goes into `shard_sha256[i]`, and only then is `shard_complete[i]` set.
Concurrent writers (dask workers) therefore never share a shard file, and a store interrupted at
any point is known to be incomplete: the metadata says `complete: false` until every shard is
marked, and an unmarked shard is simply written again on resume.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr

from fpt.cache.encoding import encode, scale_name
from fpt.cache.errors import UserError
from fpt.cache.integrity import shard_digests
from fpt.cache.layout import FEATURE_ARRAYS, TOKEN_INDICES, sharded_arrays, write_metadata
from fpt.cache.metadata import StoreMetadata


class ShardWriter:
    def __init__(self, path: Path, metadata: StoreMetadata, resume_command: str = "the same `fpt extract` command") -> None:
        self.path = path
        self.metadata = metadata
        self.resume_command = resume_command  # what the user runs again to continue, for the full-disk message
        self.group = zarr.open_group(path, mode="r+", zarr_format=3)
        self.array_names = list(sharded_arrays(metadata))

    def completed_shards(self) -> set[int]:
        flags = self.group["shard_complete"][:]
        return {int(i) for i in np.flatnonzero(flags)}

    def write_shard(self, shard: int, keys: np.ndarray, values: np.ndarray, side_images: np.ndarray,
                    token_indices: np.ndarray | None = None) -> None:
        """Write shard `shard`'s samples: keys and values (float), side images (uint8) and, in a store
        that records them, the LPM token index of every kept key/value (B, L, H, n)."""
        start, stop = self.metadata.shard_range(shard)
        expected = stop - start
        if not (len(keys) == len(values) == len(side_images) == expected):
            raise ValueError(f"shard {shard} needs {expected} samples, got {len(keys)}")
        if (token_indices is not None) != self.metadata.has_token_indices:
            raise ValueError(f"the store {self.path} (format {self.metadata.format_version}) "
                             + ("records token indices: give them" if token_indices is None else "has no token indices"))
        with self._disk_full(shard):
            self._write(shard, start, stop, {"keys": keys, "values": values}, side_images, token_indices)

    def write_stored_shard(self, shard: int, stored: dict[str, np.ndarray]) -> None:
        """Write shard `shard` from arrays as stored (every sharded array, already encoded: a store's
        rows copied in another order, `fpt cache compact`), then its checksums and its mark."""
        start, stop = self.metadata.shard_range(shard)
        if set(stored) != set(self.array_names) or any(len(v) != stop - start for v in stored.values()):
            raise ValueError(f"shard {shard} needs {stop - start} rows of {self.array_names}")
        with self._disk_full(shard):
            for name, value in stored.items():
                self.group[name][start:stop] = value
            self._mark(shard)

    @contextmanager
    def _disk_full(self, shard: int) -> Iterator[None]:
        """A full disk as the message that says what is kept and what to run again."""
        try:
            yield
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            done = len(self.completed_shards())
            raise UserError(
                f"The disk holding the cache {self.path} is full (while writing shard {shard}); "
                f"the {done} of {self.metadata.num_shards} shards finished before it are complete and kept, "
                "the unfinished one is not marked and will be written again.",
                "Free some space (or set cache.root to a larger disk and move the store there), "
                f"then run {self.resume_command} again to continue.",
            ) from None

    def _write(self, shard: int, start: int, stop: int, features: dict[str, np.ndarray], side_images: np.ndarray,
               token_indices: np.ndarray | None) -> None:
        dtype = self.metadata.storage.dtype
        for name in FEATURE_ARRAYS:
            stored, scales = encode(features[name], dtype)
            self.group[name][start:stop] = stored
            if scales is not None:
                self.group[scale_name(name)][start:stop] = scales
        if token_indices is not None:
            self.group[TOKEN_INDICES][start:stop] = token_indices
        self.group["side_images"][start:stop] = side_images
        self._mark(shard)

    def _mark(self, shard: int) -> None:
        self.group["shard_sha256"][shard] = shard_digests(self.path, self.group, self.array_names, shard)
        self.group["shard_complete"][shard] = 1

    def finish(self, skipped: list | None = None) -> StoreMetadata:
        """Mark the store complete (every shard must be); `skipped` for a store of format 2 or 3."""
        missing = set(range(self.metadata.num_shards)) - self.completed_shards()
        if missing:
            raise RuntimeError(f"cannot finish: shards {sorted(missing)[:10]} are not written")
        update: dict = {"complete": True}
        if skipped is not None:
            update["skipped"] = skipped
        self.metadata = self.metadata.model_copy(update=update)
        write_metadata(self.group, self.metadata)
        return self.metadata

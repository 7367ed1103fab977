"""Reading a cache store: its metadata, and sample ranges of its arrays."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from pydantic import ValidationError
from zarr.core.buffer import default_buffer_prototype

from fpt.cache.encoding import decode, has_scales, scale_name
from fpt.cache.errors import UserError
from fpt.cache.integrity import ShardReadCheck, damaged_shard_error
from fpt.cache.layout import TOKEN_INDICES, aligned_blocks, chunks_checksummed
from fpt.cache.metadata import ATTRIBUTE_KEY, FORMAT_VERSION, READABLE_FORMAT_VERSIONS, CacheMetadata


def read_metadata(path: Path) -> CacheMetadata:
    """The store's metadata, with a clear error for a missing, foreign or other-version store."""
    if not (path / "zarr.json").is_file():
        raise UserError(
            f"{path} is not an fpt cache (no zarr.json in it).",
            "Run `fpt extract` first, or give the path of a store listed by `fpt cache list`.",
        )
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        raw = dict(group.attrs).get(ATTRIBUTE_KEY)
    except Exception as error:  # unreadable JSON, wrong zarr format
        raise UserError(f"The cache {path} cannot be opened ({error}).", "Delete it and run `fpt extract` again.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is a zarr store but not an fpt cache (no 'fpt' attributes).")
    version = raw.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        readable = " and ".join(map(str, READABLE_FORMAT_VERSIONS))
        raise UserError(
            f"The cache {path} has format version {version}; this fpt reads versions {readable}.",
            "Upgrade fpt to read it." if newer else "Re-run `fpt extract` to rebuild it with this fpt.",
        )
    try:
        return CacheMetadata.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"The metadata of the cache {path} is damaged ({error.error_count()} invalid fields).",
                        "Delete the store and run `fpt extract` again.") from None


def as_nd_buffer(array: np.ndarray):
    """A numpy array (or view) as the zarr buffer that `get_basic_selection(out=...)` writes into."""
    return default_buffer_prototype().nd_buffer.from_numpy_array(array)


# glibc's malloc maps every block above 32 MiB (its largest mmap threshold) afresh and unmaps it when
# freed. Asked for a whole shard, zarr reads the shard file into one buffer (a partial read fetches
# chunk by chunk), so reading a whole ViT-B/512 shard (32 samples, 56 MB of compressed keys) faulted
# in every page of that buffer on every read. Reads of at most this many stored bytes per array
# stay under the limit, so their buffers come from memory the heap reuses: ViT-B/512 shards are read
# in two halves, 10.1 -> 7.7 ms per image (CPU 12.1 -> 9.6 ms, page faults 875 -> 13); the demo's
# shards (15 MB) are read whole as before.
READ_PIECE_BYTES = 30 * 2**20


def read_pieces(start: int, stop: int, chunk_size: int, sample_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) cut into reads of at most READ_PIECE_BYTES (stored size, whole chunks; at least
    one chunk each), at multiples of that many samples, which are chunk boundaries."""
    most = max(1, READ_PIECE_BYTES // max(sample_bytes, 1) // chunk_size) * chunk_size
    return aligned_blocks(start, stop, most)


class CacheReader:
    def __init__(self, path: Path, require_complete: bool = True) -> None:
        self.path = path
        self.metadata = read_metadata(path)
        if require_complete and not self.metadata.complete:
            raise UserError(
                f"The cache {path} is incomplete: its extraction was interrupted.",
                "Run the same `fpt extract` command again to finish it (finished shards are kept).",
            )
        self.group = zarr.open_group(path, mode="r", zarr_format=3)
        self._arrays: dict[str, zarr.Array] = {}
        # an incomplete store is opened only for its sample list (resuming its extraction): no reads to check
        self._shard_check: ShardReadCheck | None = None
        if require_complete:
            unfinished = np.flatnonzero(self.group["shard_complete"][:] == 0)
            if len(unfinished):
                raise UserError(
                    f"The cache {path} says it is complete but shards {unfinished[:10].tolist()} are not marked as written.",
                    "Run `fpt cache verify` on it, then delete it and run `fpt extract` again.",
                )
            # zarr checks each chunk's crc32c as it reads it; stores written without chunk checksums
            # have their shard files hashed instead, once per process
            if not chunks_checksummed(self.array("keys")):
                self._shard_check = ShardReadCheck(path, self.group, self.metadata)

    def _check(self, start: int, stop: int, arrays: tuple[str, ...] | list[str]) -> None:
        """Damaged data is never used: in a store without chunk checksums, the shard files of these arrays
        are hashed (once per process) before they are read."""
        if self._shard_check is not None and stop > start:
            self._shard_check.check(start, stop, arrays)

    def split_range(self, split: str) -> tuple[int, int]:
        return tuple(self.metadata.split_ranges[split])  # type: ignore[return-value]

    def array(self, name: str) -> zarr.Array:
        """The store's array `name`, opened once: opening reads its zarr.json, which costs about a
        tenth of a 4-sample read, and stage two reads in 4-sample chunks."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    @contextmanager
    def _decoding(self, start: int, stop: int, name: str) -> Iterator[None]:
        """Errors reading array `name` of samples [start, stop) (all in one shard: reads never cross one),
        a crc32c mismatch of a chunk among them, as the message that names the shard and says what to do."""
        try:
            yield
        except (RuntimeError, ValueError, OSError) as error:
            why = ("fails its chunk checksum (crc32c)" if "checksum" in str(error).lower()
                   else f"cannot be decoded ({error})")
            raise damaged_shard_error(self.path, self.group, self.metadata, start // self.metadata.storage.shard_size,
                                      [name], why) from None

    def read(self, start: int, stop: int, with_features: bool = True, with_token_indices: bool = False
             ) -> dict[str, np.ndarray]:
        """Arrays of samples [start, stop): keys, values (if asked; decoded to floats), side_images, labels,
        and token_indices (if asked; int64, in a store that has them)."""
        if with_token_indices and not self.metadata.has_token_indices:
            raise ValueError(f"the cache {self.path} (format {self.metadata.format_version}) has no token indices")
        names = ("side_images",) + (self.stored_feature_arrays() if with_features else ()) \
            + ((TOKEN_INDICES,) if with_token_indices else ())
        self._check(start, stop, names)
        stored = {}
        for name in names:
            with self._decoding(start, stop, name):
                stored[name] = self.array(name)[start:stop]
        out = {"side_images": stored["side_images"], "labels": self.array("labels")[start:stop].astype(np.int64)}
        if with_features:
            dtype = self.metadata.storage.dtype
            for name in ("keys", "values"):
                out[name] = decode(stored[name], stored.get(scale_name(name)), dtype, self.metadata.lpm.head_dim)
        if with_token_indices:
            out[TOKEN_INDICES] = stored[TOKEN_INDICES].astype(np.int64)
        return out

    def read_stored_into(self, start: int, stop: int, rows: dict[str, np.ndarray]) -> None:
        """Fill `rows` (name -> array of stop - start rows, dtype as stored: see `stored_row_layout`)
        with samples [start, stop) in place: no temporary copy of a shard. Labels become int64.
        Large arrays are read in pieces of whole chunks (`read_pieces`)."""
        self._check(start, stop, list(rows))
        for name, destination in rows.items():
            if name == "labels":
                destination[:] = self.array("labels")[start:stop]
                continue
            array = self.array(name)
            with self._decoding(start, stop, name):
                for a, b in read_pieces(start, stop, self.metadata.storage.chunk_size, destination[:1].nbytes):
                    array.get_basic_selection(slice(a, b), out=as_nd_buffer(destination[a - start : b - start]))

    def stored_row_layout(self, with_features: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """(shape of one sample, dtype) of each array `read_stored_into` fills, from the store's metadata."""
        names = ("side_images",) + (self.stored_feature_arrays() if with_features else ())
        layout = {name: (tuple(self.array(name).shape[1:]), np.dtype(self.array(name).dtype)) for name in names}
        return layout | {"labels": ((), np.dtype(np.int64))}

    def stored_feature_arrays(self) -> tuple[str, ...]:
        names = ("keys", "values")
        if has_scales(self.metadata.storage.dtype):
            names += tuple(scale_name(name) for name in names)
        return names

    def sample_ids(self) -> list[str]:
        return [str(x) for x in self.group["sample_ids"][:]]

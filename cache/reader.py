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
from fpt.cache.label_table import LabelTable, read_table, table_view
from fpt.cache.layout import TOKEN_INDICES, aligned_blocks, chunks_checksummed
from fpt.cache.metadata import (
    ATTRIBUTE_KEY, CONTENT_FORMAT_VERSION, FORMAT_VERSION, READABLE_FORMAT_VERSIONS, CacheMetadata, StoreMetadata,
)


def read_metadata(path: Path, table: str | None = None) -> CacheMetadata:
    """The store seen through a label table: `table` (its sha256, or a unique prefix), by default the
    latest one written (format 4; a store without a table yet shows no samples). Stores of formats 2
    and 3 have their one labelling inside."""
    store = read_store_metadata(path)
    if isinstance(store, CacheMetadata):
        return store
    digest = table or store.latest_table
    return table_view(store, read_table(path, digest) if digest else None)


def read_store_metadata(path: Path) -> StoreMetadata:
    """The store's own metadata (a CacheMetadata for formats 2 and 3), with a clear error for a missing,
    foreign or other-version store."""
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
        if version >= CONTENT_FORMAT_VERSION:
            return StoreMetadata.model_validate(raw)
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
    """Samples of a store, indexed 0 .. num_samples - 1 in the order of a label table (format 4: the
    table's samples, each read from the row of its image content; formats 2 and 3: the rows)."""

    def __init__(self, path: Path, table: str | None = None, require_complete: bool = True) -> None:
        self.path = path
        self.metadata = read_metadata(path, table)
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
        if self.metadata.by_content:
            digest = self.metadata.label_table
            table = read_table(path, digest) if digest else LabelTable(dataset=self.metadata.dataset, class_names=[],
                                                                       default_lr=0.0, samples=[])
            self.rows = sample_rows(path, table, self.group["contents"][:], require_complete)
            self._labels = np.array([sample.label for sample in table.samples], dtype=np.int64)
            self._ids = [sample.id for sample in table.samples]
        else:
            self.rows = np.arange(self.metadata.num_samples, dtype=np.int64)
            self._labels = self.group["labels"][:].astype(np.int64)
            self._ids = [str(x) for x in self.group["sample_ids"][:]]

    def _check(self, start: int, stop: int, arrays: tuple[str, ...] | list[str]) -> None:
        """Damaged data is never used: in a store without chunk checksums, the shard files of these arrays
        are hashed (once per process) before rows [start, stop) are read."""
        if self._shard_check is not None and stop > start:
            self._shard_check.check(start, stop, arrays)

    def split_range(self, split: str) -> tuple[int, int]:
        return tuple(self.metadata.split_ranges[split])  # type: ignore[return-value]

    def labels(self) -> np.ndarray:
        """The class of every sample (int64), in sample order."""
        return self._labels

    def contiguous(self, start: int, stop: int) -> bool:
        """Whether samples [start, stop) lie in consecutive rows (one read each array)."""
        rows = self.rows[start:stop]
        return len(rows) == 0 or bool(rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1))

    def array(self, name: str) -> zarr.Array:
        """The store's array `name`, opened once: opening reads its zarr.json, which costs about a
        tenth of a 4-sample read, and stage two reads in 4-sample chunks."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    @contextmanager
    def _decoding(self, start: int, stop: int, name: str) -> Iterator[None]:
        """Errors reading array `name` of rows [start, stop) (all in one shard: reads never cross one),
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
        return self._decoded(lambda stored: self.read_stored_into(start, stop, stored), stop - start, with_features,
                             with_token_indices)

    def read_rows(self, start: int, stop: int, with_token_indices: bool = False) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the store as `read` gives samples (labels: 0; a row is no sample)."""
        def fill(stored: dict[str, np.ndarray]) -> None:
            stored["labels"][:] = 0
            self._read_rows_into(start, stop, {name: value for name, value in stored.items() if name != "labels"})
        return self._decoded(fill, stop - start, True, with_token_indices)

    def _decoded(self, fill, count: int, with_features: bool, with_token_indices: bool) -> dict[str, np.ndarray]:
        """`count` samples as `fill` reads them into stored arrays, decoded."""
        if with_token_indices and not self.metadata.has_token_indices:
            raise ValueError(f"the cache {self.path} (format {self.metadata.format_version}) has no token indices")
        layout = self.stored_row_layout(with_features)
        if with_token_indices:
            layout[TOKEN_INDICES] = (tuple(self.array(TOKEN_INDICES).shape[1:]), np.dtype(self.array(TOKEN_INDICES).dtype))
        stored = {name: np.empty((count, *shape), dtype) for name, (shape, dtype) in layout.items()}
        fill(stored)
        out = {"side_images": stored["side_images"], "labels": stored["labels"]}
        if with_features:
            dtype = self.metadata.storage.dtype
            for name in ("keys", "values"):
                out[name] = decode(stored[name], stored.get(scale_name(name)), dtype, self.metadata.lpm.head_dim)
        if with_token_indices:
            out[TOKEN_INDICES] = stored[TOKEN_INDICES].astype(np.int64)
        return out

    def read_stored_into(self, start: int, stop: int, rows: dict[str, np.ndarray]) -> None:
        """Fill `rows` (name -> array of stop - start rows, dtype as stored: see `stored_row_layout`)
        with samples [start, stop) in place: no temporary copy of a shard where they lie in consecutive
        rows (a split of a compacted store); otherwise the chunks that hold them are read and the samples
        taken out. Labels become int64. Large arrays are read in pieces of whole chunks (`read_pieces`)."""
        if "labels" in rows:
            rows["labels"][:] = self._labels[start:stop]
        names = [name for name in rows if name != "labels"]
        if stop <= start or not names:
            return
        if self.contiguous(start, stop):
            first = int(self.rows[start])
            self._read_rows_into(first, first + stop - start, {name: rows[name] for name in names})
        else:
            self.gather_stored_into(self.rows[start:stop], {name: rows[name] for name in names})

    def _read_rows_into(self, start: int, stop: int, rows: dict[str, np.ndarray]) -> None:
        """Rows [start, stop) of the store's arrays straight into `rows`."""
        self._check(start, stop, list(rows))
        for name, destination in rows.items():
            array = self.array(name)
            for shard_start, shard_stop in aligned_blocks(start, stop, self.metadata.storage.shard_size):
                with self._decoding(shard_start, shard_stop, name):
                    for a, b in read_pieces(shard_start, shard_stop, self.metadata.storage.chunk_size,
                                            destination[:1].nbytes):
                        array.get_basic_selection(slice(a, b), out=as_nd_buffer(destination[a - start : b - start]))

    def gather_stored_into(self, rows: np.ndarray, destination: dict[str, np.ndarray]) -> None:
        """The store's rows `rows` (any order, repeats allowed) into `destination` (one entry per row), read
        as the runs of consecutive chunks that hold them (each at most a shard)."""
        chunk = self.metadata.storage.chunk_size
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        chunks = np.unique(ordered // chunk)
        runs = np.split(chunks, np.flatnonzero(np.diff(chunks) > 1) + 1)
        for run in runs:
            first, last = int(run[0]) * chunk, min((int(run[-1]) + 1) * chunk, self.metadata.num_rows)
            for a, b in aligned_blocks(first, last, self.metadata.storage.shard_size):
                lo, hi = np.searchsorted(ordered, [a, b])
                if lo == hi:
                    continue
                block = {name: np.empty((b - a, *value.shape[1:]), value.dtype) for name, value in destination.items()}
                self._read_rows_into(a, b, block)
                for name, value in destination.items():
                    value[order[lo:hi]] = block[name][ordered[lo:hi] - a]

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
        """Each sample's id (its path relative to the dataset folder), in sample order."""
        return list(self._ids)


def sample_rows(path: Path, table: LabelTable, contents: np.ndarray, require_complete: bool = True) -> np.ndarray:
    """The store row of each sample of `table` (the first row holding its content)."""
    row_of: dict[str, int] = {}
    for row, content in enumerate(contents.tolist()):
        if content:
            row_of.setdefault(str(content), row)
    missing = [sample.id for sample in table.samples if sample.content not in row_of]
    if missing and require_complete:
        raise UserError(
            f"The cache {path} holds no features for {len(missing)} image(s) of its label table (e.g. {missing[:3]}).",
            "Run `fpt extract` on the dataset again: it extracts the missing images and keeps the rest.",
        )
    return np.array([row_of.get(sample.content, -1) for sample in table.samples], dtype=np.int64)

"""Compacting a store: its rows laid out again in a label table's order, without the LPM.

A store that has grown by appends (images added, files changed) holds the new images' rows after
the old ones, so a split's samples are no longer consecutive rows and training reads them chunk by
chunk from all over the store. Compaction writes the rows again, deduplicated, in the order of one
label table (split-ordered, the train split in its seeded order: cache/storage_order.py), followed
by the rows no table of that order uses (removed images, other labellings' images), which stay
available. Each split of that table is then one run of consecutive rows, read whole shards at a time.

The stored bytes are copied as they are (no decoding), shard by shard through `ShardWriter`, into a
store beside the old one (`.<name>.compacting`), which an interrupted compaction continues; at the
end the two are swapped by renames (the old one goes to `.<name>.old` and is deleted). The key,
the name and the label tables stay, so runs trained from the store keep working.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from fpt.cache.errors import UserError
from fpt.cache.label_table import TABLES
from fpt.cache.layout import allot_rows, create_content_store, sharded_arrays
from fpt.cache.metadata import FORMAT_VERSION
from fpt.cache.progress import open_progress
from fpt.cache.reader import CacheReader, read_store_metadata
from fpt.cache.store_lock import store_lock
from fpt.cache.writer import ShardWriter


@dataclass
class CompactResult:
    path: Path
    label_table: str
    rows_before: int
    rows_after: int
    shards_written: int
    already_compact: bool


def compact(path: Path, table: str | None = None, show_progress: bool = False) -> CompactResult:
    """Lay the rows of the complete store at `path` out in the order of its label table `table` (default: the
    latest one), resuming an interrupted compaction."""
    staging = path.parent / f".{path.name}.compacting"
    retired = path.parent / f".{path.name}.old"
    with store_lock(path):
        _finish_swap(path, staging, retired)
        store = read_store_metadata(path)
        if not store.by_content:
            raise UserError(
                f"The cache {path} has format version {store.format_version}: one row per sample of one dataset, "
                "already laid out in its order, with its labels inside, so there is nothing to compact.",
                f"Run `fpt extract` on its dataset with its settings: it writes a format-{FORMAT_VERSION} store of the "
                "same features beside it, reading these without the LPM where the images and labels are unchanged.",
            )
        reader = CacheReader(path, table)
        digest = reader.metadata.label_table
        contents, origins, sources = _compacted_rows(reader)
        if np.array_equal(np.array(contents, dtype=object), reader.group["contents"][:]):
            return CompactResult(path, digest, store.num_rows, store.num_rows, 0, True)
        if staging.exists() and not np.array_equal(np.array(contents, dtype=object),
                                                   read_contents(staging)):
            shutil.rmtree(staging)  # a compaction for another table, or of rows since changed: start again
        if staging.exists():
            metadata = read_store_metadata(staging)
        else:
            create_content_store(staging, store.model_copy(update={"complete": False}))
            metadata = allot_rows(staging, store.model_copy(update={"num_rows": 0, "complete": False}), contents, origins)
            shutil.copytree(path / TABLES, staging / TABLES, dirs_exist_ok=True)
        writer = ShardWriter(staging, metadata, resume_command=f"`fpt cache compact {path}`")
        pending = [shard for shard in range(metadata.num_shards) if shard not in writer.completed_shards()]
        names = list(sharded_arrays(metadata))
        with open_progress(show_progress) as progress:
            task = progress.add_task("Compacting", total=len(pending))
            for shard in pending:
                start, stop = metadata.shard_range(shard)
                stored = {name: np.empty((stop - start, *reader.array(name).shape[1:]), reader.array(name).dtype)
                          for name in names}
                reader.gather_stored_into(sources[start:stop], stored)
                writer.write_stored_shard(shard, stored)
                progress.advance(task)
        writer.finish()
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired)
    return CompactResult(path, digest, store.num_rows, len(contents), len(pending), False)


def read_contents(store: Path) -> np.ndarray:
    return zarr.open_group(store, mode="r", zarr_format=3)["contents"][:]


def _compacted_rows(reader: CacheReader) -> tuple[list[str], list[str], np.ndarray]:
    """(content, origin, source row) of each row of the compacted store: the table's contents in its order,
    then every other content the store holds, in row order."""
    held = [str(c) for c in reader.group["contents"][:]]
    origins = [str(x) for x in reader.group["sample_ids"][:]]
    first_row: dict[str, int] = {}
    for row, content in enumerate(held):
        if content:
            first_row.setdefault(content, row)
    table_contents = list(dict.fromkeys(held[row] for row in reader.rows.tolist()))
    contents = table_contents + [c for c in first_row if c not in set(table_contents)]
    sources = np.array([first_row[c] for c in contents], dtype=np.int64)
    return contents, [origins[row] for row in sources], sources


def _finish_swap(path: Path, staging: Path, retired: Path) -> None:
    """An earlier compaction that stopped between its two renames: finish it."""
    if not retired.exists():
        return
    if not path.exists():
        os.replace(staging, path)
    shutil.rmtree(retired)

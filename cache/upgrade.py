"""A store of format 3 made format 4 without the LPM.

A format-3 store holds one row per sample of one dataset scan, its labels and splits as arrays, and
its key names that scan (the dataset's fingerprint). When `fpt extract` finds one whose key is the
current dataset's (the same images, labels and splits, the same settings), it copies it to the
format-4 store of those settings: the shard files byte for byte (so their checksums hold), each row's
content from the scan's file hashes, no label arrays (the extraction writes the dataset's label table).
The format-3 store is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from fpt.cache.layout import ROW_LIST_CHUNK, write_metadata
from fpt.cache.metadata import StoreMetadata
from fpt.cache.reader import read_store_metadata

LABEL_ARRAYS = ("labels", "splits")


def upgrade_store(old: Path, new: Path, store: StoreMetadata, contents: dict[str, str]) -> StoreMetadata:
    """Copy the complete format-3 store at `old` to `new` as a format-4 store of metadata `store` (its key,
    settings and version); `contents` gives the sha256 of each of its sample ids' files."""
    legacy = read_store_metadata(old)
    staging = new.parent / f".{new.name}.upgrading"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(old, staging, ignore=lambda folder, names: list(LABEL_ARRAYS) if Path(folder) == old else [])
    group = zarr.open_group(staging, mode="r+", zarr_format=3)
    ids = [str(x) for x in group["sample_ids"][:]]
    array = group.create_array("contents", shape=(len(ids),), dtype=str, chunks=(ROW_LIST_CHUNK,))
    array[:] = np.array([contents[sample_id] for sample_id in ids], dtype=object)
    metadata = store.model_copy(update={"num_rows": len(ids), "complete": True, "sources": list(legacy.sources),
                                        "created_at": legacy.created_at})
    write_metadata(group, metadata)
    os.replace(staging, new)
    return metadata

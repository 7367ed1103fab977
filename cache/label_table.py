"""Label tables: a dataset's samples (id, image content, label, split) beside a store's features.

The features of a format-4 store are rows of image contents (the sha256 of each file's bytes),
which the LPM's keys and values depend on; labels, class names and splits do not change them. A
label table lists one scan of a dataset: every sample with its content, label and split, in the
order the samples are read (split-ordered, the train split in its seeded order). It lives in the
store as `tables/<sha256>.json`, named by the sha256 of its canonical JSON, and is never changed:
relabelling or re-splitting writes another table, and every run records the one it trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import zarr
from pydantic import BaseModel, Field

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata, SkippedImage, StoreMetadata

TABLES = "tables"
SPLIT_NAMES = ("train", "val", "test")


class TableSample(BaseModel):
    id: str  # the image's path relative to its dataset folder
    content: str  # sha256 of the file's bytes, hex: the store row that holds its features
    label: int
    split: str


class LabelTable(BaseModel):
    dataset: str
    class_names: list[str]
    default_lr: float
    samples: list[TableSample]  # split-ordered (train, val, test), each split in its storage order
    shuffled_splits: list[str] = Field(default_factory=list)
    skipped: list[SkippedImage] = Field(default_factory=list)

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def split_ranges(self) -> dict[str, tuple[int, int]]:
        ranges, start = {}, 0
        for split in SPLIT_NAMES:
            count = sum(1 for sample in self.samples if sample.split == split)
            ranges[split] = (start, start + count)
            start += count
        return ranges

    def class_counts(self) -> dict[str, list[int]]:
        counts = {split: [0] * len(self.class_names) for split in SPLIT_NAMES}
        for sample in self.samples:
            counts[sample.split][sample.label] += 1
        return counts

    def contents(self) -> list[str]:
        """The distinct contents the table uses, in table order."""
        return list(dict.fromkeys(sample.content for sample in self.samples))


def table_path(store: Path, digest: str) -> Path:
    return store / TABLES / f"{digest}.json"


def write_table(store: Path, table: LabelTable) -> str:
    """Write the table into the store (if it is not there yet); returns its sha256. Atomic: written
    to a temporary file, then renamed."""
    digest = table.digest
    path = table_path(store, digest)
    if not path.is_file():
        # a zarr group of its own, so that zarr lists the store without a warning about the folder
        zarr.open_group(store, mode="r+", zarr_format=3).require_group(TABLES)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_bytes(table.canonical())
        os.replace(temporary, path)
    return digest


def read_table(store: Path, digest: str) -> LabelTable:
    """The table `digest` of the store (a unique prefix of the hash is enough)."""
    folder = store / TABLES
    matches = sorted(folder.glob(f"{digest}*.json")) if digest else []
    if len(matches) != 1:
        known = ", ".join(digest[:12] for digest in table_digests(store)) or "none"
        raise UserError(
            f"The cache {store} has {'no' if not matches else 'more than one'} label table {digest[:16] or '(none named)'} "
            f"(it holds: {known}).",
            "Run `fpt extract` on the dataset to write its label table (the LPM runs only on images not in the store).",
        )
    table = LabelTable.model_validate_json(matches[0].read_bytes())
    if table.digest != matches[0].stem:
        raise UserError(f"The label table {matches[0]} does not match its name (the file was changed).",
                        "Delete it and run `fpt extract` on the dataset again to write it anew.")
    return table


def table_digests(store: Path) -> list[str]:
    """The sha256 of every label table in the store."""
    return sorted(p.stem for p in (store / TABLES).glob("*.json") if p.name != "zarr.json")


def table_view(store: StoreMetadata, table: LabelTable | None) -> CacheMetadata:
    """The store seen through `table`: the metadata a reader gives (no table: no samples)."""
    facts = {"dataset_fingerprint": "", "class_names": [], "default_lr": 0.0, "num_samples": 0,
             "split_ranges": {split: (0, 0) for split in SPLIT_NAMES},
             "class_counts": {split: [] for split in SPLIT_NAMES}}
    if table is not None:
        digest = table.digest
        facts = {"dataset_fingerprint": digest, "label_table": digest, "class_names": table.class_names,
                 "default_lr": table.default_lr, "num_samples": len(table.samples), "split_ranges": table.split_ranges,
                 "class_counts": table.class_counts(), "skipped": table.skipped, "shuffled_splits": table.shuffled_splits}
    return CacheMetadata.model_validate(store.model_dump() | facts)

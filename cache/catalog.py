"""Finding caches on disk: listing them with their metadata, and their size."""

from __future__ import annotations

from pathlib import Path

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata
from fpt.cache.reader import read_metadata


def folder_bytes(path: Path) -> int:
    """Bytes on disk of every file under path (a store, or one of its arrays); 0 if it is missing."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def list_caches(root: Path) -> list[tuple[Path, CacheMetadata | None, str]]:
    """Every *.zarr under root with its metadata (None and the reason if unreadable)."""
    found = []
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*.zarr")):
        try:
            found.append((path, read_metadata(path), ""))
        except UserError as error:
            found.append((path, None, error.paragraph()))
    return found

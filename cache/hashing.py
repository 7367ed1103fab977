"""sha256 of files: the identity of weights files and images, and the checksums of shard files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, block_size: int = 1 << 22) -> str:
    """The file's sha256, hex."""
    return file_digest(path, block_size).hex()


def file_digest(path: Path, block_size: int = 1 << 22) -> bytes:
    """The file's sha256, as bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.digest()

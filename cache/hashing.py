"""sha256 of files: the identity of weights files and images, and the checksums of shard files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, block_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()

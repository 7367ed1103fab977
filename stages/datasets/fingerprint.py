"""A dataset's images, hashed: the sha256 of each file's bytes addresses its features in the cache
(content, not paths: the same images anywhere on disk give the same hashes)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fpt.cache.hashing import file_sha256
from fpt.stages.datasets.samples import Sample


def content_hashes(samples: list[Sample], workers: int = 4) -> list[str]:
    """The sha256 (hex) of every sample's file, in sample order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: file_sha256(Path(s.path)), samples))


def dataset_fingerprint(samples: list[Sample], workers: int = 4, hashes: list[str] | None = None) -> str:
    """sha256 over (content hash, label, split) of every sample, in sample order: the identity of a
    dataset's images, labels and splits together (the key of a store of formats 2 and 3)."""
    hashes = content_hashes(samples, workers) if hashes is None else hashes
    digest = hashlib.sha256()
    for sample, content in zip(samples, hashes):
        digest.update(f"{content}:{sample.label}:{sample.split}\n".encode())
    return digest.hexdigest()

"""A dataset's content, hashed for the cache key: the same images, labels and splits anywhere on disk
give the same fingerprint."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fpt.cache.hashing import file_sha256
from fpt.stages.datasets.samples import Sample


def dataset_fingerprint(samples: list[Sample], workers: int = 4) -> str:
    """sha256 over (content hash, label, split) of every sample, in sample order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(pool.map(lambda s: file_sha256(Path(s.path)), samples))
    digest = hashlib.sha256()
    for sample, content in zip(samples, hashes):
        digest.update(f"{content}:{sample.label}:{sample.split}\n".encode())
    return digest.hexdigest()

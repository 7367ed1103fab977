"""A cache's identity: what went into it, hashed. Same inputs -> same key -> same store.

The key covers the LPM weights' identity, every extraction and storage setting, the
normalisation, and the dataset's content (its fingerprint: file hashes with labels and splits,
not paths; stages/datasets/fingerprint.py).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from fpt.cache.metadata import FORMAT_VERSION, LPMIdentity


def store_key(dataset: str, fingerprint: str, lpm: LPMIdentity, settings: BaseModel, normalization: BaseModel,
              storage: BaseModel, format_version: int = FORMAT_VERSION) -> str:
    """The key of a store: the parts that decide its contents (the LPM by name and weights only).

    The format version is part of the key, so a store of another version never blocks a rebuild
    (`fpt extract` writes a store of the current version beside it), and a store re-encoded from one
    (`fpt cache transcode`) keeps its version, as it holds no more than its source."""
    weights = lpm.model_dump(include={"name", "weights_identity"})
    return cache_key(f"format-{format_version}", dataset, fingerprint, str(weights), settings, normalization, storage)


def cache_key(*parts: BaseModel | str) -> str:
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

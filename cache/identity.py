"""A cache's identity: what went into it, hashed. Same inputs -> same key -> same store.

A format-4 store's key covers the dataset's name, the LPM weights' identity, every extraction and
storage setting and the normalisation: what the features of an image's content depend on. Its
rows are image contents and its labels live in label tables (cache/label_table.py), so the same
store serves every labelling, split and addition of images. Stores of formats 2 and 3 hashed the
dataset's fingerprint too (file hashes with labels and splits; stages/datasets/fingerprint.py).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from fpt.cache.metadata import CONTENT_FORMAT_VERSION, FORMAT_VERSION, LPMIdentity


def features_key(dataset: str, lpm: LPMIdentity, settings: BaseModel, normalization: BaseModel, storage: BaseModel,
                 format_version: int = FORMAT_VERSION) -> str:
    """The key of a store of image contents (format 4 on): no labels, splits or image list in it.

    A normalisation computed from the data (`auto`, from the train split) is keyed by its source alone:
    its mean/std are those of the store's first extraction, recorded in the store and applied to every
    image added later, so that adding or moving training images neither changes the key nor mixes two
    normalisations in one store."""
    if format_version < CONTENT_FORMAT_VERSION:
        raise ValueError(f"format {format_version} keys hash the dataset's fingerprint: use store_key")
    weights = lpm.model_dump(include={"name", "weights_identity"})
    values = "normalization-auto" if getattr(normalization, "source", None) == "auto" else normalization
    return cache_key(f"format-{format_version}", dataset, str(weights), settings, values, storage)


def store_key(dataset: str, fingerprint: str, lpm: LPMIdentity, settings: BaseModel, normalization: BaseModel,
              storage: BaseModel, format_version: int = 3) -> str:
    """The key of a store of formats 2 and 3: the parts that decide its contents (the LPM by name and
    weights only), the dataset's fingerprint among them.

    The format version is part of the key, so a store of another version never blocks a rebuild
    (`fpt extract` writes a store of the current version beside it), and a store re-encoded from one
    (`fpt cache transcode`) keeps its version, as it holds no more than its source."""
    weights = lpm.model_dump(include={"name", "weights_identity"})
    return cache_key(f"format-{format_version}", dataset, fingerprint, str(weights), settings, normalization, storage)


def cache_key(*parts: BaseModel | str) -> str:
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

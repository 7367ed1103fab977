"""The frozen LPM a store was made with, rebuilt to run stage one on new images (`fpt predict`, `fpt explain`).

The LPM is rebuilt from the run's configuration and must have the very identity the cache records
(name, architecture and weights hash or random seed); the extraction settings (input size, layers,
token ratio, importance, side image size, normalisation) are taken from the cache's metadata, not
from the configuration, and the images go through stage one's own code (ExtractionImages,
TokenSelectingLPM). Keys and values are rounded to the cache's storage dtype, so a test image gives
the features train-side read from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader

from fpt.cache.encoding import decode, encode, has_scales
from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata, ExtractionSettings, LPMIdentity, Normalization
from fpt.stages.core.devices import decode_workers
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.samples import Sample
from fpt.stages.extract.run import ExtractionImages
from fpt.stages.lpm.build import build_lpm
from fpt.stages.lpm.token_selection import TokenSelectingLPM


class StageOne(BaseModel):
    """What stage one's features depend on: the LPM, the extraction settings, the normalisation and the dtype
    the features were stored in. A cache's metadata holds it, and so does a model export."""

    lpm: LPMIdentity
    extraction: ExtractionSettings
    normalization: Normalization
    storage_dtype: Literal["float16", "bfloat16", "float32", "int8", "int4"]

    @classmethod
    def of_cache(cls, metadata: CacheMetadata) -> "StageOne":
        return cls(lpm=metadata.lpm, extraction=metadata.extraction, normalization=metadata.normalization,
                   storage_dtype=metadata.storage.dtype)


IDENTITY_FIELDS = ("name", "weights_identity", "embed_dim", "num_heads", "head_dim", "patch_size", "depth",
                   "num_prefix_tokens", "num_params")


def frozen_selector(config: PipelineConfig, stage_one: StageOne) -> TokenSelectingLPM:
    """The LPM the features were made with, built from `config.lpm` and checked by identity, wrapped for
    token selection with the recorded extraction settings."""
    settings = stage_one.extraction
    vit, identity = build_lpm(config.lpm, settings.input_size)
    recorded = stage_one.lpm
    differences = [
        f"{name}: cache has {getattr(recorded, name)}, now {getattr(identity, name)}"
        for name in IDENTITY_FIELDS if getattr(recorded, name) != getattr(identity, name)
    ]
    if differences:
        raise UserError(
            "The LPM built from these settings is not the one that made the run's features (" + "; ".join(differences)
            + "), so its features would not match what the side network was trained on.",
            _same_lpm_hint(recorded),
        )
    return TokenSelectingLPM(vit, settings.layers, settings.token_ratio, settings.importance, config.extract.query_chunk,
                             settings.precision)


def _same_lpm_hint(recorded: LPMIdentity) -> str:
    if recorded.weights_source == "none":
        seed = recorded.weights_identity.removeprefix("random:")
        return f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=none --set lpm.init_seed={seed}."
    if recorded.weights_source == "file":
        return (f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=<the weights file "
                f"whose sha256 is {recorded.weights_identity.removeprefix('sha256:')[:16]}...>.")
    return (f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=hub, with the same "
            "hub weights downloaded (their hash is recorded in the cache).")


def as_stored(features: torch.Tensor, storage_dtype: str) -> torch.Tensor:
    """Round features as the cache stores them, back in float32. int8 and int4 go through the store's own
    encode and decode (numpy, on the CPU), which extraction applies to the same float32 features."""
    if has_scales(storage_dtype):
        stored, scales = encode(features.float().cpu().numpy(), storage_dtype)
        decoded = decode(stored, scales, storage_dtype, features.shape[-1])
        return torch.from_numpy(decoded).to(features.device)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(storage_dtype)
    return features.to(dtype).float() if dtype is not None else features.float()


@dataclass
class ImageFeatures:
    """Stage one's output for a batch of new images, as train-side would have read it from the cache."""

    positions: list[int]  # the images' positions in the list of files
    side_images: np.ndarray  # (B, S', S', 3) uint8
    keys: torch.Tensor | None  # (B, L, H, n, Dh) float32 on the device, rounded as stored; None without the LPM
    values: torch.Tensor | None
    token_indices: torch.Tensor | None  # (B, L, H, n) int64


def image_features(files: list[Path], config: PipelineConfig, stage_one: StageOne,
                   selector: TokenSelectingLPM | None, device: torch.device) -> Iterator[ImageFeatures]:
    """Decode and resize `files` as the cache's images were, and run the frozen `selector` on them (None: the
    side images alone), a batch at a time; an undecodable file stops it before anything is written."""
    settings, norm = stage_one.extraction, stage_one.normalization
    samples = [Sample(sample_id=str(path), path=path, label=-1, split="test") for path in files]
    # decoded and resized as the run's cache was; JPEGs as extract.jpeg_draft says if its images held none
    draft = settings.jpeg_draft if settings.jpeg_draft is not None else config.extract.jpeg_draft
    images = ExtractionImages(samples, list(range(len(samples))), settings.input_size, settings.side_store_size,
                              norm.mean, norm.std, settings.resize, draft)
    loader = DataLoader(images, batch_size=config.extract.batch_size, shuffle=False,
                        num_workers=decode_workers(config.extract.num_workers, device))
    for indices, lpm_inputs, side_images, errors in loader:
        failures = [(files[int(i)], e) for i, e in zip(indices, errors) if e]
        if failures:
            raise UserError(f"The image {failures[0][0]} cannot be read: {failures[0][1]}.",
                            "Remove or replace it and run again; nothing was written yet.")
        keys = values = token_indices = None
        if selector is not None:
            keys, values, token_indices = selector(lpm_inputs.to(device))
            keys, values = as_stored(keys, stage_one.storage_dtype), as_stored(values, stage_one.storage_dtype)
        yield ImageFeatures(indices.tolist(), side_images.numpy(), keys, values, token_indices)

"""A cache store filled with synthetic features through the real writer, without running an LPM.

For benchmarks (e.g. a cache ten times the demo's) and fast tests of reading and training code.
The features are deterministic per sample, so a sample's content can be re-derived to check reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np

from fpt.cache.label_table import LabelTable, TableSample, write_table
from fpt.cache.layout import SPLIT_CODES, allot_rows, create_content_store, create_store, record_source, store_name
from fpt.cache.metadata import CacheMetadata, ExtractionSettings, LPMIdentity, Normalization, StorageSettings
from fpt.cache.progress import open_progress
from fpt.cache.writer import ShardWriter


def synthetic_metadata(split_counts: dict[str, int], num_classes: int = 3, layers: int = 6, heads: int = 3,
                       selected: int = 205, head_dim: int = 64, side_store_size: int = 144,
                       storage: StorageSettings | None = None, dataset: str = "synthetic",
                       lpm_name: str = "synthetic", class_counts: dict[str, list[int]] | None = None,
                       format_version: int = 4) -> CacheMetadata:
    """Metadata of a synthetic store. class_counts: each split's samples per class (summing to its
    count); by default the classes take turns, sample i of a split being of class i mod num_classes."""
    storage = storage or StorageSettings(dtype="float16", codec="zstd", codec_level=3, shard_size=32, chunk_size=4)
    ranges, start = {}, 0
    for split, count in split_counts.items():
        ranges[split] = (start, start + count)
        start += count
    counts = {split: [len(range(c, count, num_classes)) for c in range(num_classes)] for split, count in split_counts.items()}
    if class_counts is not None:
        if any(sum(class_counts[split]) != count or len(class_counts[split]) != num_classes
               for split, count in split_counts.items()):
            raise ValueError("class_counts must give every split's count, split over num_classes classes")
        counts = {split: list(class_counts[split]) for split in split_counts}
    lpm = LPMIdentity(
        name=lpm_name, weights_source="none", weights_identity="synthetic", embed_dim=heads * head_dim,
        num_heads=heads, head_dim=head_dim, patch_size=16, depth=max(12, layers), num_prefix_tokens=1, num_params=0,
    )
    tokens = max(selected, 1025)
    extraction = ExtractionSettings(
        input_size=512, layers=list(range(12 - layers, 12)) if layers <= 12 else list(range(layers)),
        token_ratio=selected / tokens, importance="global", num_tokens=tokens, num_selected=selected,
        side_store_size=side_store_size,
    )
    shape = (layers, heads, selected, head_dim, side_store_size, num_classes)
    key = hashlib.sha256(json.dumps(["synthetic", dataset, split_counts, shape, storage.model_dump()]).encode()).hexdigest()
    return CacheMetadata(
        format_version=format_version, fpt_version="synthetic", created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cache_key=key, dataset=dataset, dataset_fingerprint="synthetic",
        class_names=[f"class_{c}" for c in range(num_classes)], default_lr=1e-3, num_samples=start,
        split_ranges=ranges, class_counts=counts, lpm=lpm, extraction=extraction,
        normalization=Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="imagenet"), storage=storage,
    )


def sample_labels(metadata: CacheMetadata) -> np.ndarray:
    """Each split's labels as its class counts say: the classes take turns, a class whose count is
    used up leaving the turn (with equal shares, sample i of a split is of class i mod classes)."""
    labels = np.zeros(metadata.num_samples, dtype=np.int64)
    for split, (start, stop) in metadata.split_ranges.items():
        left = list(metadata.class_counts[split])
        turns: list[int] = []
        while any(left):
            for c, n in enumerate(left):
                if n:
                    turns.append(c)
                    left[c] -= 1
        labels[start:stop] = turns
    return labels


def synthetic_features(index: int, label: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values of one sample: seeded noise with a class-dependent offset."""
    rng = np.random.default_rng(index)
    keys = rng.standard_normal(shape, dtype=np.float32) + 0.5 * label
    values = rng.standard_normal(shape, dtype=np.float32) - 0.5 * label
    return keys, values


def synthetic_token_indices(index: int, metadata: CacheMetadata) -> np.ndarray:
    """Token indices of one sample: n distinct tokens of N per (layer, head), seeded, in token order."""
    layers, heads, selected, _ = metadata.feature_shape
    order = np.random.default_rng(index).random((layers, heads, metadata.extraction.num_tokens)).argsort(axis=-1)
    return np.sort(order[..., :selected], axis=-1)


def write_synthetic_cache(root: Path, metadata: CacheMetadata, show_progress: bool = False) -> Path:
    """Create the store under root and fill every shard through ShardWriter; returns its path."""
    path = root / store_name(metadata.dataset, metadata.cache_key)
    labels = sample_labels(metadata)
    splits = np.zeros(metadata.num_samples, dtype=np.uint8)
    for split, (start, stop) in metadata.split_ranges.items():
        splits[start:stop] = SPLIT_CODES[split]
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"sample_{i:06d}" for i in range(metadata.num_samples)]
    table = None
    if metadata.by_content:  # one row per sample, in the table's order: a compacted store
        names = {code: split for split, code in SPLIT_CODES.items()}
        contents = [hashlib.sha256(f"{metadata.cache_key}:{i}".encode()).hexdigest() for i in range(metadata.num_samples)]
        table = LabelTable(dataset=metadata.dataset, class_names=metadata.class_names, default_lr=metadata.default_lr,
                           samples=[TableSample(id=ids[i], content=contents[i], label=int(labels[i]),
                                                split=names[int(splits[i])]) for i in range(metadata.num_samples)],
                           shuffled_splits=metadata.shuffled_splits)
        create_content_store(path, metadata.store_part())
        metadata = metadata.model_copy(update={"num_rows": 0})
        allot_rows(path, metadata.store_part(), contents, ids)
        metadata = metadata.model_copy(update={"num_rows": metadata.num_samples})
    else:
        create_store(path, metadata, labels, splits, ids)
    writer = ShardWriter(path, metadata)
    side = metadata.extraction.side_store_size
    with open_progress(show_progress) as progress:
        task = progress.add_task("Writing synthetic cache", total=metadata.num_shards)
        for shard in range(metadata.num_shards):
            start, stop = metadata.shard_range(shard)
            pairs = [synthetic_features(i, int(labels[i]), metadata.feature_shape) for i in range(start, stop)]
            side_images = np.stack([
                np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(start, stop)
            ])
            token_indices = np.stack([synthetic_token_indices(i, metadata) for i in range(start, stop)]) \
                if metadata.has_token_indices else None
            writer.write_shard(shard, np.stack([k for k, _ in pairs]), np.stack([v for _, v in pairs]), side_images,
                               token_indices)
            progress.update(task, advance=1)
    finished = writer.finish()
    if table is not None:
        record_source(path, finished, None, write_table(path, table))
    return path

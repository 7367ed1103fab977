"""Cross-validation folds drawn from the cache: stratified, seeded re-splits of train + val.

The cache holds its samples split-ordered (train, val, test; metadata.split_ranges). With
train.folds = k > 1, the samples of train and val, in cache order, are cut by scikit-learn's
`StratifiedKFold(k, shuffle=True, random_state=train.fold_seed)`: fold i (1..k) validates on the
i-th part and trains on the other k - 1. Each part holds every class's share to within one sample,
and every sample of train + val is validated on exactly once. The test split is never touched.
The parts depend on the sample order, which is the label table's and fixed (cache/storage_order.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.settings import TrainConfig

POOLED_SPLITS = ("train", "val")


def pooled_samples(reader: CacheReader) -> tuple[np.ndarray, np.ndarray]:
    """(cache indices, labels) of the train and val samples, in cache order."""
    labels = reader.labels()
    indices = np.concatenate([np.arange(*reader.split_range(split), dtype=np.int64) for split in POOLED_SPLITS
                              if split in reader.metadata.split_ranges])
    return indices, labels[indices]


def stratified_folds(indices: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                     class_names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training indices, validation indices) of each of `folds` folds, in fold order, each sorted."""
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"{class_names[c]} ({counts[c]})" for c in np.flatnonzero(counts) if counts[c] < folds]
    if short:
        raise UserError(
            f"train.folds={folds} needs at least {folds} samples of every class in train + val; "
            f"fewer have: {', '.join(short)}.",
            "Use fewer folds (--set train.folds=...), or train on the dataset's own split (train.folds=1).",
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(indices[train]), np.sort(indices[val]))
            for train, val in splitter.split(np.zeros(len(labels)), labels)]


def fold_samples(reader: CacheReader, folds: int, seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of fold `fold` (1..folds)."""
    indices, labels = pooled_samples(reader)
    return stratified_folds(indices, labels, folds, seed, reader.metadata.class_names)[fold - 1]


def split_samples(reader: CacheReader, train: TrainConfig, split: str) -> str | np.ndarray:
    """The samples a run with these training settings calls `split`: the cache's split by its name, except
    that a fold of a cross-validation (train.fold) trained and validated on its own parts of train + val."""
    if train.fold is None or split not in POOLED_SPLITS:
        return split
    training, validation = fold_samples(reader, train.folds, train.fold_seed, train.fold)
    return training if split == "train" else validation

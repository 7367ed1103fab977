"""k-fold cross-validation from the cache (train.folds = k > 1).

Fold i (1..k) is an ordinary run, `train_side` with train.fold = i, that trains on k - 1 parts of
train + val and validates on the i-th (stages/train/folds.py); the test split is untouched and every
fold is tested on it. The folds train one after another, each a pack of one: they read different
samples, so they cannot share batches, and one at a time keeps memory that of a single run. Their
folders are <runs_root>/<name>/fold-1 .. fold-k, and the parent gets the summary
(stages/runs/cross_validation_summary.py). Each fold's config.yaml names its fold, so a fold that
was interrupted goes on with `fpt train-side --resume <name>/fold-i`.
"""

from __future__ import annotations

import time
from pathlib import Path

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.files import writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.runs.cross_validation_summary import (
    CrossValidationResult, FoldSummary, new_cv_dir, summarize_cross_validation,
)
from fpt.stages.train.cache_choice import find_cache, label_table_of
from fpt.stages.train.folds import pooled_samples, stratified_folds
from fpt.stages.train.train_side import train_side


def fold_config(config: PipelineConfig, folder: Path, fold: int) -> PipelineConfig:
    """The settings of fold `fold`: the cross-validation's own, its run folder <folder>/fold-<fold>."""
    train = config.train.model_copy(update={"fold": fold, "runs_root": folder, "run_name": f"fold-{fold}"})
    return config.model_copy(update={"train": train})


def cross_validate(config: PipelineConfig, cache_path: Path | None = None,
                   show_progress: bool = True) -> CrossValidationResult:
    """Train train.folds models on stratified re-splits of train + val, one after another, and write the
    summary of their validation and test metrics and of their ensemble on the test split."""
    train = config.train
    if train.folds < 2 or train.fold is not None:
        raise UserError(f"A cross-validation needs train.folds > 1 and no train.fold (got folds={train.folds}, "
                        f"fold={train.fold}).", "Set train.folds=k and leave train.fold out; train-side sets it.")
    writable_folder(train.runs_root, "train.runs_root")
    cache = find_cache(config, dataset_source(config), cache_path)
    reader = CacheReader(cache, label_table_of(cache, dataset_source(config)))
    indices, labels = pooled_samples(reader)
    stratified_folds(indices, labels, train.folds, train.fold_seed, reader.metadata.class_names)  # refused before any folder
    began = time.perf_counter()
    folder = new_cv_dir(config)
    summaries = []
    for fold in range(1, train.folds + 1):
        result = train_side(fold_config(config, folder, fold), cache, show_progress)
        summaries.append(FoldSummary(fold=fold, run_dir=result.run_dir, best_epoch=result.best_epoch,
                                     best_val=result.best_val, test_best=result.test_best))
    return summarize_cross_validation(folder, summaries, reader.metadata.class_names, train.fold_seed,
                                      time.perf_counter() - began)

"""k-fold cross-validation from the cache (train.folds = k > 1).

Fold i (1..k) is an ordinary run, `train_side` with train.fold = i, that trains on k - 1 parts of
train + val and validates on the i-th (stages/datasets/folds.py); the test split is untouched and every
fold is tested on it. The folds train one after another, each a pack of one: they read different
samples, so they cannot share batches, and one at a time keeps memory that of a single run. Their
folders are <runs_root>/<name>/fold-1 .. fold-k, and the parent gets the summary
(stages/runs/cross_validation_summary.py) and the cross-validation's config.yaml. An interrupted
cross-validation goes on with `fpt train-side --resume <name>`: finished folds are kept, the
interrupted fold goes on from its last finished epoch (its resume state), and the rest train.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.files import writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.folds import pooled_samples, stratified_folds
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.runs.cross_validation_summary import (
    CrossValidationResult, FoldSummary, new_cv_dir, summarize_cross_validation,
)
from fpt.stages.runs.run_folder import write_config
from fpt.stages.train.cache_choice import find_cache, label_table_of
from fpt.stages.train.recipe import TrainResult
from fpt.stages.train.resume_state import saved_epoch
from fpt.stages.train.train_side import train_side


def fold_config(config: PipelineConfig, folder: Path, fold: int) -> PipelineConfig:
    """The settings of fold `fold`: the cross-validation's own, its run folder <folder>/fold-<fold>."""
    train = config.train.model_copy(update={"fold": fold, "runs_root": folder, "run_name": f"fold-{fold}"})
    return config.model_copy(update={"train": train})


def cross_validate(config: PipelineConfig, cache_path: Path | None = None, show_progress: bool = True,
                   folder: Path | None = None) -> CrossValidationResult:
    """Train train.folds models on stratified re-splits of train + val, one after another, and write the
    summary of their validation and test metrics and of their ensemble on the test split.
    folder: an interrupted cross-validation to go on with (its config.yaml gave `config`)."""
    train = config.train
    if train.folds < 2 or train.fold is not None:
        raise UserError(f"A cross-validation needs train.folds > 1 and no train.fold (got folds={train.folds}, "
                        f"fold={train.fold}).", "Set train.folds=k and leave train.fold out; train-side sets it.")
    writable_folder(train.runs_root if folder is None else folder, "train.runs_root")
    cache = find_cache(config, dataset_source(config), cache_path)
    reader = CacheReader(cache, label_table_of(cache, dataset_source(config)))
    indices, labels = pooled_samples(reader)
    stratified_folds(indices, labels, train.folds, train.fold_seed, reader.metadata.class_names)  # refused before any folder
    if folder is None:
        folder = new_cv_dir(config)
        write_config(folder, config)
    summaries, seconds = [], 0.0
    for fold in range(1, train.folds + 1):
        try:
            result = _train_fold(config, folder, fold, cache, show_progress)
        except Interrupted:
            epoch = saved_epoch(folder / f"fold-{fold}")
            kept = f"its last finished epoch ({epoch})" if epoch else "no finished epoch yet"
            raise Interrupted(f"The cross-validation in {folder} keeps {fold - 1} finished fold(s); fold {fold} keeps "
                              f"{kept}. Go on with `fpt train-side --resume {folder}`.") from None
        seconds += result.seconds
        summaries.append(FoldSummary(fold=fold, run_dir=result.run_dir, best_epoch=result.best_epoch,
                                     best_val=result.best_val, test_best=result.test_best))
    return summarize_cross_validation(folder, summaries, reader.metadata.class_names, train.fold_seed, seconds)


def _train_fold(config: PipelineConfig, folder: Path, fold: int, cache: Path, show_progress: bool) -> TrainResult:
    """Fold `fold`'s result: kept from a finished fold run, gone on with from an interrupted one's resume
    state, or trained (a fold run that stopped before its first epoch ended has nothing to keep)."""
    run_dir = folder / f"fold-{fold}"
    if (run_dir / "final_metrics.json").is_file():
        return TrainResult.model_validate_json((run_dir / "final_metrics.json").read_text())
    if saved_epoch(run_dir) is not None:
        return train_side(fold_config(config, folder, fold), cache, show_progress, resume_run=run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train_side(fold_config(config, folder, fold), cache, show_progress)

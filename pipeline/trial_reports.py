"""What a sweep knows of each trial: a report per trial, read from the run folders it left.

A trial is one run folder (trials/<trial id>/) or, cross-validated (train.folds = k > 1), a folder of
k fold runs with the cross-validation summary beside them (trials/<trial id>/fold-1 .. fold-k,
cv.json). Its report carries the scores the sweep ranks by: the best epoch's validation metrics of a
single run, or their mean over the folds of a cross-validated one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fpt.pipeline.search_space import Trial
from fpt.stages.runs.cross_validation_summary import CrossValidationResult
from fpt.stages.runs.metrics import is_binary, reported_scores
from fpt.stages.train.recipe import TrainResult
from fpt.stages.train.trial_results import PRUNED_FILE

CV_FILE = "cv.json"


class TrialReport(BaseModel):
    """The outcome of one trial (or of one fold run of a cross-validated trial), as it crosses back from a
    dask worker."""

    trial_id: str
    settings: dict[str, Any]
    # finished (in this run) | skipped (finished by an earlier run of the sweep) | pruned (stopped early by
    # the search's pruner) | failed
    status: str
    run_dir: Path
    val_auc: float | None = None
    # every validation score of the best epoch; of a cross-validated trial, their means over its folds
    best_val: dict[str, float | None] | None = None
    val_std: dict[str, float] | None = None  # a cross-validated trial's sample standard deviations over folds
    folds: int | None = None  # a cross-validated trial's number of folds
    best_epoch: int | None = None
    # the epochs it trained: all of them, or those before it was pruned; summed over a trial's folds
    epochs_trained: int | None = None
    # the best model's test metrics; of a cross-validated trial, the fold ensemble's (mean of probabilities)
    test_best: dict[str, float] | None = None
    test_last: dict[str, float] | None = None
    seconds: float | None = None
    error: str | None = None
    lpm_disabled: bool = False
    worker_peak_rss_mb: float | None = None  # peak resident memory of the process that trained it
    resumed_from_epoch: int | None = None  # went on from the resume state an interrupted sweep left


def report_from_final(trial: Trial, run_dir: Path, status: str, lpm_disabled: bool = False) -> TrialReport:
    """A finished run's report, from its final_metrics.json."""
    result = TrainResult.model_validate_json((run_dir / "final_metrics.json").read_text())
    return TrialReport(
        trial_id=trial.trial_id, settings=trial.settings, status=status, run_dir=run_dir,
        val_auc=result.best_val.auc, best_val=result.best_val.model_dump(), best_epoch=result.best_epoch,
        epochs_trained=trial.config.train.epochs,
        test_best=result.test_best.model_dump(include=set(reported_scores(is_binary(result.test_best)))),
        test_last=result.test_last.model_dump(include=set(reported_scores(is_binary(result.test_last)))),
        seconds=result.seconds,
        lpm_disabled=lpm_disabled,
    )


def report_pruned(trial: Trial, run_dir: Path, lpm_disabled: bool = False) -> TrialReport:
    """A run the search's pruner stopped: its best epoch until then, from pruned.json."""
    pruned = json.loads((run_dir / PRUNED_FILE).read_text())
    best = pruned.get("best_val") or {}
    return TrialReport(trial_id=trial.trial_id, settings=trial.settings, status="pruned", run_dir=run_dir,
                       val_auc=best.get("auc"), best_val=best or None, best_epoch=pruned.get("best_epoch"),
                       epochs_trained=pruned["epoch"], lpm_disabled=lpm_disabled)


def report_failed(trial: Trial, run_dir: Path, error: str, lpm_disabled: bool = False) -> TrialReport:
    return TrialReport(trial_id=trial.trial_id, settings=trial.settings, status="failed", run_dir=run_dir,
                       error=error, lpm_disabled=lpm_disabled)


def report_from_cv(trial: Trial, folder: Path, status: str, epochs_trained: int | None = None) -> TrialReport:
    """A cross-validated trial's report, from the cv.json of its folder: the folds' mean validation scores
    rank it, the fold ensemble's test metrics are its test metrics."""
    result = CrossValidationResult.model_validate_json((folder / CV_FILE).read_text())
    ensemble = result.ensemble_test
    return TrialReport(
        trial_id=trial.trial_id, settings=trial.settings, status=status, run_dir=folder,
        val_auc=result.val_mean.get("auc"), best_val=dict(result.val_mean), val_std=dict(result.val_std),
        folds=len(result.folds),
        epochs_trained=epochs_trained if epochs_trained is not None else trial.config.train.epochs * len(result.folds),
        test_best=ensemble.model_dump(include=set(reported_scores(is_binary(ensemble)))),
        seconds=result.seconds,
    )

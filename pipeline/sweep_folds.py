"""Cross-validated trials in a sweep (train.folds = k > 1): a trial is scored by the mean of its k folds.

Each trial trains as k fold runs, trials/<trial id>/fold-1 .. fold-k, each an ordinary run with
train.fold = i (stages/datasets/folds.py cuts train + val into the same k stratified parts for every
trial; the test split is untouched). Fold i of every trial trains on the same samples in the same
order, so the sweep packs fold i of all its trials together: they differ only in their settings and
share one read of the cache (stages/train/packed_training.py, pack_key). When all k folds of a trial
have finished, its folder gets the summary `fpt train-side` writes for a cross-validation (cv.json,
report.md, the fold ensemble's test predictions) and its config.yaml, with which
`fpt train-side --config <trial>/config.yaml` repeats the whole cross-validation.

An Optuna search trains a round's trials fold by fold. A fold run reports its validation metric after
each epoch as step (i - 1) * epochs + epoch of its trial, so the pruner compares trials on the same
fold and epoch, and a trial pruned during fold i trains none of the later folds.
"""

from __future__ import annotations

from pathlib import Path

from fpt.pipeline.search_space import Trial
from fpt.pipeline.trial_reports import CV_FILE, TrialReport, report_from_cv, report_from_final
from fpt.stages.runs.cross_validation_summary import FoldSummary, summarize_cross_validation
from fpt.stages.runs.run_folder import write_config
from fpt.stages.train.recipe import TrainResult

FINAL_FILE = "final_metrics.json"


def is_cross_validated(trial: Trial) -> bool:
    return trial.config.train.folds > 1


def fold_run(trial: Trial, fold: int) -> Trial:
    """The run that trains fold `fold` (1..k) of a cross-validated trial; a plain trial is its own only run."""
    if not is_cross_validated(trial):
        return trial
    train = trial.config.train.model_copy(update={"fold": fold})
    return Trial(trial_id=f"{trial.trial_id}/fold-{fold}", settings=trial.settings,
                 config=trial.config.model_copy(update={"train": train}))


def fold_runs(trial: Trial) -> list[Trial]:
    """The runs that train the trial: itself, or its k fold runs in fold order."""
    return [fold_run(trial, fold) for fold in range(1, max(trial.config.train.folds, 1) + 1)]


def step_offset(run: Trial) -> int:
    """Where a run's epochs start among its trial's steps: (fold - 1) * epochs for a fold run, else 0."""
    fold = run.config.train.fold
    return 0 if fold is None else (fold - 1) * run.config.train.epochs


def finished_earlier(trial: Trial, trials_root: Path) -> TrialReport | None:
    """The report of a trial an earlier run of the sweep finished (all its folds, summary written), or None."""
    folder = trials_root / trial.trial_id
    if is_cross_validated(trial):
        return report_from_cv(trial, folder, "skipped") if (folder / CV_FILE).is_file() else None
    return report_from_final(trial, folder, "skipped") if (folder / FINAL_FILE).is_file() else None


def trial_report(trial: Trial, runs: dict[str, TrialReport], trials_root: Path, class_names: list[str]) -> TrialReport:
    """A trial's report from the reports of its runs: every fold, or those up to the one that was pruned or
    failed. A cross-validated trial whose folds all finished gets its summary written first."""
    if not is_cross_validated(trial):
        return runs[trial.trial_id]
    folder = trials_root / trial.trial_id
    reports = [runs[run.trial_id] for run in fold_runs(trial) if run.trial_id in runs]
    trained = sum(r.epochs_trained or 0 for r in reports)
    seconds = sum(r.seconds or 0.0 for r in reports)
    stopped = next((r for r in reports if r.status in ("failed", "pruned")), None)
    missing = trial.config.train.folds - len(reports)
    if stopped is None and missing:
        return TrialReport(trial_id=trial.trial_id, settings=trial.settings, status="failed", run_dir=folder,
                           error=f"{missing} of its {trial.config.train.folds} folds did not report",
                           epochs_trained=trained)
    if stopped is not None:
        error = None if stopped.error is None else f"{stopped.run_dir.name}: {stopped.error}"
        return TrialReport(trial_id=trial.trial_id, settings=trial.settings, status=stopped.status, run_dir=folder,
                           error=error, folds=trial.config.train.folds, epochs_trained=trained,
                           lpm_disabled=stopped.lpm_disabled, worker_peak_rss_mb=stopped.worker_peak_rss_mb)
    summaries = []
    for run in fold_runs(trial):
        result = TrainResult.model_validate_json((trials_root / run.trial_id / FINAL_FILE).read_text())
        summaries.append(FoldSummary(fold=run.config.train.fold, run_dir=trials_root / run.trial_id,
                                     best_epoch=result.best_epoch, best_val=result.best_val,
                                     test_best=result.test_best))
    summarize_cross_validation(folder, summaries, class_names, trial.config.train.fold_seed, seconds)
    write_config(folder, trial.config)
    status = "skipped" if all(r.status == "skipped" for r in reports) else "finished"
    report = report_from_cv(trial, folder, status, trained)
    report.lpm_disabled = all(r.lpm_disabled for r in reports)
    peaks = [r.worker_peak_rss_mb for r in reports if r.worker_peak_rss_mb is not None]
    report.worker_peak_rss_mb = max(peaks) if peaks else None
    return report

"""`fpt sweep --from-cache`: many train-side trials from one cache, on dask.distributed.

This module runs a sweep: its trials (fpt's grid or random expansion, or asked of an Optuna study),
which of them an earlier run finished, and the rounds of packs it sends to dask
(pipeline/sweep_packs.py); pipeline/sweep_results.py writes what it found, pipeline/sweep_folds.py
makes cross-validated trials of fold runs.

    <runs_root>/<sweep name>/
        trials/<trial id>/     one run folder per trial (as train-side writes); final_metrics.json
                               marks it finished, error.txt holds a failed trial's error
        results.csv            every trial, sorted by validation AUC, test metrics alongside
        best.yaml              the best trial's settings, ready to paste into pipeline.yaml

Trials that share batch size, seed and data settings are packed (stages/train/packed_training.py):
one dask task trains up to sweep.pack_size of them on one read of each batch. Every trial keeps a
resume state after each epoch (checkpoints/resume.pt, as `fpt train-side` does). When the same
sweep runs again (after Ctrl-C, a kill or a lost worker), finished trials are skipped and
unfinished ones go on from their last finished epoch, packed with trials stopped at the same
epoch; a failed trial is reported, the others go on.
"""

from __future__ import annotations

import errno
import math
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel
from rich.console import Console

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata
from fpt.cache.reader import CacheReader, read_metadata
from fpt.pipeline.cluster import ClusterPlan, dask_client, plan_local, plan_remote
from fpt.pipeline.lpm_guard import lpm_disabled
from fpt.pipeline.optuna_search import (
    STUDY_FILE, TRIAL_ID_ATTRIBUTE, PruningHook, distributions, in_flight, is_optuna_method, open_study, told,
    trial_id_of,
)
from fpt.pipeline.search_space import Trial, apply_settings, build_trials, check_parameters
from fpt.pipeline.sweep_folds import finished_earlier, fold_run, fold_runs, step_offset, trial_report
from fpt.pipeline.sweep_packs import run_packs, split_into_packs
from fpt.pipeline.sweep_results import best_yaml_text, results_table, sort_key, write_results_csv
from fpt.pipeline.task_stop import TasksStopped, still_running_hint
from fpt.pipeline.trial_reports import CV_FILE, TrialReport, report_failed, report_from_final, report_pruned
from fpt.stages.core.devices import wants_gpu
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.files import atomic_write_text, writable_folder
from fpt.stages.core.settings import PipelineConfig, SweepConfig, format_validation_error, read_yaml_file
from fpt.stages.datasets.folds import pooled_samples, stratified_folds
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.runs.report import write_report
from fpt.stages.runs.tracking import mlflow_uri, parent_run
from fpt.stages.train.cache_choice import find_cache, label_table_of
from fpt.stages.train.resume_state import saved_epoch
from fpt.stages.train.trial_results import PRUNED_FILE


class SweepResult(BaseModel):
    sweep_dir: Path
    reports: list[TrialReport]
    best: TrialReport | None
    best_yaml: str
    plan: ClusterPlan
    seconds: float


def sweep_dir(config: PipelineConfig, sweep: SweepConfig) -> Path:
    return (config.train.runs_root / (sweep.name or f"sweep-{config.dataset.name}")).resolve()


def _wants_gpu(device: str, scheduler: str | None) -> bool | None:
    if device == "auto" and scheduler is not None:
        return None  # auto on a cluster: what its workers offer
    return wants_gpu(device)


def run_sweep(config: PipelineConfig, sweep: SweepConfig | None = None, cache_path: Path | None = None,
              scheduler: str | None = None, max_workers: int | None = None, processes: bool = True,
              show_progress: bool = True, console: Console | None = None) -> SweepResult:
    """Run every unfinished trial of the sweep on dask; write results.csv and best.yaml."""

    with lpm_disabled():
        return _run_sweep(config, sweep, cache_path, scheduler, max_workers, processes, show_progress, console)


def _run_sweep(config: PipelineConfig, sweep: SweepConfig | None, cache_path: Path | None, scheduler: str | None,
               max_workers: int | None, processes: bool, show_progress: bool, console: Console | None) -> SweepResult:
    began = time.perf_counter()
    sweep = sweep or config.sweep
    check_parameters(sweep)
    if config.train.fold is not None:
        raise UserError(f"train.fold={config.train.fold} names one fold of a cross-validation; a sweep trains "
                        "all of a trial's folds.",
                        "Leave train.fold out: with train.folds=k each trial trains its k folds and is scored by "
                        "their mean.")
    source = dataset_source(config)
    path = find_cache(config, source, cache_path).resolve()
    table = label_table_of(path, source)
    if config.train.folds > 1:  # refused here, before any trial, when a class has fewer samples than folds
        reader = CacheReader(path, table)
        metadata = reader.metadata
        indices, labels = pooled_samples(reader)
        stratified_folds(indices, labels, config.train.folds, config.train.fold_seed, metadata.class_names)
    else:
        metadata = read_metadata(path, table)
    if console is not None:
        console.print(f"Training from the cache {path} (dataset {metadata.dataset} from {source}).", highlight=False)
    root = sweep_dir(config, sweep)
    if "mlflow" in config.train.loggers:  # one MLflow run for the sweep, its trials as children
        root.mkdir(parents=True, exist_ok=True)
        train = config.train
        parent = parent_run(root, train.mlflow_experiment or config.dataset.name,
                            mlflow_uri(train.mlflow_uri, train.runs_root), root.name)
        config = config.model_copy(update={"train": train.model_copy(update={"mlflow_parent_run": parent})})
    trials_root = writable_folder(root / "trials", "train.runs_root")
    trials_root.mkdir(parents=True, exist_ok=True)
    want_gpu = _wants_gpu(config.train.device, scheduler)
    reports: dict[str, TrialReport] = {}
    if is_optuna_method(sweep.method):
        plan = plan_local(min(sweep.num_trials, sweep.pack_size), bool(want_gpu), max_workers)
        plan = _run_optuna(config, sweep, root, trials_root, path, metadata, scheduler, plan, processes,
                           reports, show_progress)
    else:
        plan = _run_expanded(config, sweep, trials_root, path, metadata, scheduler, want_gpu, max_workers,
                             processes, reports, show_progress)

    ordered = sorted(reports.values(), key=sort_key(sweep.metric))
    best = next((r for r in ordered if r.status in ("finished", "skipped")), None)
    best_yaml = "" if best is None else best_yaml_text(best, sweep.metric, root.name)
    try:
        write_results_csv(root / "results.csv", ordered)
        if best is not None:
            atomic_write_text(root / "best.yaml", best_yaml)
            _draw_pictures(best.run_dir)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        finished = sum(r.status != "failed" for r in ordered)
        raise UserError(
            f"The disk holding the sweep folder {root} is full: the sweep's results table could not be written.",
            f"Its {finished} finished trial(s) are kept under {trials_root}. Free some space and run the same "
            "command again: finished trials are skipped, unfinished ones go on from their last finished epoch, "
            "and the table is written.",
        ) from None
    if console is not None:
        console.print(results_table(ordered, f"Sweep {root.name}: {len(ordered)} trials, by validation {sweep.metric}"))
    return SweepResult(sweep_dir=root, reports=ordered, best=best, best_yaml=best_yaml, plan=plan,
                       seconds=time.perf_counter() - began)


def _draw_pictures(run_dir: Path) -> None:
    """The report pictures of the best trial's run, or of each of its fold runs (the sweep draws no others)."""
    runs = sorted(run_dir.glob("fold-*")) if (run_dir / CV_FILE).is_file() else [run_dir]
    for run in runs:
        if not (run / "training_curves.png").is_file():
            write_report(run)


def _run_expanded(config: PipelineConfig, sweep: SweepConfig, trials_root: Path, cache_path: Path,
                  metadata: CacheMetadata, scheduler: str | None, want_gpu: bool | None, max_workers: int | None,
                  processes: bool, reports: dict[str, TrialReport], show_progress: bool) -> ClusterPlan:
    """fpt's own grid or random search: every trial known up front; finished ones are skipped. The runs of
    all trials (each trial's folds, when cross-validated) are sent at once."""
    trials = build_trials(config, sweep, metadata.cache_key)
    pending = []
    for trial in trials:
        done = finished_earlier(trial, trials_root)
        if done is not None:
            reports[trial.trial_id] = done
        else:
            pending.append(trial)
    runs: dict[str, TrialReport] = {}
    todo = _runs_to_train([run for trial in pending for run in fold_runs(trial)], trials_root, runs, pruned=False)
    plan = plan_local(len(todo) or 1, bool(want_gpu), max_workers)
    if todo:
        try:
            with dask_client(scheduler, plan, processes=processes) as client:
                if scheduler:
                    plan = plan_remote(client, want_gpu)
                start_epochs = {t.trial_id: saved_epoch(trials_root / t.trial_id) or 0 for t in todo}
                packs = split_into_packs(todo, sweep.pack_size, plan.workers, start_epochs)
                run_packs(client, packs, trials_root, cache_path, plan, runs, show_progress)
        except TasksStopped as stopped:
            raise Interrupted(_how_to_go_on(trials, trials_root, scheduler, stopped.still_running)) from None
        except KeyboardInterrupt:  # before the packs were sent, or a second Ctrl-C while they stopped
            raise Interrupted(_how_to_go_on(trials, trials_root, scheduler, None)) from None
    for trial in pending:
        reports[trial.trial_id] = trial_report(trial, runs, trials_root, metadata.class_names)
    return plan


def _runs_to_train(candidates: list[Trial], trials_root: Path, runs: dict[str, TrialReport], pruned: bool) -> list[Trial]:
    """The runs among `candidates` that still train; a run an earlier run of the sweep finished (or, in a
    search with a pruner, pruned before it could tell the study) is reported into `runs` instead."""
    todo = []
    for run in candidates:
        run_dir = trials_root / run.trial_id
        if (run_dir / "final_metrics.json").is_file():
            runs[run.trial_id] = report_from_final(run, run_dir, "skipped")
        elif pruned and (run_dir / PRUNED_FILE).is_file():
            runs[run.trial_id] = report_pruned(run, run_dir)
        else:
            todo.append(run)
    return todo


def _run_optuna(config: PipelineConfig, sweep: SweepConfig, root: Path, trials_root: Path, cache_path: Path,
                metadata: CacheMetadata, scheduler: str | None, plan: ClusterPlan, processes: bool,
                reports: dict[str, TrialReport], show_progress: bool) -> ClusterPlan:
    """A search by an Optuna sampler (pipeline/optuna_search.py): rounds of as many trials as the workers'
    packs hold, asked, trained with a pruning hook each (fold by fold when cross-validated:
    pipeline/sweep_folds.py), and told; the study in the sweep folder goes on where an earlier run of the
    same sweep left it."""
    study = open_study(root, sweep)
    space = distributions(sweep)
    for frozen in told(study):
        trial = _optuna_trial(config, frozen.params, trial_id_of(frozen))
        reports[trial.trial_id] = _told_report(trial, trials_root, frozen.state)
    try:
        with dask_client(scheduler, plan, processes=processes) as client:
            if scheduler:
                plan = plan_remote(client, _wants_gpu(config.train.device, scheduler))
            while True:
                asked = list(in_flight(study))  # the first round goes on with those an earlier run left
                room = sweep.num_trials - len(told(study)) - len(asked)
                capacity = sweep.pack_size * plan.workers
                asked += [study.ask(space) for _ in range(max(0, min(room, capacity - len(asked))))]
                if not asked:
                    break
                for optuna_trial in asked:
                    if isinstance(optuna_trial, optuna.Trial):  # optuna-dashboard shows each trial's folder
                        optuna_trial.set_user_attr(TRIAL_ID_ATTRIBUTE, trial_id_of(optuna_trial))
                trials = [_optuna_trial(config, t.params, trial_id_of(t)) for t in asked]
                # the hook rebuilds the trial on the worker from its storage id (optuna.trial.Trial(study, id))
                storage_ids = {trial.trial_id: t._trial_id for trial, t in zip(trials, asked)}
                runs: dict[str, TrialReport] = {}
                going = trials
                for fold in range(1, max(config.train.folds, 1) + 1):
                    todo = _runs_to_train([fold_run(t, fold) for t in going], trials_root, runs, pruned=True)
                    hooks = {run.trial_id: PruningHook(root, sweep, storage_ids[trial.trial_id], step_offset(run))
                             for trial in going for run in [fold_run(trial, fold)]}
                    if todo:
                        start_epochs = {t.trial_id: saved_epoch(trials_root / t.trial_id) or 0 for t in todo}
                        packs = split_into_packs(todo, sweep.pack_size, plan.workers, start_epochs)
                        label = f"fold {fold} of {config.train.folds}" if config.train.folds > 1 else None
                        run_packs(client, packs, trials_root, cache_path, plan, runs, show_progress, hooks, label)
                    going = [t for t in going if runs[fold_run(t, fold).trial_id].status in ("finished", "skipped")]
                for trial, optuna_trial in zip(trials, asked):
                    reports[trial.trial_id] = trial_report(trial, runs, trials_root, metadata.class_names)
                    _tell(study, optuna_trial.number, reports[trial.trial_id], sweep.metric)
    except (TasksStopped, KeyboardInterrupt) as stopped:
        still = stopped.still_running if isinstance(stopped, TasksStopped) else None
        raise Interrupted(
            f"The study in {root / STUDY_FILE} keeps its {len(told(study))} told trial(s); trials in flight keep their "
            "last finished epoch. Run the same command again: the study goes on from there."
            + still_running_hint(scheduler, still, "trial is trained")) from None
    return plan


def _optuna_trial(config: PipelineConfig, params: dict[str, Any], trial_id: str) -> Trial:
    return Trial(trial_id=trial_id, settings=dict(params), config=apply_settings(config, dict(params)))


def _told_report(trial: Trial, trials_root: Path, state: Any) -> TrialReport:
    """The report of a trial an earlier run of the sweep told the study about."""
    done = finished_earlier(trial, trials_root)
    if done is not None:
        return done
    for run in fold_runs(trial):
        run_dir = trials_root / run.trial_id
        if (run_dir / PRUNED_FILE).is_file():
            pruned = report_pruned(run, run_dir)
            if run is trial:
                return pruned
            return TrialReport(trial_id=trial.trial_id, settings=trial.settings, status="pruned",
                               run_dir=trials_root / trial.trial_id, folds=trial.config.train.folds,
                               epochs_trained=step_offset(run) + (pruned.epochs_trained or 0))
        if (run_dir / "error.txt").is_file():
            return report_failed(trial, trials_root / trial.trial_id, (run_dir / "error.txt").read_text())
    return report_failed(trial, trials_root / trial.trial_id, f"Optuna state {state.name}")


def _tell(study: Any, number: int, report: TrialReport, metric: str) -> None:
    """Tell the study how trial `number` ended: its best epoch's validation metric, pruned, or failed."""
    if report.status == "pruned":
        study.tell(number, state=TrialState.PRUNED)
        return
    value = (report.best_val or {}).get(metric)
    if report.status == "failed" or value is None or math.isnan(value):
        study.tell(number, state=TrialState.FAIL)
        return
    study.tell(number, value)


def _how_to_go_on(trials: list[Trial], trials_root: Path, scheduler: str | None, still_running: int | None) -> str:
    """What an interrupted sweep keeps, run by run (a trial, or a fold of a cross-validated one), and how it
    goes on."""
    runs = [run for trial in trials for run in fold_runs(trial)]
    noun = "fold runs" if len(runs) > len(trials) else "trials"
    finished, going_on = 0, []
    for run in runs:
        run_dir = trials_root / run.trial_id
        if (run_dir / "final_metrics.json").is_file():
            finished += 1
        elif epoch := saved_epoch(run_dir):
            going_on.append(epoch)
    fresh = len(runs) - finished - len(going_on)
    kept = f"The sweep in {trials_root.parent} keeps {finished} of its {len(runs)} {noun} finished"
    if going_on:
        span = f"{min(going_on)}" if min(going_on) == max(going_on) else f"{min(going_on)}-{max(going_on)}"
        kept += f", {len(going_on)} at their last finished epoch ({span})"
    kept += f"; {fresh} have no finished epoch yet." if fresh else "."
    hint = f"{kept} Run the same command again: finished {noun} are skipped and the others go on from there."
    return hint + still_running_hint(scheduler, still_running, "trial is trained")


def load_sweep_file(path: Path) -> SweepConfig:
    """A sweep from its own YAML file: either a top-level `sweep:` section or the fields themselves."""
    from pydantic import ValidationError

    if not path.is_file():
        raise UserError(f"The sweep file {path} does not exist.",
                        "Give the path of a YAML file with the search space (see docs/sweeps.md) to --sweep-file.")
    data = read_yaml_file(path)
    if "sweep" in data and isinstance(data["sweep"], dict):
        data = data["sweep"]
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(error, str(path)) from None

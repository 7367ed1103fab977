"""A sweep's packs on dask: the task that trains one pack on a worker, and the client side that sends
the packs and collects each trial's report.

Trials that share batch size, seed and data settings are packed (stages/train/packed_training.py):
one dask task trains up to sweep.pack_size of them on one read of each batch, with the LPM disabled.
A trial whose folder holds a resume state goes on from it; trials stopped at different epochs see
different batches, so each epoch's trials are a pack of their own.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from fpt.cache.errors import UserError
from fpt.cache.progress import Progress, open_progress
from fpt.pipeline.cluster import ClusterPlan, task_resources, worker_setup
from fpt.pipeline.lpm_guard import lpm_disabled, lpm_forbidden
from fpt.pipeline.search_space import Trial
from fpt.pipeline.task_stop import new_stop_name, stop_requests, stopping_on_interrupt
from fpt.pipeline.trial_reports import TrialReport, report_failed, report_from_final, report_pruned
from fpt.stages.core.errors import StopRequested
from fpt.stages.train.packed_training import EpochHook, pack_key, train_pack
from fpt.stages.train.resume_state import load_resume_state


def run_pack_task(trials: list[Trial], run_dirs: list[Path], cache_path: Path, plan: ClusterPlan,
                  stop_name: str | None = None, hooks: list[EpochHook | None] | None = None) -> list[TrialReport]:
    """A dask task: train these trials as one pack with the LPM disabled; one report each, or none
    when the sweep asked its tasks to stop (pipeline/task_stop.py).

    A trial whose folder holds a resume state goes on from it; any other unfinished folder starts
    over. Trials stopped at different epochs cannot share batches: each epoch's trials are a pack."""
    with stop_requests(stop_name) as should_stop:
        if should_stop():
            return []
        device = worker_setup(plan, trials[0].config.train.device)
        configs = [t.config.model_copy(update={"train": t.config.train.model_copy(update={"device": device})})
                   for t in trials]
        states = [_resume_state(run_dir) for run_dir in run_dirs]
        by_epoch: dict[int, list[int]] = {}
        for index, state in enumerate(states):
            by_epoch.setdefault(0 if state is None else state["epoch"], []).append(index)
        outcomes: dict[int, Any] = {}
        with lpm_disabled():
            guarded = lpm_forbidden()
            for epoch, indices in sorted(by_epoch.items(), reverse=True):
                # Pictures cost about a second per run; the sweep draws them for its best trial only.
                try:
                    found = train_pack([configs[i] for i in indices], cache_path,
                                       run_dirs=[run_dirs[i] for i in indices], isolate_failures=True,
                                       draw_pictures=False, resumable=True,
                                       resume=[states[i] for i in indices] if epoch else None, should_stop=should_stop,
                                       epoch_hooks=[hooks[i] for i in indices] if hooks else None)
                except StopRequested:  # the client that asked is no longer waiting for reports
                    return []
                outcomes.update(zip(indices, found))
    reports = []
    peak = peak_rss_mb()
    for index, (trial, run_dir) in enumerate(zip(trials, run_dirs)):
        outcome = outcomes[index]
        if outcome.error is None and outcome.pruned_at is not None:
            reports.append(report_pruned(trial, run_dir, guarded))
        elif outcome.error is None:
            report = report_from_final(trial, run_dir, "finished", guarded)
            report.resumed_from_epoch = None if states[index] is None else states[index]["epoch"]
            reports.append(report)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(outcome.error)
            reports.append(report_failed(trial, run_dir, outcome.error, guarded))
    for report in reports:
        report.worker_peak_rss_mb = peak
    return reports


def _resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The state an interrupted sweep left in the trial's folder, or None; a folder without a usable
    state is emptied, so the trial starts over."""
    try:
        state: dict[str, Any] | None = load_resume_state(run_dir)
    except UserError:  # none, unreadable, or another version's
        state = None
    if state is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return None
    (run_dir / "error.txt").unlink(missing_ok=True)  # from an earlier failure; the trial is tried again
    return state


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    status = Path("/proc/self/status")
    if status.is_file():  # VmHWM belongs to this process image; ru_maxrss may carry its parent's peak
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def split_into_packs(trials: list[Trial], pack_size: int, workers: int,
                     start_epochs: dict[str, int] | None = None) -> list[list[Trial]]:
    """Group packable trials; split groups so every worker has work and no pack exceeds pack_size.
    start_epochs: the epoch each trial goes on from (default 0); only trials at one epoch can share batches."""
    groups: dict[tuple[str, int], list[Trial]] = {}
    for trial in trials:
        start = (start_epochs or {}).get(trial.trial_id, 0)
        groups.setdefault((pack_key(trial.config), start), []).append(trial)
    packs = []
    share = math.ceil(workers / max(len(groups), 1))  # packs per group so that every worker has one
    for group in groups.values():
        count = max(math.ceil(len(group) / pack_size), min(share, len(group)))
        size = math.ceil(len(group) / count)
        packs.extend(group[i : i + size] for i in range(0, len(group), size))
    return packs


def run_packs(client: Any, packs: list[list[Trial]], trials_root: Path, cache_path: Path, plan: ClusterPlan,
               reports: dict[str, TrialReport], show_progress: bool, hooks: dict[str, EpochHook] | None = None,
               label: str | None = None) -> None:
    resources = task_resources(plan)
    stop_name = new_stop_name()
    futures = {}
    for pack in packs:
        run_dirs = [trials_root / t.trial_id for t in pack]
        pack_hooks = [hooks.get(t.trial_id) for t in pack] if hooks else None
        future = client.submit(run_pack_task, pack, run_dirs, cache_path, plan, stop_name, pack_hooks,
                               resources=resources, pure=False, key=f"fpt-pack-{pack[0].trial_id.replace('/', '-')}-{len(pack)}")
        futures[future] = pack
    total = sum(len(p) for p in packs)
    with open_progress(show_progress, fields=("status",)) as progress:
        what = f"Sweep, {label}" if label else "Sweep"
        task = progress.add_task(f"{what} ({len(packs)} pack(s) on {plan.workers} worker(s))", total=total, status="")
        def stopping() -> None:
            progress.update(task, status="stopping: each pack after its current step")

        with stopping_on_interrupt(client, list(futures), stop_name, stopping):
            _collect(futures, trials_root, reports, progress, task)


def _collect(futures: dict[Any, list[Trial]], trials_root: Path, reports: dict[str, TrialReport], progress: Progress,
             task: Any) -> None:
    """Each pack's reports as it ends; a pack whose task died reports its trials failed."""
    from distributed import as_completed

    failed = 0
    for future in as_completed(list(futures)):
        pack = futures[future]
        try:
            pack_reports = future.result()
        except Exception as error:  # the whole task died (worker lost, out of memory): its trials failed
            message = f"{type(error).__name__}: {error}"
            pack_reports = [report_failed(t, trials_root / t.trial_id, message) for t in pack]
        for report in pack_reports:
            reports[report.trial_id] = report
            failed += report.status == "failed"
        progress.update(task, advance=len(pack), status=f"{failed} failed" if failed else "")

"""A real sweep on dask: LocalCluster with 2 worker processes, resume, failures, no LPM anywhere."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from sweep_support import build_tiny_cache, tiny_config
from typer.testing import CliRunner

from fpt.pipeline.cli import app
from fpt.pipeline.sweep import run_sweep
from fpt.stages.core.settings import SweepConfig

MISSING_WEIGHTS = "lpm.weights=/nonexistent/lpm-weights.safetensors"


def _refuse_timm() -> bool:
    """Runs in each worker before the sweep: any attempt to build a timm model now fails."""
    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("a sweep tried to create a timm model")

    timm.create_model = refuse
    return True


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_sweep_on_two_worker_processes_then_resume_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, LocalCluster

    build_tiny_cache(tmp_path)
    base = tiny_config(tmp_path, [MISSING_WEIGHTS, "train.epochs=1"])
    # reduction 5 does not divide the LPM width 192: those trials must fail, the others finish
    sweep = SweepConfig(name="s", parameters={"train.lr": [0.002, 0.0005], "side.reduction": [8, 5]})

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert all(client.run(_refuse_timm).values())
            result = run_sweep(base, sweep, scheduler=cluster.scheduler_address, show_progress=False)
            worker_pids = set(client.run(lambda: __import__("os").getpid()).values())

    assert len(worker_pids) == 2
    assert result.plan.workers == 2 and result.plan.threads_on("127.0.0.1") == 1
    by_status = {r.trial_id: r.status for r in result.reports}
    assert sorted(by_status.values()) == ["failed", "failed", "finished", "finished"]
    assert all(r.lpm_disabled for r in result.reports)
    failed = [r for r in result.reports if r.status == "failed"]
    assert all(r.settings["side.reduction"] == 5 and "side.reduction 5" in r.error for r in failed)
    assert all((r.run_dir / "error.txt").is_file() for r in failed)
    finished = [r for r in result.reports if r.status == "finished"]
    for report in finished:
        assert report.run_dir.name == report.trial_id
        assert {"config.yaml", "run.json", "metrics.jsonl", "final_metrics.json", "predictions_test_best.csv"} <= {
            p.name for p in report.run_dir.iterdir()}
    # failed trials sort last; the rest by validation AUC, highest first
    assert [r.status for r in result.reports][-2:] == ["failed", "failed"]
    assert finished[0].val_auc >= finished[1].val_auc
    rows = _read_csv(result.sweep_dir / "results.csv")
    assert [row["trial"] for row in rows] == [r.trial_id for r in result.reports]
    assert rows[0]["test_best_auc"] != "" and rows[-1]["error"] != ""
    # pictures are drawn for the best trial only; the others' report.md says how to draw them
    assert (finished[0].run_dir / "training_curves.png").is_file()
    assert not list(finished[1].run_dir.glob("*.png"))
    assert "fpt report" in (finished[1].run_dir / "report.md").read_text()
    best_text = (result.sweep_dir / "best.yaml").read_text()
    best = yaml.safe_load(best_text)
    assert best == {"side": {"reduction": 8}, "train": {"lr": finished[0].settings["train.lr"]}}
    # the workers ran one thread each, so best.yaml says how to repeat the trial bit for bit; do it
    (repeat,) = [line for line in best_text.splitlines() if "repeat it" in line]
    command = shlex.split(repeat.split("bit for bit: ", 1)[1])
    assert command[:3] == ["OMP_NUM_THREADS=1", "fpt", "train-side"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        repeated = CliRunner().invoke(app, command[2:] + ["--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert repeated.exit_code == 0, repeated.output
    (again_dir,) = [d for d in finished[0].run_dir.parents[2].iterdir() if d.name.startswith("demo-")]
    for which in ("best", "last"):
        original = load_file(str(finished[0].run_dir / "checkpoints" / f"{which}.safetensors"))
        repeated_weights = load_file(str(again_dir / "checkpoints" / f"{which}.safetensors"))
        assert original.keys() == repeated_weights.keys()
        assert all(torch.equal(original[k], repeated_weights[k]) for k in original)
    assert (again_dir / "final_metrics.json").read_text() != ""

    # Second run, in-process (processes=False) with timm disabled here too: finished trials are
    # skipped, an interrupted one (no final_metrics.json) and a new grid point are trained.
    def refuse(*args, **kwargs):
        raise AssertionError("a sweep tried to create a timm model")

    import timm

    monkeypatch.setattr(timm, "create_model", refuse)
    interrupted = finished[1].run_dir
    (interrupted / "final_metrics.json").unlink()
    wider = sweep.model_copy(update={"parameters": {"train.lr": [0.002, 0.0005, 0.001], "side.reduction": [8, 5]}})
    again = run_sweep(base, wider, processes=False, max_workers=1, show_progress=False)
    status = {r.trial_id: r.status for r in again.reports}
    assert status[finished[0].trial_id] == "skipped"
    assert status[finished[1].trial_id] == "finished"
    assert sorted(status.values()) == ["failed", "failed", "failed", "finished", "finished", "skipped"]
    assert len(_read_csv(again.sweep_dir / "results.csv")) == 6
    assert (interrupted / "final_metrics.json").is_file()


def _environment() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_local_cluster_workers_keep_glibcs_adaptive_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """dask's nanny would set MALLOC_TRIM_THRESHOLD_ in its workers, which makes torch fault its
    large tensors in afresh every step; fpt's LocalCluster keeps the rest of dask's environment."""
    from fpt.pipeline.cluster import dask_client, plan_local, worker_environment

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask_client(None, plan_local(1, False, 1)) as client:
        environ = client.submit(_environment, pure=False).result()
    assert "MALLOC_TRIM_THRESHOLD_" not in environ
    assert worker_environment() and all(environ.get(k) == str(v) for k, v in worker_environment().items())


LEAKS_A_SEMAPHORE = """
import multiprocessing, os, sys
sys.path.insert(0, {repo!r})
if {quiet}:
    from fpt.pipeline.cluster import quiet_resource_tracker
    quiet_resource_tracker()
held = multiprocessing.get_context("spawn").Semaphore()
os._exit(0)  # as a worker killed on Ctrl-C: its semaphore is left to the resource tracker
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_a_local_cluster_stopped_by_ctrl_c_leaves_no_resource_tracker_warning(quiet: bool,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes killed by Ctrl-C leave semaphores that multiprocessing's resource tracker
    removes; without fpt's setting (made by dask_client) its warning would follow the interruption
    message."""
    import os
    import subprocess
    import sys

    from sweep_support import REPO

    from fpt.pipeline.cluster import RESOURCE_TRACKER_WARNING, quiet_resource_tracker

    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning")  # a user's own filter is kept
    script = LEAKS_A_SEMAPHORE.format(repo=str(REPO), quiet=quiet)
    # the tracker inherits stderr, so this returns once it has exited and said what it had to
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert ("leaked semaphore" in done.stderr) is not quiet
    quiet_resource_tracker()
    quiet_resource_tracker()  # once is enough
    assert os.environ["PYTHONWARNINGS"] == "default::DeprecationWarning," + RESOURCE_TRACKER_WARNING


def test_ctrl_c_stops_the_packs_running_on_a_cluster_and_waits_for_them(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a cluster the user started, tasks outlive the client: Ctrl-C asks them to stop, a started
    pack stops after its current step and a queued one at once, so a re-run cannot race them."""
    import time

    from distributed import Client, LocalCluster

    import fpt.pipeline.sweep_packs
    from fpt.stages.core.errors import Interrupted
    from fpt.stages.train.resume_state import resume_path, saved_epoch

    build_tiny_cache(tmp_path)
    base = tiny_config(tmp_path, ["train.epochs=1000"])  # far longer than the test waits
    # two packs of one on one worker thread: one trains, the other waits for the worker
    sweep = SweepConfig(name="s", parameters={"train.lr": [0.002, 0.0005]}, pack_size=1)
    trials_root = tmp_path / "runs" / "s" / "trials"

    def ctrl_c_after_two_epochs(*args, **kwargs):
        deadline = time.monotonic() + 120
        while not any((saved_epoch(d) or 0) >= 2 for d in trials_root.glob("*")):
            assert time.monotonic() < deadline, "no pack trained two epochs in two minutes"
            time.sleep(0.1)
        raise KeyboardInterrupt

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            monkeypatch.setattr(fpt.pipeline.sweep_packs, "_collect", ctrl_c_after_two_epochs)
            with pytest.raises(Interrupted) as stopped:
                run_sweep(base, sweep, scheduler=cluster.scheduler_address, show_progress=False)
            assert not any(client.processing().values())  # the worker is idle: nothing trains any more
            assert len(client.run(lambda: 1)) == 1  # and alive: a stopped pack does not take its worker down
            hint = stopped.value.hint
    assert "keeps 0 of its 2 trials finished, 1 at their last finished epoch" in hint
    assert "may still be running" not in hint  # every task ended before the command did
    trained = [d for d in trials_root.iterdir() if resume_path(d).is_file()]
    assert len(trained) == 1 and not (trained[0] / "final_metrics.json").exists()
    assert not any((d / "metrics.jsonl").exists() for d in trials_root.iterdir() if d not in trained)  # it never trained
    epochs = saved_epoch(trained[0])
    time.sleep(2)
    assert saved_epoch(trained[0]) == epochs  # no epoch was written after the command ended


def test_a_pack_whose_worker_is_killed_goes_on_from_its_last_epoch_on_the_retry(tmp_path: Path) -> None:
    """dask runs a lost worker's task again; the retry finds the trial's resume state and goes on
    from it instead of training its finished epochs again."""
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    from fpt.stages.train.resume_state import saved_epoch

    build_tiny_cache(tmp_path)
    base = tiny_config(tmp_path, ["train.epochs=40"])
    sweep = SweepConfig(name="s", parameters={"train.lr": [0.002, 0.0005]})  # two packs of one, one per worker
    trials_root = tmp_path / "runs" / "s" / "trials"
    killed: dict[str, int] = {}

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            def kill_a_worker_mid_trial() -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    at = {d.name: saved_epoch(d) or 0 for d in trials_root.glob("*")}
                    name = next((n for n, epoch in at.items() if epoch >= 3), None)
                    if name is not None:
                        busy = {w: keys for w, keys in client.processing().items() if keys}
                        pids = client.run(os.getpid, workers=list(busy))
                        for worker, keys in busy.items():
                            if any(name in str(key) for key in keys):  # the task key names its first trial
                                killed[name] = at[name]
                                os.kill(pids[worker], signal.SIGKILL)
                                return
                    time.sleep(0.05)

            killer = threading.Thread(target=kill_a_worker_mid_trial)
            killer.start()
            result = run_sweep(base, sweep, scheduler=cluster.scheduler_address, show_progress=False)
            killer.join()

    assert len(killed) == 1, "no worker was killed mid-trial"
    (name, epoch_at_kill), = killed.items()
    by_id = {r.trial_id: r for r in result.reports}
    assert all(r.status == "finished" for r in result.reports)
    # the retry went on from an epoch at least as late as the one saved when the worker died
    assert by_id[name].resumed_from_epoch is not None and by_id[name].resumed_from_epoch >= epoch_at_kill
    epochs = [json.loads(line)["epoch"] for line in (trials_root / name / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))  # every epoch once: none repeated, none lost

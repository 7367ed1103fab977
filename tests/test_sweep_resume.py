"""What a stopped sweep keeps: run again after an interruption, it goes on with each unfinished
trial from its last finished epoch and ends exactly as the same sweep run without interruption;
a full disk at its results table is a message, and loses nothing."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sweep_support import build_tiny_cache, tiny_config

import fpt.pipeline.sweep
import fpt.pipeline.sweep_results
import fpt.stages.train.pack_resume
from fpt.cache.errors import UserError
from fpt.cache.reader import read_metadata
from fpt.pipeline.cluster import ClusterPlan
from fpt.pipeline.search_space import build_trials
from fpt.pipeline.sweep import run_sweep, sweep_dir
from fpt.pipeline.sweep_packs import run_pack_task, split_into_packs
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.settings import SweepConfig
from fpt.stages.train.resume_state import resume_path, saved_epoch

# two learning rates x two lengths: the 2-epoch trials are at their last epoch when the sweep stops
PARAMETERS = {"train.lr": [0.002, 0.0005], "train.epochs": [2, 3]}


def _epochs(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _final(run_dir: Path) -> dict:
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {k: final[k] for k in ("best_epoch", "best_val", "test_best", "test_last")}


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_an_interrupted_sweep_goes_on_from_each_trials_last_epoch(tmp_path: Path, torch_threads,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    cache = build_tiny_cache(tmp_path)
    base = tiny_config(tmp_path)
    full = run_sweep(base, SweepConfig(name="full", parameters=PARAMETERS), processes=False, max_workers=1,
                     show_progress=False)
    assert all(r.status == "finished" and r.resumed_from_epoch is None for r in full.reports)
    assert not any(resume_path(r.run_dir).exists() for r in full.reports)  # finished trials keep none

    # The same sweep, its one pack stopped (a Ctrl-C, or the worker killed) just after every
    # trial's second-epoch state is written.
    cut = SweepConfig(name="cut", parameters=PARAMETERS)
    trials = build_trials(base, cut, read_metadata(cache).cache_key)
    trials_root = sweep_dir(base, cut) / "trials"
    run_dirs = [trials_root / t.trial_id for t in trials]
    saved: list[int] = []
    original = fpt.stages.train.pack_resume.PackResume.save

    def save_then_stop(self, trial, epoch):
        original(self, trial, epoch)
        saved.append(epoch)
        if saved.count(2) == len(trials):
            raise KeyboardInterrupt

    monkeypatch.setattr(fpt.stages.train.pack_resume.PackResume, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_pack_task(trials, run_dirs, cache, ClusterPlan(workers=1, torch_threads=1, use_gpu=False))
    monkeypatch.undo()
    assert saved == [1] * 4 + [2] * 4
    assert all(saved_epoch(d) == 2 and len(_epochs(d)) == 2 and not (d / "final_metrics.json").exists()
               for d in run_dirs)

    # One trial's state is unreadable (a disk error): it starts over. Another had failed once: its
    # error is cleared when it goes on.
    broken, failed_once = run_dirs[0], run_dirs[1]
    resume_path(broken).write_bytes(b"not a torch file")
    (failed_once / "error.txt").write_text("RuntimeError: out of memory")

    # Ctrl-C as the sweep starts again: the message counts what is kept, and nothing is lost
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fpt.pipeline.sweep, "run_packs", interrupted)
    with pytest.raises(Interrupted) as stopped:
        run_sweep(base, cut, processes=False, max_workers=1, show_progress=False)
    monkeypatch.undo()
    assert "keeps 0 of its 4 trials finished, 3 at their last finished epoch (2); 1 have no finished epoch" \
        in stopped.value.hint and "Run the same command again" in stopped.value.hint
    assert all(saved_epoch(d) == 2 for d in run_dirs[1:])

    again = run_sweep(base, cut, processes=False, max_workers=1, show_progress=False)
    by_id = {r.trial_id: r for r in again.reports}
    assert all(r.status == "finished" for r in again.reports)
    assert by_id[broken.name].resumed_from_epoch is None
    assert all(by_id[d.name].resumed_from_epoch == 2 for d in run_dirs[1:])
    assert not (failed_once / "error.txt").exists()
    assert not any(resume_path(d).exists() for d in run_dirs)
    with open(again.sweep_dir / "results.csv") as handle:
        table = {row["trial"]: row for row in csv.DictReader(handle)}
    assert table[broken.name]["resumed_from_epoch"] == "" and all(
        table[d.name]["resumed_from_epoch"] == "2" for d in run_dirs[1:])
    # The trial that started over trained all its epochs again. Alone in its pack it ran on the
    # worker's two threads, so it agrees with the packed original to float rounding only
    # (docs/sweeps.md, "Packed trials"); the trials that went on end exactly as they did there.
    reference = {r.trial_id: r.run_dir for r in full.reports}
    assert [row["epoch"] for row in _epochs(broken)] == [row["epoch"] for row in _epochs(reference[broken.name])]
    for run_dir in run_dirs[1:]:
        done = reference[run_dir.name]
        assert _epochs(run_dir) == _epochs(done)
        assert _final(run_dir) == _final(done)
        for which in ("best", "last"):
            assert _same_weights(run_dir / "checkpoints" / f"{which}.safetensors",
                                 done / "checkpoints" / f"{which}.safetensors")
        assert (run_dir / "predictions_test_best.csv").read_text() == (done / "predictions_test_best.csv").read_text()


def test_trials_stopped_at_different_epochs_are_not_packed_together(tmp_path: Path) -> None:
    base = tiny_config(tmp_path)
    trials = build_trials(base, SweepConfig(parameters={"train.lr": [1e-3, 2e-3, 3e-3, 4e-3]}), "k")
    starts = {trials[0].trial_id: 3, trials[1].trial_id: 3}
    packs = split_into_packs(trials, pack_size=16, workers=1, start_epochs=starts)
    assert sorted(sorted(t.trial_id for t in pack) for pack in packs) == sorted(
        [sorted(t.trial_id for t in trials[:2]), sorted(t.trial_id for t in trials[2:])])


def test_a_full_disk_at_the_results_table_keeps_the_trials_and_the_last_table(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    build_tiny_cache(tmp_path)
    base = tiny_config(tmp_path, ["train.epochs=1"])
    sweep = SweepConfig(name="s", parameters={"train.lr": [0.002, 0.0005]})
    first = run_sweep(base, sweep, processes=False, max_workers=1, show_progress=False)
    table = (first.sweep_dir / "results.csv").read_text()

    real_writer = fpt.pipeline.sweep_results.csv.writer

    class FillsTheDisk:
        """Writes the header, then the disk is full."""

        def __init__(self, handle) -> None:
            self.inner = real_writer(handle)

        def writerow(self, row) -> None:
            if row[0] != "rank":
                raise OSError(errno.ENOSPC, "No space left on device")
            self.inner.writerow(row)

    monkeypatch.setattr(fpt.pipeline.sweep_results.csv, "writer", FillsTheDisk)
    with pytest.raises(UserError) as stopped:
        run_sweep(base, sweep, processes=False, max_workers=1, show_progress=False)
    message = stopped.value.paragraph()
    assert "is full" in message and "2 finished trial(s) are kept" in message and "run the same command again" in message
    assert (first.sweep_dir / "results.csv").read_text() == table  # the last complete table stays
    assert not (first.sweep_dir / "results.csv.tmp").exists()
    assert all((r.run_dir / "final_metrics.json").is_file() for r in first.reports)

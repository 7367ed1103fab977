"""Optuna searches on packed trials: TPE with a pruner stops poor trials mid-pack while the others go on,
and the study in the sweep folder goes on where a stopped sweep left it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep_support import build_tiny_cache, tiny_config

import fpt.pipeline.sweep
import fpt.stages.train.pack_resume
from fpt.cache.errors import UserError
from fpt.pipeline.cluster import ClusterPlan
from fpt.pipeline.optuna_search import STUDY_FILE, STUDY_NAME, open_study, storage
from fpt.pipeline.search_space import Trial, apply_settings
from fpt.pipeline.sweep import run_sweep, sweep_dir
from fpt.pipeline.sweep_packs import run_pack_task
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.settings import SweepConfig
from fpt.stages.train.resume_state import saved_epoch

EPOCHS = 4


def tpe_sweep(name: str, num_trials: int) -> SweepConfig:
    # learning rates from far too small to about right: the small ones stay near chance and get pruned
    return SweepConfig(name=name, method="tpe", num_trials=num_trials, pack_size=2, seed=3, pruner="median",
                       pruner_options={"n_startup_trials": 2, "n_warmup_steps": 1},
                       sampler_options={"n_startup_trials": 3},
                       parameters={"train.lr": {"low": 1e-6, "high": 3e-3, "log": True}})


def epochs_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tpe_with_a_pruner_stops_poor_trials_and_the_rest_train_on(tmp_path: Path, torch_threads) -> None:
    torch_threads(1)
    build_tiny_cache(tmp_path)
    config = tiny_config(tmp_path, [f"train.epochs={EPOCHS}"])
    result = run_sweep(config, tpe_sweep("tpe", 8), processes=False, max_workers=1, show_progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage(result.sweep_dir))
    states = [t.state for t in study.trials]
    assert len(states) == 8 and TrialState.RUNNING not in states
    pruned = [r for r in result.reports if r.status == "pruned"]
    finished = [r for r in result.reports if r.status == "finished"]
    assert pruned and finished and len(pruned) == states.count(TrialState.PRUNED)
    for report in pruned:  # its model stopped stepping: its epochs end where the pruner stopped it
        assert epochs_of(report.run_dir) == list(range(1, report.epochs_trained + 1))
        assert report.epochs_trained < EPOCHS and (report.run_dir / "pruned.json").is_file()
        assert not (report.run_dir / "final_metrics.json").exists() and saved_epoch(report.run_dir) is None
        assert "pruned after epoch" in (report.run_dir / "train.log").read_text()
    for report in finished:
        assert epochs_of(report.run_dir) == list(range(1, EPOCHS + 1))
    # each trial's reported values are its metrics.jsonl's validation AUCs
    for trial in study.trials:
        run_dir = result.sweep_dir / "trials" / trial.user_attrs["fpt_trial_id"]
        aucs = {json.loads(line)["epoch"]: json.loads(line)["val"]["auc"]
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
        assert all(aucs[step] == pytest.approx(value) for step, value in trial.intermediate_values.items())
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(max(aucs.values()))
    best = result.best
    assert best is not None and best.status == "finished"
    assert best.val_auc == max(r.val_auc for r in finished)
    with open(result.sweep_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows][: len(finished)] == ["finished"] * len(finished)
    assert {row["trial"]: int(row["epochs_trained"]) for row in rows if row["status"] == "pruned"} == \
        {r.trial_id: r.epochs_trained for r in pruned}


def test_a_stopped_search_goes_on_with_the_same_study(tmp_path: Path, torch_threads,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    cache = build_tiny_cache(tmp_path)
    config = tiny_config(tmp_path, [f"train.epochs={EPOCHS}"])
    sweep = tpe_sweep("again", 5)
    root = sweep_dir(config, sweep)

    # A first run told two trials, then stopped while a third trained: its second epoch was its last saved.
    calls = {"count": 0}
    original_packs = fpt.pipeline.sweep.run_packs

    def two_rounds_only(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 1:
            raise KeyboardInterrupt
        return original_packs(*args, **kwargs)

    monkeypatch.setattr(fpt.pipeline.sweep, "run_packs", two_rounds_only)
    with pytest.raises(Interrupted) as stopped:
        run_sweep(config, sweep.model_copy(update={"pack_size": 2}), processes=False, max_workers=1,
                  show_progress=False)
    monkeypatch.undo()
    assert "Run the same command again" in stopped.value.hint
    study = open_study(root, sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING] * 2
    first_two = {t.number: (root / "trials" / f"trial-{t.number:03d}" / "metrics.jsonl").read_text()
                 for t in study.trials[:2]}
    # trial 2 trains to the end of its second epoch, then is stopped (a kill)
    in_flight = study.trials[2]
    run_dir = root / "trials" / f"trial-{in_flight.number:03d}"
    trial = Trial(trial_id=run_dir.name, settings=in_flight.params, config=apply_settings(config, in_flight.params))
    saved: list[int] = []
    original_save = fpt.stages.train.pack_resume.PackResume.save

    def save_then_stop(self, packed, epoch):
        original_save(self, packed, epoch)
        saved.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fpt.stages.train.pack_resume.PackResume, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_pack_task([trial], [run_dir], cache, ClusterPlan(workers=1, torch_threads=1, use_gpu=False))
    monkeypatch.undo()
    assert saved_epoch(run_dir) == 2

    again = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage(root))
    assert len(study.trials) == 5 and all(t.state != TrialState.RUNNING for t in study.trials)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]
    by_id = {r.trial_id: r for r in again.reports}
    assert all(by_id[f"trial-{n:03d}"].status == "skipped" for n in (0, 1))
    for number, text in first_two.items():  # finished trials were not trained again
        assert (root / "trials" / f"trial-{number:03d}" / "metrics.jsonl").read_text() == text
    resumed = by_id[run_dir.name]
    if resumed.status == "finished":
        assert resumed.resumed_from_epoch == 2
    assert epochs_of(run_dir)[:2] == [1, 2] and len(set(epochs_of(run_dir))) == len(epochs_of(run_dir))
    assert (root / STUDY_FILE).is_file()


def test_a_study_is_continued_only_with_its_own_metric(tmp_path: Path) -> None:
    sweep = tpe_sweep("metric", 2)
    open_study(tmp_path, sweep)
    with pytest.raises(UserError, match="sweep.metric=auc"):
        open_study(tmp_path, sweep.model_copy(update={"metric": "kappa"}))
    assert open_study(tmp_path / "loss", sweep.model_copy(update={"metric": "loss"})).direction.name == "MINIMIZE"


def test_an_unknown_sampler_is_named_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tpe"):
        open_study(tmp_path, tpe_sweep("x", 2).model_copy(update={"method": "bayes"}))

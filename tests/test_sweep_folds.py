"""Cross-validated sweeps (train.folds = k > 1): each trial trains its k folds, fold i of every trial in one
pack, and is ranked by the mean of its folds' best validation scores; its test metrics are the fold
ensemble's. An Optuna search trains fold by fold, and a trial pruned in a fold trains no later fold."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sklearn.metrics import roc_auc_score
from sweep_support import build_tiny_cache, tiny_config
from tiny import LARGER

import fpt.pipeline.sweep_packs
from fpt.cache.errors import UserError
from fpt.pipeline.optuna_search import STUDY_NAME, storage
from fpt.pipeline.sweep import run_sweep
from fpt.stages.core.settings import SweepConfig
from fpt.stages.extract.run import run_extract

FOLDS = 2
LRS = [1e-4, 3e-3]


def probabilities(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample ids, labels, probabilities) of a predictions CSV."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [name for name in rows[0] if name.startswith("p_")]
    return ([r["sample_id"] for r in rows], np.array([int(r["label"]) for r in rows]),
            np.array([[float(r[c]) for c in columns] for r in rows]))


def best_val(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "final_metrics.json").read_text())["best_val"]


def val_aucs(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {json.loads(line)["epoch"]: json.loads(line)["val"]["auc"] for line in lines}


def recording_packs(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, float]]]:
    """The (fold, lr) of each trial of each pack the sweep trains (its workers are threads of this process)."""
    packs: list[list[tuple[int, float]]] = []
    train_pack = fpt.pipeline.sweep_packs.train_pack

    def recorded(configs, *args, **kwargs):
        packs.append([(c.train.fold, c.train.lr) for c in configs])
        return train_pack(configs, *args, **kwargs)

    monkeypatch.setattr(fpt.pipeline.sweep_packs, "train_pack", recorded)
    return packs


def test_a_cross_validated_grid_packs_each_fold_of_all_trials_and_ranks_by_the_fold_mean(
        tmp_path: Path, torch_threads, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    build_tiny_cache(tmp_path)
    config = tiny_config(tmp_path, [f"train.folds={FOLDS}", "train.loggers=[]"])
    sweep = SweepConfig(name="cv", method="grid", pack_size=4, parameters={"train.lr": LRS})
    packs = recording_packs(monkeypatch)
    result = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)

    # one pack per fold, each holding that fold of both trials
    assert sorted(sorted(pack) for pack in packs) == [[(fold, lr) for lr in LRS] for fold in range(1, FOLDS + 1)]
    assert [r.status for r in result.reports] == ["finished", "finished"]
    for report in result.reports:
        folder = report.run_dir
        assert folder == result.sweep_dir / "trials" / report.trial_id
        fold_dirs = [folder / f"fold-{fold}" for fold in range(1, FOLDS + 1)]
        for fold, run_dir in enumerate(fold_dirs, 1):
            run = json.loads((run_dir / "run.json").read_text())
            assert run["fold"] == {"fold": fold, "folds": FOLDS, "seed": 0}
            assert run["lr"] == report.settings["train.lr"]
        # ranked by the mean (and spread) of its folds' best validation scores
        aucs = [best_val(run_dir)["auc"] for run_dir in fold_dirs]
        assert report.val_auc == pytest.approx(np.mean(aucs))
        assert report.val_std["auc"] == pytest.approx(np.std(aucs, ddof=1))
        assert report.folds == FOLDS and report.epochs_trained == FOLDS * config.train.epochs
        # its test metrics: the fold ensemble's, the mean of the folds' best models' test probabilities
        ids, labels, first = probabilities(fold_dirs[0] / "predictions_test_best.csv")
        mean = np.mean([first] + [probabilities(d / "predictions_test_best.csv")[2] for d in fold_dirs[1:]], axis=0)
        assert report.test_best["auc"] == pytest.approx(roc_auc_score(labels, mean, multi_class="ovr"), abs=1e-5)
        # the trial's folder repeats the whole cross-validation
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert saved["train"]["folds"] == FOLDS and saved["train"]["fold"] is None
        assert saved["train"]["lr"] == report.settings["train.lr"]
    best = result.reports[0]
    assert best.val_auc == max(r.val_auc for r in result.reports)
    assert f"mean ± std of its {FOLDS} cross-validation folds" in result.best_yaml
    assert f"--config {best.run_dir / 'config.yaml'}" in result.best_yaml
    assert (best.run_dir / "fold-1" / "training_curves.png").is_file()  # the best trial's pictures
    with open(result.sweep_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["val_auc"]) for row in rows] == pytest.approx([r.val_auc for r in result.reports], abs=1e-6)
    assert [int(row["folds"]) for row in rows] == [FOLDS, FOLDS]

    # the same sweep again trains nothing: every trial's folds finished
    packs.clear()
    again = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)
    assert packs == [] and [r.status for r in again.reports] == ["skipped", "skipped"]
    assert [r.val_auc for r in again.reports] == [r.val_auc for r in result.reports]


def test_a_cross_validated_sweep_goes_on_from_its_finished_folds(tmp_path: Path, torch_threads,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    build_tiny_cache(tmp_path)
    config = tiny_config(tmp_path, [f"train.folds={FOLDS}", "train.loggers=[]"])
    sweep = SweepConfig(name="cv", method="grid", pack_size=4, parameters={"train.lr": LRS})
    first = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)
    # as if it had stopped after fold 1: fold 2 of one trial and the summaries are gone
    lost = first.reports[1].run_dir
    shutil.rmtree(lost / "fold-2")
    (lost / "cv.json").unlink()
    (first.reports[0].run_dir / "cv.json").unlink()
    packs = recording_packs(monkeypatch)
    again = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)
    assert packs == [[(2, first.reports[1].settings["train.lr"])]]  # only the missing fold trains
    by_id = {r.trial_id: r for r in again.reports}
    assert by_id[first.reports[0].trial_id].status == "skipped"
    assert by_id[lost.name].status == "finished" and (lost / "cv.json").is_file()
    assert by_id[first.reports[0].trial_id].val_auc == pytest.approx(first.reports[0].val_auc)


def test_an_optuna_search_prunes_folds_and_tells_the_fold_mean(tmp_path: Path, torch_threads) -> None:
    torch_threads(1)
    epochs = 3
    # the larger tiny demo: 36 images of train + val, so that each fold trains on 18
    run_extract(tiny_config(tmp_path, LARGER), show_progress=False)
    config = tiny_config(tmp_path, [*LARGER, f"train.folds={FOLDS}", f"train.epochs={epochs}", "train.loggers=[]"])
    sweep = SweepConfig(name="tpe-cv", method="tpe", num_trials=8, pack_size=2, seed=3, pruner="median",
                        pruner_options={"n_startup_trials": 2, "n_warmup_steps": 1},
                        sampler_options={"n_startup_trials": 3},
                        parameters={"train.lr": {"low": 1e-6, "high": 3e-3, "log": True}})
    result = run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage(result.sweep_dir))
    assert len(study.trials) == 8 and all(t.state != TrialState.RUNNING for t in study.trials)
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    for trial in study.trials:
        folder = result.sweep_dir / "trials" / trial.user_attrs["fpt_trial_id"]
        # each fold's epochs are the trial's steps (fold - 1) * epochs + epoch
        reported = {}
        for fold in range(1, FOLDS + 1):
            if (folder / f"fold-{fold}" / "metrics.jsonl").is_file():
                reported.update({(fold - 1) * epochs + e: auc for e, auc in val_aucs(folder / f"fold-{fold}").items()})
        assert all(reported[step] == pytest.approx(value) for step, value in trial.intermediate_values.items())
        if trial.state == TrialState.COMPLETE:
            means = np.mean([max(val_aucs(folder / f"fold-{fold}").values()) for fold in range(1, FOLDS + 1)])
            assert trial.value == pytest.approx(means)
        else:  # pruned in some fold: that fold stopped stepping, and no later fold trained
            last = max(trial.intermediate_values)
            fold = (last - 1) // epochs + 1
            assert max(val_aucs(folder / f"fold-{fold}")) == last - (fold - 1) * epochs
            assert (folder / f"fold-{fold}" / "pruned.json").is_file()
            assert not (folder / f"fold-{fold}" / "final_metrics.json").exists()
            assert not any((folder / f"fold-{later}").exists() for later in range(fold + 1, FOLDS + 1))
            assert not (folder / "cv.json").exists()
    pruned = [r for r in result.reports if r.status == "pruned"]
    assert pruned and all(r.epochs_trained == max(t.intermediate_values) for r in pruned
                          for t in study.trials if t.user_attrs["fpt_trial_id"] == r.trial_id)


@pytest.mark.parametrize("parameter", ["train.folds", "train.fold"])
def test_the_folds_are_set_for_a_whole_sweep_not_searched(tmp_path: Path, parameter: str) -> None:
    config = tiny_config(tmp_path)
    sweep = SweepConfig(name="s", method="grid", parameters={parameter: [2, 3]})
    with pytest.raises(UserError, match="cannot be searched"):
        run_sweep(config, sweep, processes=False, max_workers=1, show_progress=False)

"""Search-space expansion, trial naming and cluster sizing: no training, milliseconds each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sweep_support import tiny_config

from fpt.cache.errors import UserError
from fpt.pipeline.search_space import build_trials, expand_settings, trial_id
from fpt.stages.core.settings import PipelineConfig, SweepConfig, TrainConfig


def test_grid_is_every_combination_in_a_fixed_order() -> None:
    sweep = SweepConfig(parameters={"train.lr": [1e-3, 1e-4], "side.num_prompts": [4, 8, 16]})
    settings = expand_settings(sweep)
    assert len(settings) == 6
    assert {(s["train.lr"], s["side.num_prompts"]) for s in settings} == {
        (lr, m) for lr in (1e-3, 1e-4) for m in (4, 8, 16)
    }
    assert settings == expand_settings(sweep)


def test_random_search_is_seeded_and_stays_in_its_ranges() -> None:
    sweep = SweepConfig.model_validate({
        "method": "random", "num_trials": 20, "seed": 3,
        "parameters": {
            "train.lr": {"low": 1e-5, "high": 1e-2, "log": True},
            "train.epochs": {"low": 1, "high": 4, "integer": True},
            "train.batch_size": [4, 8],
        },
    })
    first = expand_settings(sweep)
    assert first == expand_settings(sweep)
    assert first != expand_settings(sweep.model_copy(update={"seed": 4}))
    assert len(first) == 20
    for s in first:
        assert 1e-5 <= s["train.lr"] <= 1e-2
        assert s["train.epochs"] in (1, 2, 3, 4) and isinstance(s["train.epochs"], int)
        assert s["train.batch_size"] in (4, 8)
    # log-uniform: about as many draws below the geometric middle (~3e-4) as above it
    below = sum(s["train.lr"] < math.sqrt(1e-5 * 1e-2) for s in first)
    assert 4 <= below <= 16


def test_trial_names_are_stable_hashes_of_the_settings(tmp_path: Path) -> None:
    base = tiny_config(tmp_path)
    sweep = SweepConfig(parameters={"train.lr": [1e-3, 2e-3], "train.seed": [0, 1]})
    trials = build_trials(base, sweep, "cachekey")
    names = [t.trial_id for t in trials]
    assert len(set(names)) == 4 and all(len(n) == 12 for n in names)
    assert names == [t.trial_id for t in build_trials(base, sweep, "cachekey")]
    # where runs are written does not change a trial's identity; the cache does
    moved = tiny_config(tmp_path / "elsewhere")
    assert names == [t.trial_id for t in build_trials(moved, sweep, "cachekey")]
    assert names != [t.trial_id for t in build_trials(base, sweep, "otherkey")]
    assert trials[0].config.train.lr == trials[0].settings["train.lr"]
    assert trial_id(trials[0].config, "cachekey") == trials[0].trial_id


class NewerTrainConfig(TrainConfig):
    """The train settings of a newer fpt, with one more setting whose default keeps the old behaviour."""

    later_setting: int = 0


def with_newer_train(config: PipelineConfig, **changes: object) -> PipelineConfig:
    return config.model_copy(update={"train": NewerTrainConfig(**config.train.model_dump(), **changes)})


def test_a_setting_added_at_its_default_keeps_the_trial_names(tmp_path: Path) -> None:
    """Re-running an existing sweep with a newer fpt finds its trials under the same names (else it would
    train every trial again); the new setting set to another value is another trial."""
    trials = build_trials(tiny_config(tmp_path), SweepConfig(parameters={"train.lr": [1e-3, 2e-3]}), "cachekey")
    for trial in trials:
        assert trial_id(with_newer_train(trial.config), "cachekey") == trial.trial_id
    assert trial_id(with_newer_train(trials[0].config, later_setting=1), "cachekey") != trials[0].trial_id


def test_settings_equal_to_the_base_are_run_once(tmp_path: Path) -> None:
    base = tiny_config(tmp_path)  # train.epochs=2
    trials = build_trials(base, SweepConfig(parameters={"train.epochs": [2, 2, 3]}), "k")
    assert sorted(t.config.train.epochs for t in trials) == [2, 3]


@pytest.mark.parametrize("parameters, method, words", [
    ({"extract.token_ratio": [0.1, 0.2]}, "grid", "not a train-side setting"),
    ({"train.runs_root": ["/tmp/x"]}, "grid", "cannot be searched"),
    ({"train.lr": {"low": 1e-4, "high": 1e-3}}, "grid", "Grid search needs a list"),
    ({}, "grid", "no parameters"),
])
def test_bad_search_spaces_are_user_errors(parameters: dict, method: str, words: str) -> None:
    with pytest.raises(UserError) as caught:
        expand_settings(SweepConfig.model_validate({"method": method, "parameters": parameters}))
    assert words in caught.value.paragraph()


def test_invalid_values_are_reported_with_their_trial(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        build_trials(tiny_config(tmp_path), SweepConfig(parameters={"train.lr": [-1.0]}), "k")
    assert "train.lr" in caught.value.paragraph()


def test_sweep_section_and_sweep_file_are_read(tmp_path: Path) -> None:
    from fpt.pipeline.sweep import load_sweep_file

    config = tiny_config(tmp_path, ["sweep.method=random", "sweep.parameters={train.lr: {low: 0.001, high: 0.01}}"])
    assert config.sweep.method == "random" and config.sweep.parameters["train.lr"].high == 0.01
    file = tmp_path / "space.yaml"
    file.write_text("sweep:\n  name: s\n  parameters:\n    train.weight_decay: [0.05, 0.1]\n")
    assert load_sweep_file(file).parameters == {"train.weight_decay": [0.05, 0.1]}
    file.write_text("method: grid\nparameters: {train.lr: [0.1]}\nunknown: 1\n")
    with pytest.raises(UserError):
        load_sweep_file(file)


def test_local_cluster_never_oversubscribes_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import fpt.pipeline.cluster as cluster

    monkeypatch.setattr(cluster, "machine_cores", lambda: 16)
    monkeypatch.setattr(cluster.torch.cuda, "device_count", lambda: 4)
    for tasks in (1, 3, 8, 40):
        plan = cluster.plan_local(tasks, use_gpu=False)
        assert plan.workers == min(16, tasks)
        assert plan.workers * plan.torch_threads <= 16
        assert cluster.task_resources(plan) is None
    gpu = cluster.plan_local(10, use_gpu=True)
    assert gpu.workers == 4 and cluster.task_resources(gpu) == {"GPU": 1}
    assert cluster.plan_local(10, use_gpu=False, max_workers=2).workers == 2


def test_packs_split_by_data_order_and_size(tmp_path: Path) -> None:
    from fpt.pipeline.sweep_packs import split_into_packs

    base = tiny_config(tmp_path)
    sweep = SweepConfig(parameters={"train.lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3], "train.seed": [0, 1]})
    trials = build_trials(base, sweep, "k")
    packs = split_into_packs(trials, pack_size=16, workers=1)
    assert len(packs) == 2  # one per seed: different data order cannot share batches
    assert all(len({t.config.train.seed for t in pack}) == 1 for pack in packs)
    assert sorted(len(p) for p in split_into_packs(trials, pack_size=2, workers=1)) == [1, 1, 2, 2, 2, 2]
    assert len(split_into_packs(trials, pack_size=16, workers=4)) == 4  # every worker gets work


def test_cli_reports_a_missing_sweep_file_in_one_paragraph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from fpt.pipeline import cli

    monkeypatch.setattr(sys, "argv", ["fpt", "sweep", "--from-cache", "--sweep-file", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "The sweep file" in err and "nope.yaml does not exist" in err and "--sweep-file" in err
    assert "Traceback" not in err

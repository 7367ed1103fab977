"""What a run reports as it goes: TensorBoard and MLflow scalars read back, train.log, and the lines a
log file gets when the output is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli_errors import run_fpt
from tiny import TRAINING, cli_args, tiny_assignments, tiny_config

from fpt.pipeline.sweep import run_sweep
from fpt.stages.core.settings import SweepConfig
from fpt.stages.extract.run import run_extract
from fpt.stages.train.train_side import train_side


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_and_mlflow_get_every_epoch_and_the_test_results(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, *TRAINING, "train.epochs=3", "train.loggers=[tensorboard,mlflow]",
                         f"train.mlflow_uri={uri}")
    run_extract(config, show_progress=False)
    result = train_side(config, show_progress=False)
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((result.run_dir / "final_metrics.json").read_text())

    logged = scalars(result.run_dir)
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3]
    for (step, value), epoch in zip(logged["val/auc"], epochs):
        assert step == epoch["epoch"] and value == pytest.approx(epoch["val"]["auc"], abs=1e-6)
    for (_, value), epoch in zip(logged["train/loss"], epochs):
        assert value == pytest.approx(epoch["train_loss"], rel=1e-6)
    for (_, value), epoch in zip(logged["train/lr"], epochs):
        assert value == pytest.approx(epoch["lr"], rel=1e-6)
    assert logged["test_best/auc"][0][1] == pytest.approx(final["test_best"]["auc"], abs=1e-6)
    assert logged["test_last/kappa"][0][1] == pytest.approx(final["test_last"]["kappa"], abs=1e-6)

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fpt.run_dir"] == str(result.run_dir)
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [(m.step, pytest.approx(m.value, abs=1e-6)) for m in history] == \
        [(e["epoch"], e["val"]["accuracy"]) for e in epochs]
    assert run.data.metrics["test_best/auc"] == pytest.approx(final["test_best"]["auc"], abs=1e-6)
    assert float(run.data.params["lr"]) == pytest.approx(1e-3)

    log = (result.run_dir / "train.log").read_text().splitlines()
    assert "started: demo from the cache" in log[0]
    assert sum("epoch " in line and "val AUC" in line for line in log) == 3
    assert any("test, best model:" in line for line in log) and "finished in" in log[-1]


def test_a_sweep_is_an_mlflow_parent_run_with_its_trials_as_children(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, *TRAINING, "train.loggers=[mlflow]", f"train.mlflow_uri={uri}")
    run_extract(config, show_progress=False)
    sweep = SweepConfig(name="s", parameters={"train.lr": [1e-3, 2e-3]})
    run_sweep(config, sweep, max_workers=1, processes=False, show_progress=False)
    run_sweep(config, sweep, max_workers=1, processes=False, show_progress=False)  # resumed: nothing new
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "s"
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert sorted(float(run.data.params["lr"]) for run in children) == [1e-3, 2e-3]
    assert not any((path / "tensorboard").exists() for path in (tmp_path / "runs" / "s" / "trials").iterdir())


def test_output_to_a_file_gets_the_run_folder_first_a_line_per_epoch_and_whole_store_names(tmp_path: Path) -> None:
    assignments = tiny_assignments(tmp_path, *TRAINING, "train.epochs=3")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({}))
    extracted = run_fpt("extract", "--dataset", "demo", *cli_args(assignments), cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    trained = run_fpt("train-side", "--dataset", "demo", *cli_args(assignments), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    lines = trained.stdout.splitlines()
    run_dir = next((tmp_path / "runs").iterdir())
    folder_line = next(i for i, line in enumerate(lines) if line.startswith("Run folder: "))
    assert lines[folder_line] == f"Run folder: {run_dir}"  # whole, on one line, before training
    epoch_lines = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert [lines[i].split()[1] for i in epoch_lines] == ["1/3", "2/3", "3/3"] and folder_line < epoch_lines[0]
    assert all("val AUC" in lines[i] and "train loss" in lines[i] for i in epoch_lines)
    table = [line for line in lines if line.startswith(("┃", "│", "┏", "└"))]
    assert table and all(len(line) <= 80 for line in table)  # the metrics table fits an 80-column log
    assert (run_dir / "train.log").is_file()

    listing = run_fpt("cache", "list", *cli_args(assignments), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    (store,) = (tmp_path / "cache").glob("*.zarr")
    assert store.name in listing.stdout.splitlines()  # whole, on a line of its own, in an 80-column log
    assert f"  images from {(tmp_path / 'data' / 'demo').resolve()}" in listing.stdout.splitlines()

"""A binary task shows the positive class's scores with sensitivity and specificity wherever a run's
metrics are shown: the CLI table after training, report.md and a sweep's results.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, recall_score
from tiny import cli_args, tiny_assignments
from typer.testing import CliRunner

from fpt.pipeline.cli import app
from fpt.pipeline.sweep_results import write_results_csv
from fpt.pipeline.trial_reports import TrialReport


def _recomputed(predictions: Path) -> dict[str, float]:
    """Sensitivity, specificity and the positive class's F1 from the run's own predictions, by sklearn."""
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(row["label"]) for row in rows])
    predicted = np.array([int(row["predicted"]) for row in rows])
    return {"sensitivity": recall_score(labels, predicted, pos_label=1),
            "specificity": recall_score(labels, predicted, pos_label=0),
            "f1": f1_score(labels, predicted, pos_label=1)}


def test_a_binary_run_shows_sensitivity_and_specificity(tmp_path: Path) -> None:
    sets = cli_args(tiny_assignments(tmp_path, "demo.num_classes=2", "train.epochs=2"))
    runner = CliRunner()
    assert runner.invoke(app, ["extract", "--dataset", "demo", "--quiet", *sets]).exit_code == 0
    trained = runner.invoke(app, ["train-side", "--from-cache", "--dataset", "demo", "--quiet", *sets],
                            env={"COLUMNS": "250"})
    assert trained.exit_code == 0, trained.output
    run_dir = next((tmp_path / "runs").iterdir())
    expected = _recomputed(run_dir / "predictions_test_best.csv")

    header = next(line for line in trained.output.splitlines() if "accuracy" in line)
    columns = [cell.strip() for cell in header.strip("┃│ ").replace("┃", "│").split("│")]
    assert columns[1:] == ["accuracy", "f1", "auc", "precision", "recall", "kappa", "sensitivity", "specificity"]
    best_row = next(line for line in trained.output.splitlines() if "best (epoch" in line)
    cells = [cell.strip() for cell in best_row.strip("│ ").split("│")]
    shown = dict(zip(columns, cells))
    for name in ("sensitivity", "specificity", "f1"):
        assert float(shown[name]) == round(expected[name], 4), name

    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    report = (run_dir / "report.md").read_text()
    table_header = next(line for line in report.splitlines() if line.startswith("| |"))
    assert table_header.endswith("| sensitivity | specificity |") and "| f1 |" in table_header
    test_row = next(line for line in report.splitlines() if line.startswith("| test, best-validation model"))
    assert test_row.split("|")[-3].strip() == f"{expected['sensitivity']:.4f}"
    assert test_row.split("|")[-2].strip() == f"{expected['specificity']:.4f}"

    final = json.loads((run_dir / "final_metrics.json").read_text())
    report_row = TrialReport(trial_id="t0", settings={"train.lr": 0.001}, status="finished", run_dir=run_dir,
                             val_auc=final["best_val"]["auc"], test_best=final["test_best"], test_last=final["test_last"])
    write_results_csv(tmp_path / "results.csv", [report_row])
    with open(tmp_path / "results.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["test_best_sensitivity"]) == round(expected["sensitivity"], 6)
    assert float(row["test_best_specificity"]) == round(expected["specificity"], 6)


def test_a_multiclass_sweep_table_has_no_binary_columns(tmp_path: Path) -> None:
    scores = {"accuracy": 0.5, "macro_f1": 0.4, "auc": 0.7, "precision": 0.45, "recall": 0.4, "kappa": 0.3}
    report_row = TrialReport(trial_id="t0", settings={}, status="finished", run_dir=tmp_path, val_auc=0.7,
                             test_best=scores, test_last=scores)
    write_results_csv(tmp_path / "results.csv", [report_row])
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "test_best_kappa" in header and not any("sensitivity" in column for column in header)

"""The run report's pictures and report.md, on a hand-made run folder (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from fpt.stages.runs.report import (
    SplitPredictions, confusion_figure, read_predictions, roc_figure, training_curves_figure, write_report,
)
from fpt.stages.runs.run_folder import write_predictions

CLASSES = ["none", "mild", "severe"]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.3, 0.6, 0.1], [0.1, 0.3, 0.6],
    [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3], [0.1, 0.45, 0.45], [0.2, 0.7, 0.1],
])


def metrics(accuracy: float, auc: float, loss: float | None = None) -> dict:
    return {"accuracy": accuracy, "macro_f1": 0.5, "auc": auc, "precision": 0.4, "recall": 0.3, "kappa": 0.2,
            "loss": loss}


def epoch_records() -> list[dict]:
    aucs = [0.55, 0.71, 0.64]
    return [{"epoch": i + 1, "train_loss": 1.1 - 0.1 * i, "lr": 1e-3, "seconds": 1.0,
             "val": metrics(0.3 + 0.1 * i, auc, 1.2 - 0.05 * i)} for i, auc in enumerate(aucs)]


def make_run_folder(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": "/c.zarr", "cache_key": "ab" * 32, "class_names": CLASSES,
                                              "learnable_params": 1234, "lr": 1e-3}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epoch_records()))
    (run / "final_metrics.json").write_text(json.dumps({
        "best_epoch": 2, "best_val": metrics(0.4, 0.71), "test_best": metrics(0.6123, 0.8), "test_last": metrics(0.5, math.nan),
    }))
    ids = [f"img{i}.png" for i in range(len(LABELS))]
    write_predictions(run / "predictions_test_best.csv", ids, LABELS, PROBABILITIES, CLASSES)
    write_predictions(run / "predictions_test_last.csv", ids, LABELS, PROBABILITIES[:, ::-1], CLASSES)
    return run


def test_predictions_csv_round_trips(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path)
    read = read_predictions(run / "predictions_test_best.csv")
    assert (read.split, read.which, read.class_names) == ("test", "best", CLASSES)
    assert read.labels == LABELS.tolist()
    np.testing.assert_allclose(read.probabilities, PROBABILITIES, atol=1e-6)


def _predictions() -> SplitPredictions:
    return SplitPredictions(split="test", which="best", class_names=CLASSES, labels=LABELS.tolist(),
                            probabilities=PROBABILITIES.tolist())


def test_confusion_figure_shows_the_counts() -> None:
    figure = confusion_figure(_predictions())
    shown = [int(t.get_text()) for t in figure.axes[0].texts]
    expected = np.zeros((3, 3), int)
    for truth, guess in zip(LABELS, PROBABILITIES.argmax(1)):
        expected[truth, guess] += 1
    assert shown == expected.ravel().tolist()


def test_roc_figure_has_one_curve_per_class_with_its_auc() -> None:
    figure = roc_figure(_predictions())
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    for index, name in enumerate(CLASSES):
        auc = roc_auc_score(LABELS == index, PROBABILITIES[:, index])
        assert f"{name} (AUC {auc:.3f})" in legend


def test_roc_figure_marks_a_class_missing_from_the_split() -> None:
    predictions = _predictions().model_copy(update={"labels": [0, 1] * 5})
    legend = [t.get_text() for t in roc_figure(predictions).axes[0].get_legend().get_texts()]
    assert any(text.startswith("severe (absent") for text in legend)


def test_training_curves_plot_the_logged_values() -> None:
    records = epoch_records()
    figure = training_curves_figure(records)
    loss_axis, auc_axis = figure.axes
    train_line, val_line = loss_axis.get_lines()
    assert list(val_line.get_ydata()) == pytest.approx([r["val"]["loss"] for r in records])
    assert list(train_line.get_ydata()) == pytest.approx([r["train_loss"] for r in records])
    assert list(auc_axis.get_lines()[0].get_ydata()) == pytest.approx([r["val"]["auc"] for r in records])
    legend = [t.get_text() for t in auc_axis.get_legend().get_texts()]
    assert "best AUC 0.710 (epoch 2)" in legend


def test_write_report_embeds_pictures_and_metrics_table(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path)
    (run / "evaluation_val_last.json").write_text(json.dumps({"split": "val", "checkpoint": "last",
                                                               "metrics": metrics(0.25, 0.5)}))
    files = write_report(run)
    names = {f.name for f in files}
    assert names == {"training_curves.png", "roc_test_best.png", "confusion_test_best.png", "roc_test_last.png",
                     "confusion_test_last.png", "report.md"}
    report = (run / "report.md").read_text()
    assert "| test, best-validation model | 0.6123 |" in report
    assert "| test, final model | 0.5000 | 0.5000 | n/a |" in report
    assert "| `fpt evaluate`: val, last model | 0.2500 |" in report
    for name in ("training_curves.png", "roc_test_best.png", "confusion_test_best.png"):
        assert f"]({name})" in report
    assert "[ROC curves per class, test, last model](roc_test_last.png)" in report
    for name in names - {"report.md"}:
        with Image.open(run / name) as picture:
            assert picture.format == "PNG" and picture.width >= 400
    assert not list(run.glob("*.tmp*"))


def test_write_report_without_training_log_still_draws_test_pictures(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path)
    (run / "metrics.jsonl").unlink()
    names = {f.name for f in write_report(run)}
    assert "training_curves.png" not in names and "roc_test_best.png" in names


def test_report_without_pictures_then_fpt_report_draws_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fpt.pipeline.cli import app

    run = make_run_folder(tmp_path)
    assert [f.name for f in write_report(run, draw_pictures=False)] == ["report.md"]
    assert not list(run.glob("*.png"))
    assert "| test, best-validation model | 0.6123 |" in (run / "report.md").read_text()
    assert f"`fpt report {run}`" in (run / "report.md").read_text()

    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in run.glob("*.png")} == {"training_curves.png", "roc_test_best.png", "confusion_test_best.png",
                                                    "roc_test_last.png", "confusion_test_last.png"}
    assert "](training_curves.png)" in (run / "report.md").read_text()

    not_a_run = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert not_a_run.exit_code != 0 and "is not a run folder" in str(not_a_run.exception)

"""The summary of a cross-validation's parent folder: cv.json, report.md and the fold ensemble.

    <runs_root>/<name>/
        fold-1/ .. fold-k/               each an ordinary run folder
        cv.json                          each fold's best validation and test metrics, their mean and
                                         standard deviation over folds, the ensemble's test metrics
        predictions_test_ensemble.csv    the mean of the k best models' test probabilities
        report.md                        the same as tables

The standard deviation is the sample one (ddof = 1) over the k folds. The ensemble averages the
probabilities of predictions_test_best.csv of every fold, which list the test split in the same
(cache) order.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from fpt.stages.core.files import atomic_write_text, write_json
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.runs.metrics import Metrics, classification_metrics, is_binary, reported_scores, score_header
from fpt.stages.runs.report import read_predictions
from fpt.stages.runs.run_folder import write_predictions


class FoldSummary(BaseModel):
    fold: int
    run_dir: Path
    best_epoch: int
    best_val: Metrics
    test_best: Metrics


class CrossValidationResult(BaseModel):
    folder: Path
    folds: list[FoldSummary]
    val_mean: dict[str, float]
    val_std: dict[str, float]
    test_mean: dict[str, float]
    test_std: dict[str, float]
    ensemble_test: Metrics
    seconds: float


def new_cv_dir(config: PipelineConfig) -> Path:
    """The parent folder of a cross-validation: train.run_name, or <dataset>-<time>-cv<k>, made unique."""
    train = config.train
    name = train.run_name or f"{config.dataset.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-cv{train.folds}"
    path, suffix = train.runs_root / name, 1
    while path.exists():
        suffix += 1
        path = train.runs_root / f"{name}-{suffix}"
    path.mkdir(parents=True)
    return path


def fold_ensemble(run_dirs: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample ids, labels, mean probabilities) of the folds' best models on the test split."""
    ids, labels, probabilities = None, None, []
    for run_dir in run_dirs:
        path = run_dir / "predictions_test_best.csv"
        predictions = read_predictions(path)
        these = [row[0] for row in _rows(path)]
        if ids is None:
            ids, labels = these, np.array(predictions.labels, dtype=np.int64)
        elif these != ids:
            raise ValueError(f"{path} lists other test samples than the first fold's")
        probabilities.append(np.array(predictions.probabilities, dtype=np.float64))
    assert ids is not None and labels is not None
    return ids, labels, np.mean(probabilities, axis=0)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def _spread(metrics: list[Metrics]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation over folds of each score (and the loss, where there is one)."""
    names = [name for name, value in metrics[0].model_dump().items() if value is not None]
    values = {name: np.array([getattr(m, name) for m in metrics], dtype=np.float64) for name in names}
    ddof = 1 if len(metrics) > 1 else 0
    return ({name: float(v.mean()) for name, v in values.items()},
            {name: float(v.std(ddof=ddof)) for name, v in values.items()})


def summarize_cross_validation(folder: Path, folds: list[FoldSummary], class_names: list[str], fold_seed: int,
                               seconds: float) -> CrossValidationResult:
    """cv.json, predictions_test_ensemble.csv and report.md of the parent folder; returns what they hold."""
    ids, labels, probabilities = fold_ensemble([f.run_dir for f in folds])
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)
    ensemble = classification_metrics(labels, probabilities, float(-np.log(picked).mean()))
    write_predictions(folder / "predictions_test_ensemble.csv", ids, labels, probabilities, class_names)
    val_mean, val_std = _spread([f.best_val for f in folds])
    test_mean, test_std = _spread([f.test_best for f in folds])
    result = CrossValidationResult(folder=folder, folds=folds, val_mean=val_mean, val_std=val_std,
                                   test_mean=test_mean, test_std=test_std, ensemble_test=ensemble, seconds=seconds)
    write_json(folder / "cv.json", {"num_folds": len(folds), "fold_seed": fold_seed, "class_names": class_names,
                                    **result.model_dump(mode="json")})
    atomic_write_text(folder / "report.md", _markdown(result, fold_seed))
    return result


def _markdown(result: CrossValidationResult, fold_seed: int) -> str:
    binary = is_binary(result.ensemble_test)
    names = reported_scores(binary)
    header = "| | " + " | ".join(score_header(n, binary) for n in names) + " |"
    rule = "|---" * (len(names) + 1) + "|"

    def row(label: str, values: dict[str, float], spread: dict[str, float] | None = None) -> str:
        cells = [f"{values[n]:.4f}" + (f" ± {spread[n]:.4f}" if spread is not None else "") for n in names]
        return f"| {label} | " + " | ".join(cells) + " |"

    k = len(result.folds)
    lines = [f"# Cross-validation: {k} folds of train + val (stratified, seed {fold_seed})", "",
             "Each fold's best epoch (by validation AUC); mean ± sample standard deviation over the folds.", "",
             "## Validation", "", header, rule]
    lines += [row(f"fold {f.fold} (epoch {f.best_epoch})", f.best_val.model_dump()) for f in result.folds]
    lines += [row("mean ± std", result.val_mean, result.val_std), "", "## Test", "", header, rule]
    lines += [row(f"fold {f.fold}", f.test_best.model_dump()) for f in result.folds]
    lines += [row("mean ± std", result.test_mean, result.test_std),
              row(f"ensemble of the {k} folds", result.ensemble_test.model_dump()), "",
              "The ensemble averages the test probabilities of the folds' best models "
              "(predictions_test_ensemble.csv). Folds: " + ", ".join(f"[fold {f.fold}]({f.run_dir.name}/report.md)"
                                                                    for f in result.folds) + ".", ""]
    return "\n".join(lines)

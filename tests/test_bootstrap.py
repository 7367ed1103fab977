"""The bootstrap intervals of stages/runs/bootstrap.py against a plain loop over the same resamples
(sklearn's AUC and per-class counts), their coverage of a known AUC, their cost, and the report of a run
whose final_metrics.json has none."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, roc_auc_score

from fpt.stages.runs.bootstrap import bootstrap_uncertainty, resample_indices
from fpt.stages.runs.metrics import classification_metrics, reported_scores
from fpt.stages.runs.report import write_report
from fpt.stages.train.recipe import TrainResult


def _problem(n: int, classes: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that favour the true class by `signal`, with tied values."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += signal
    probabilities = np.exp(logits.round(1))  # rounded: some probabilities tie
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


def _sklearn_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    if probabilities.shape[1] == 2:
        return roc_auc_score(labels, probabilities[:, 1])
    return roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")


@pytest.mark.parametrize("classes", [2, 3])
def test_intervals_equal_a_loop_over_the_same_resamples(classes: int) -> None:
    labels, probabilities = _problem(90, classes, seed=classes)
    resamples, seed = 200, 7
    names = [f"c{k}" for k in range(classes)]
    result = bootstrap_uncertainty(labels, probabilities, names, resamples=resamples, seed=seed)

    scores: dict[str, list[float]] = {name: [] for name in reported_scores(classes == 2)}
    sensitivity, specificity = [], []
    for rows in resample_indices(labels, resamples, seed):
        drawn, drawn_probabilities = labels[rows], probabilities[rows]
        assert np.array_equal(np.bincount(drawn, minlength=classes), np.bincount(labels, minlength=classes))
        metrics = classification_metrics(drawn, drawn_probabilities).model_dump()
        metrics["auc"] = _sklearn_auc(drawn, drawn_probabilities)  # the AUC from sklearn, not from fpt
        for name in scores:
            scores[name].append(metrics[name])
        matrices = multilabel_confusion_matrix(drawn, drawn_probabilities.argmax(1), labels=range(classes))
        true_negative, false_positive, false_negative, true_positive = matrices.reshape(classes, 4).T
        sensitivity.append(true_positive / (true_positive + false_negative))
        specificity.append(true_negative / (true_negative + false_positive))
    for name, values in scores.items():
        assert result.intervals[name] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), abs=1e-12), name
    for k, rates in enumerate(result.per_class):
        assert rates.sensitivity_ci == pytest.approx(list(np.percentile(np.array(sensitivity)[:, k], [2.5, 97.5])))
        assert rates.specificity_ci == pytest.approx(list(np.percentile(np.array(specificity)[:, k], [2.5, 97.5])))
    assert result.bootstrap.resamples == resamples and result.bootstrap.seed == seed


@pytest.mark.parametrize("classes", [2, 4])
def test_per_class_rates_equal_sklearns_confusion_matrix(classes: int) -> None:
    labels, probabilities = _problem(150, classes, seed=10 + classes)
    result = bootstrap_uncertainty(labels, probabilities, [f"c{k}" for k in range(classes)], resamples=50)
    matrix = confusion_matrix(labels, probabilities.argmax(1), labels=range(classes))
    for k, rates in enumerate(result.per_class):
        others = np.delete(np.arange(classes), k)
        assert rates.images == matrix[k].sum()
        assert rates.sensitivity == pytest.approx(matrix[k, k] / matrix[k].sum())
        assert rates.specificity == pytest.approx(1 - matrix[others, k].sum() / matrix[others].sum())
        assert rates.sensitivity_ci[0] <= rates.sensitivity <= rates.sensitivity_ci[1]
    if classes == 2:  # the binary task's own sensitivity and specificity are the classes' rates
        metrics = classification_metrics(labels, probabilities)
        assert (metrics.sensitivity, metrics.specificity) == pytest.approx(
            (result.per_class[1].sensitivity, result.per_class[0].sensitivity))


def test_intervals_hold_the_point_value_and_narrow_as_the_split_grows() -> None:
    widths = []
    for n in (100, 1000):
        labels, probabilities = _problem(n, 3, seed=n)
        metrics = classification_metrics(labels, probabilities).model_dump()
        result = bootstrap_uncertainty(labels, probabilities, ["a", "b", "c"])
        for name, (low, high) in result.intervals.items():
            assert low <= metrics[name] <= high, name
        widths.append(result.intervals["auc"][1] - result.intervals["auc"][0])
    assert widths[1] < 0.5 * widths[0]  # about 1/sqrt(10) of it


def test_coverage_of_a_known_auc_is_near_95_percent() -> None:
    # positives ~ N(d, 1), negatives ~ N(0, 1): AUC = Phi(d / sqrt(2))
    shift, repeats, covered = 1.0, 300, 0
    truth = norm.cdf(shift / np.sqrt(2))
    rng = np.random.default_rng(2024)
    for repeat in range(repeats):
        labels = np.repeat([0, 1], 50)
        scores = 1 / (1 + np.exp(-(rng.normal(size=100) + shift * labels)))
        result = bootstrap_uncertainty(labels, np.stack([1 - scores, scores], axis=1), ["no", "yes"],
                                       resamples=1000, seed=repeat)
        low, high = result.intervals["auc"]
        covered += low <= truth <= high
    assert 0.90 <= covered / repeats <= 0.99


def test_undefined_scores_have_no_interval_and_a_single_image_class_is_resampled() -> None:
    labels = np.zeros(20, dtype=int)
    probabilities = np.tile([0.7, 0.2, 0.1], (20, 1))
    result = bootstrap_uncertainty(labels, probabilities, ["a", "b", "c"], resamples=100)
    assert result.intervals["auc"] == [None, None]  # one class: no AUC in the split or any resample
    assert result.per_class[1].sensitivity is None and result.per_class[1].sensitivity_ci == [None, None]
    assert result.per_class[0].specificity is None

    labels = np.array([0] * 10 + [1] * 10 + [2])  # class 2 has one image: it is in every resample
    probabilities = _problem(21, 3, seed=3)[1]
    result = bootstrap_uncertainty(labels, probabilities, ["a", "b", "c"], resamples=100)
    assert None not in result.intervals["auc"]
    assert result.per_class[2].images == 1


def test_2000_resamples_of_120_images_take_milliseconds() -> None:
    labels, probabilities = _problem(120, 3, seed=5)
    bootstrap_uncertainty(labels, probabilities, ["a", "b", "c"])  # warm-up
    start = time.perf_counter()
    bootstrap_uncertainty(labels, probabilities, ["a", "b", "c"])
    assert time.perf_counter() - start < 0.5  # about 15 ms on 2 shared cores


def test_a_run_finished_before_intervals_keeps_its_report_and_reads_back(tmp_path: Path) -> None:
    scores = {"accuracy": 0.5, "macro_f1": 0.4, "auc": 0.7, "precision": 0.45, "recall": 0.4, "kappa": 0.3,
              "loss": 1.0, "sensitivity": None, "specificity": None}
    old = {"run_dir": str(tmp_path), "cache": str(tmp_path), "best_epoch": 3, "best_val": scores, "test_best": scores,
           "test_last": scores, "learnable_params": 10, "seconds": 1.0}
    (tmp_path / "final_metrics.json").write_text(json.dumps(old))
    assert TrainResult.model_validate(old).test_best_ci is None  # what a sweep reads back
    report = write_report(tmp_path, draw_pictures=False)[0].read_text()
    assert "| test, best-validation model | 0.5000 | 0.4000 | 0.7000 |" in report
    assert "confidence intervals" not in report and "per class" not in report

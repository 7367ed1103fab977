"""The paper's metrics against values worked out by hand on a small confusion matrix, and against sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from fpt.stages.runs.metrics import classification_metrics


def test_macro_scores_and_quadratic_kappa_match_hand_computation() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predictions] = 0.8
    metrics = classification_metrics(labels, probabilities, loss=0.5)
    # per class (precision, recall): 0 -> (1/2, 1/2), 1 -> (2/3, 1), 2 -> (1, 1/2)
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.precision == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics.recall == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics.macro_f1 == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # weights (i - j)^2 / 4: observed disagreement 1/4 + 1 = 5/4, expected by chance 7/4
    assert metrics.kappa == pytest.approx(1 - (5 / 4) / (7 / 4))
    assert metrics.loss == 0.5


def test_auc_matches_a_hand_count_of_correctly_ordered_pairs() -> None:
    # binary AUC = share of (positive, negative) pairs the scores order correctly (ties count 1/2)
    labels = np.array([0, 0, 1, 1, 0, 1])
    positive = np.array([0.1, 0.6, 0.6, 0.9, 0.3, 0.2])
    pairs = [(p, n) for p in positive[labels == 1] for n in positive[labels == 0]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    metrics = classification_metrics(labels, np.stack([1 - positive, positive], axis=1))
    assert metrics.auc == pytest.approx(expected)


def test_diverged_probabilities_are_a_clear_error_not_a_score() -> None:
    from fpt.cache.errors import UserError

    probabilities = np.full((4, 2), 0.5)
    probabilities[2] = np.nan
    with pytest.raises(UserError, match="diverged"):
        classification_metrics(np.array([0, 1, 0, 1]), probabilities)


@pytest.mark.parametrize("missing_class", [None, 3])
def test_multiclass_auc_is_sklearns_one_vs_rest_macro_average(missing_class: int | None) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    if missing_class is not None:
        labels[labels == missing_class] = 0
    probabilities = rng.random((200, 5)).round(1) + 0.01  # rounded: many tied scores
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    present = np.unique(labels)
    if missing_class is None:
        expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    else:  # sklearn's ovr needs every class: the mean of its one-vs-rest AUCs of the classes present
        expected = np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present])
    assert classification_metrics(labels, probabilities).auc == pytest.approx(expected, abs=1e-12)
    assert np.isnan(classification_metrics(np.zeros(200, dtype=int), probabilities).auc)


@pytest.mark.parametrize("case", ["random", "a class never predicted", "a class absent from both", "one class only"])
def test_confusion_matrix_scores_equal_sklearns(case: str) -> None:
    import warnings

    from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support

    rng = np.random.default_rng(len(case))
    classes = 5
    labels = rng.integers(0, classes, 150)
    probabilities = rng.dirichlet(np.ones(classes), 150)
    if case == "a class never predicted":
        probabilities[:, 2] = 0.0
    if case == "a class absent from both":
        labels[labels == 4] = 1
        probabilities[:, 4] = 0.0
    if case == "one class only":
        labels[:] = 3
        probabilities[:, 3] = 1.0
    predictions = probabilities.argmax(axis=1)
    everything = list(range(classes))
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, labels=everything,
                                                               average="macro", zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, predictions, labels=everything, weights="quadratic")
    metrics = classification_metrics(labels, probabilities)
    assert metrics.accuracy == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
    assert metrics.precision == pytest.approx(precision, abs=1e-12)
    assert metrics.recall == pytest.approx(recall, abs=1e-12)
    assert metrics.macro_f1 == pytest.approx(f1, abs=1e-12)
    # sklearn's kappa is NaN (0 / 0) when no disagreement is expected by chance; we report 0
    assert metrics.kappa == pytest.approx(0.0 if np.isnan(kappa) else kappa, abs=1e-12)


@pytest.mark.parametrize("case", ["random", "positive class never predicted"])
def test_binary_tasks_report_the_positive_class_with_sensitivity_and_specificity(case: str) -> None:
    from sklearn.metrics import precision_recall_fscore_support, recall_score

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 120)
    probabilities = rng.dirichlet(np.ones(2), 120)
    if case == "positive class never predicted":
        probabilities[:, 1] = 0.0
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, pos_label=1, average="binary",
                                                               zero_division=0)
    metrics = classification_metrics(labels, probabilities)
    assert metrics.precision == pytest.approx(precision, abs=1e-12)
    assert metrics.recall == pytest.approx(recall, abs=1e-12) and metrics.sensitivity == pytest.approx(recall)
    assert metrics.macro_f1 == pytest.approx(f1, abs=1e-12)
    assert metrics.specificity == pytest.approx(recall_score(labels, predictions, pos_label=0), abs=1e-12)
    assert classification_metrics(rng.integers(0, 3, 50), rng.dirichlet(np.ones(3), 50)).sensitivity is None

"""Classification metrics of the paper: accuracy, macro F1, AUC, precision, recall, QWK."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy.stats import rankdata

from fpt.cache.errors import UserError


class Metrics(BaseModel):
    """The paper's scores. For more than two classes F1, precision and recall are macro averages; for a
    binary task (isic2016, cmmd, chncxr) they are the positive class's (label 1), as published, and
    sensitivity and specificity are given too (None for more than two classes)."""

    accuracy: float
    macro_f1: float  # the macro F1, or the positive class's F1 for a binary task
    auc: float  # one-vs-rest macro for > 2 classes; NaN if a class is absent
    precision: float
    recall: float
    kappa: float  # quadratic-weighted
    loss: float | None = None
    sensitivity: float | None = None  # binary tasks: the positive class's recall
    specificity: float | None = None  # binary tasks: the negative class's recall


SCORES = ("accuracy", "macro_f1", "auc", "precision", "recall", "kappa")  # the paper's six
BINARY_SCORES = ("sensitivity", "specificity")


def reported_scores(binary: bool) -> tuple[str, ...]:
    """The scores a table shows: the paper's six, with sensitivity and specificity for a binary task."""
    return SCORES + BINARY_SCORES if binary else SCORES


def is_binary(metrics: Metrics | dict) -> bool:
    """Whether these metrics are a binary task's (only those have a sensitivity)."""
    value = metrics.get("sensitivity") if isinstance(metrics, dict) else metrics.sensitivity
    return value is not None


def score_header(name: str, binary: bool) -> str:
    """A score's column title: for a binary task macro_f1 holds the positive class's F1."""
    return "f1" if binary and name == "macro_f1" else name


def auc_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC; one-vs-rest macro average over the classes present for more than two classes.

    Each class's AUC is the Mann-Whitney statistic: the share of (positive, negative) pairs its
    probability orders correctly, ties counting one half, from the ranks of the probabilities.
    That is the area sklearn's roc_auc_score integrates (tests/test_metrics.py compares them);
    sklearn's input checks take 6-8 ms per call, which would be most of a pack's bookkeeping
    (bench/README.md).
    """
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    classes = [1] if probabilities.shape[1] == 2 else list(present)
    ranks = rankdata(probabilities[:, classes], axis=0)  # tied probabilities share their mean rank
    scores = []
    for column, label in enumerate(classes):
        positive = labels == label
        n_positive = int(positive.sum())
        n_negative = len(labels) - n_positive
        rank_sum = float(ranks[positive, column].sum())
        scores.append((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))
    return float(np.mean(scores))


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: samples of class i predicted as class j."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _share(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def quadratic_kappa(counts: np.ndarray) -> float:
    """Cohen's kappa with weights (i - j)^2: 1 - observed / chance-expected weighted disagreement;
    0 where no disagreement is expected by chance (a single class, predicted and true)."""
    if counts.sum() == 0:
        return 0.0
    classes = np.arange(len(counts))
    weights = (classes[:, None] - classes[None, :]) ** 2
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / counts.sum()
    chance = float((weights * expected).sum())
    return 1.0 - float((weights * counts).sum()) / chance if chance > 0 else 0.0


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, loss: float | None = None) -> Metrics:
    """The scores of one split from its labels and predicted probabilities (N, classes).

    Everything but the AUC comes from one confusion matrix; macro averages run over all classes of
    the model, a class absent from both labels and predictions counting 0, as sklearn's scores
    with `labels=` and `zero_division=0` do (tests/test_metrics.py compares them). sklearn's three
    calls cost 6 ms per split, nearly all of it handling their inputs, 16 trials x 4 splits per pack
    (bench/README.md).
    """
    # A diverged model's NaN probabilities would otherwise become a meaningless score.
    if not np.isfinite(probabilities).all():
        raise UserError("The model's predicted probabilities contain NaN or infinity: its training diverged.",
                        "Lower train.lr (and keep train.grad_clip on), then train again.")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f"labels outside the model's {probabilities.shape[1]} classes: {np.unique(labels).tolist()}")
    counts = confusion_counts(labels, probabilities.argmax(axis=1), probabilities.shape[1])
    correct = np.diag(counts).astype(np.float64)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    f1, precision, recall = _share(2 * correct, predicted + actual), _share(correct, predicted), _share(correct, actual)
    binary = probabilities.shape[1] == 2
    return Metrics(
        accuracy=float(correct.sum() / max(len(labels), 1)),
        # a binary task reports the positive class's scores (docs/method.md), the others their macro averages
        macro_f1=float(f1[1] if binary else f1.mean()),
        auc=auc_score(labels, probabilities),
        precision=float(precision[1] if binary else precision.mean()),
        recall=float(recall[1] if binary else recall.mean()),
        kappa=quadratic_kappa(counts),
        loss=loss,
        sensitivity=float(recall[1]) if binary else None,
        specificity=float(recall[0]) if binary else None,
    )

"""Classification metrics of the paper: accuracy, macro F1, AUC, precision, recall, QWK."""

from __future__ import annotations

import math
import warnings

import numpy as np
from pydantic import BaseModel
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support

from pipeline.errors import UserError


class Metrics(BaseModel):
    accuracy: float
    macro_f1: float
    auc: float  # one-vs-rest macro for > 2 classes; NaN if a class is absent
    precision: float
    recall: float
    kappa: float  # quadratic-weighted
    loss: float | None = None


def auc_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC; one-vs-rest macro average over the classes present for more than two classes.

    Each class's AUC is the Mann-Whitney statistic: the share of (positive, negative) pairs its
    probability orders correctly, ties counting one half, from the ranks of the probabilities.
    That is the area sklearn's roc_auc_score integrates (tests/test_metrics.py compares them);
    sklearn's input checks took 6-8 ms per call, most of a pack's bookkeeping (bench/README.md).
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


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, loss: float | None = None) -> Metrics:
    # A diverged model's NaN probabilities would otherwise end in sklearn's bare "Input contains NaN".
    if not np.isfinite(probabilities).all():
        raise UserError("The model's predicted probabilities contain NaN or infinity: its training diverged.",
                        "Lower train.lr (and keep train.grad_clip on), then train again.")
    predictions = probabilities.argmax(axis=1)
    classes = list(range(probabilities.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, predictions, labels=classes, weights="quadratic")
    # one call for the three macro scores
    precision, recall, macro_f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=classes, average="macro", zero_division=0)
    return Metrics(
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(macro_f1),
        auc=auc_score(labels, probabilities),
        precision=float(precision),
        recall=float(recall),
        kappa=float(kappa) if not math.isnan(kappa) else 0.0,
        loss=loss,
    )

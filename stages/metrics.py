"""Classification metrics of the paper: accuracy, macro F1, AUC, precision, recall, QWK."""

from __future__ import annotations

import math
import warnings

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support, roc_auc_score

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
    num_classes = probabilities.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if num_classes == 2:
            return float(roc_auc_score(labels, probabilities[:, 1]))
        if len(present) < num_classes:
            # sklearn's ovr needs every class; average over the classes that are present
            scores = [roc_auc_score(labels == c, probabilities[:, c]) for c in present]
            return float(np.mean(scores))
        return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


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

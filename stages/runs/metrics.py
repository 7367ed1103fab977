"""Classification metrics of the paper: accuracy, macro F1, AUC, precision, recall, QWK."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

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
    probability orders correctly, ties counting one half. That is the area sklearn's roc_auc_score
    integrates (tests/test_metrics.py compares them); sklearn's input checks take 6-8 ms per call,
    which would be most of a pack's bookkeeping (bench/README.md).
    """
    return float(weighted_auc(labels, probabilities, np.ones((1, len(labels))))[0])


def weighted_auc(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`auc_score` of each row of weights (B, N): the AUC of the split in which image i appears
    weights[b, i] times, as in a bootstrap resample (stages/runs/bootstrap.py); NaN for a row in
    which fewer than two classes appear. The mean over the classes present in the row.

    The images are sorted once per class by probability; a positive image in a resample counts its
    weight times the weight of the negatives below its group of tied probabilities, plus half those in
    the group, read from one cumulative sum of the negatives' weights: O(B N) per class, with no sort
    per resample.
    """
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=np.float64)
    if len(labels) == 0:
        return np.full(len(weights), math.nan)
    classes = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    areas, present = [], []
    for label in classes:
        order = np.argsort(probabilities[:, label], kind="stable")
        ordered = probabilities[order, label]
        tied_start = np.r_[True, ordered[1:] != ordered[:-1]]
        group_start = np.maximum.accumulate(np.where(tied_start, np.arange(len(order)), 0))
        group_end = np.r_[np.flatnonzero(tied_start)[1:], len(order)][np.cumsum(tied_start) - 1]
        positive = labels[order] == label
        negatives_before = np.r_[0, np.cumsum(~positive)]  # at a sorted position: negatives ahead of it
        negative_weight = np.zeros((len(weights), int((~positive).sum()) + 1))
        np.cumsum(weights[:, order[~positive]], axis=1, out=negative_weight[:, 1:])
        below = negative_weight[:, negatives_before[group_start[positive]]]
        through = negative_weight[:, negatives_before[group_end[positive]]]
        positive_weight = weights[:, order[positive]]
        ordered_pairs = (positive_weight * (below + through)).sum(axis=1) / 2
        pairs = positive_weight.sum(axis=1) * negative_weight[:, -1]
        areas.append(_share(ordered_pairs, pairs, math.nan))
        present.append(positive_weight.sum(axis=1) > 0)
    areas_, present_ = np.stack(areas, axis=1), np.stack(present, axis=1)
    if probabilities.shape[1] == 2:
        return areas_[:, 0]
    # a class absent from a row has no AUC there; the row's other classes are averaged
    two_or_more = present_.sum(axis=1) >= 2
    total = np.where(present_, areas_, 0.0).sum(axis=1)
    return np.where(two_or_more, total / np.maximum(present_.sum(axis=1), 1), math.nan)


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: samples of class i predicted as class j."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _share(numerator: np.ndarray, denominator: np.ndarray, undefined: float = 0.0) -> np.ndarray:
    """numerator / denominator, `undefined` where the denominator is 0 (0: sklearn's zero_division=0)."""
    out = np.full(np.shape(numerator), undefined, dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)


def quadratic_kappa(counts: np.ndarray) -> float | np.ndarray:
    """Cohen's kappa with weights (i - j)^2: 1 - observed / chance-expected weighted disagreement;
    0 where no disagreement is expected by chance (a single class, predicted and true).
    counts: one confusion matrix (C, C), or a stack of them (..., C, C) giving one kappa each."""
    counts = np.asarray(counts, dtype=np.float64)
    classes = np.arange(counts.shape[-1])
    weights = (classes[:, None] - classes[None, :]) ** 2
    total = counts.sum(axis=(-2, -1))
    expected = counts.sum(axis=-1)[..., :, None] * counts.sum(axis=-2)[..., None, :]
    chance = (weights * expected).sum(axis=(-2, -1))  # times the total, as is `observed` below
    observed = (weights * counts).sum(axis=(-2, -1)) * total
    kappa = 1.0 - _share(observed, chance, undefined=1.0)  # 0 where nothing is expected by chance
    return float(kappa) if kappa.ndim == 0 else kappa


def count_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every score but the AUC from confusion matrices counts (..., C, C), one value per matrix.

    Macro averages run over all C classes, a class absent from both labels and predictions counting 0,
    as sklearn's scores with `labels=` and `zero_division=0` do; for C = 2 F1, precision and recall are
    the positive class's (docs/method.md), and sensitivity and specificity are added. Works on one matrix
    or on a bootstrap's stack of them (stages/runs/bootstrap.py) alike.
    """
    counts = np.asarray(counts)
    correct = np.diagonal(counts, axis1=-2, axis2=-1).astype(np.float64)
    predicted, actual = counts.sum(axis=-2), counts.sum(axis=-1)
    f1, precision, recall = _share(2 * correct, predicted + actual), _share(correct, predicted), _share(correct, actual)
    total = counts.sum(axis=(-2, -1))
    binary = counts.shape[-1] == 2
    scores = {
        "accuracy": _share(correct.sum(axis=-1), total),
        "macro_f1": f1[..., 1] if binary else f1.mean(axis=-1),
        "precision": precision[..., 1] if binary else precision.mean(axis=-1),
        "recall": recall[..., 1] if binary else recall.mean(axis=-1),
        "kappa": np.asarray(quadratic_kappa(counts)),
    }
    if binary:
        scores |= {"sensitivity": recall[..., 1], "specificity": recall[..., 0]}
    return scores


def class_rates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's sensitivity and specificity, one class against the rest: (..., C) each.

    Sensitivity of class k: the share of its images predicted k; specificity: the share of the other
    classes' images not predicted k. NaN where undefined (no image of k, or only images of k).
    """
    counts = np.asarray(counts)
    correct = np.diagonal(counts, axis1=-2, axis2=-1).astype(np.float64)
    predicted, actual = counts.sum(axis=-2), counts.sum(axis=-1)
    total = counts.sum(axis=(-2, -1))[..., None]
    true_negative = total - actual - predicted + correct
    return _share(correct, actual, math.nan), _share(true_negative, total - actual, math.nan)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, loss: float | None = None) -> Metrics:
    """The scores of one split from its labels and predicted probabilities (N, classes).

    Everything but the AUC comes from one confusion matrix (`count_scores`; tests/test_metrics.py
    compares them with sklearn's). sklearn's three calls cost 6 ms per split, nearly all of it
    handling their inputs, 16 trials x 4 splits per pack (bench/README.md).
    """
    # A diverged model's NaN probabilities would otherwise become a meaningless score.
    if not np.isfinite(probabilities).all():
        raise UserError("The model's predicted probabilities contain NaN or infinity: its training diverged.",
                        "Lower train.lr (and keep train.grad_clip on), then train again.")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f"labels outside the model's {probabilities.shape[1]} classes: {np.unique(labels).tolist()}")
    counts = confusion_counts(labels, probabilities.argmax(axis=1), probabilities.shape[1])
    scores = {name: float(value) for name, value in count_scores(counts).items()}
    return Metrics(auc=auc_score(labels, probabilities), loss=loss, **scores)

"""Bootstrap confidence intervals of a split's scores, and each class's sensitivity and specificity.

On a test split of a few hundred images a 0.02 difference in AUC is noise, so every reported score
gets a 95 % interval, from the same resamples of the split's images:

- **Paired, stratified resampling.** A resample draws, for each true class k, n_k images with
  replacement from the n_k images of class k; one set of resamples scores every metric (and both runs
  in `fpt compare`, stages/runs/comparison.py). Every class of the split is thus in every resample, so
  the AUC (undefined without positives or negatives) and each class's sensitivity are defined in all
  of them: no resample is dropped or drawn again, which would lean the interval towards the resamples
  that happened to hold every class (the rare classes' hardest images are the ones left out). The class
  counts of a test split are set by its design; pROC's `ci.auc` stratifies by default for this reason.
- **Percentile intervals** (the 2.5th and 97.5th percentiles of the resampled scores). BCa would
  need a jackknife (n more evaluations: more than the resamples for a 4,000-image test set) and is
  undefined when every resample gives the same score (accuracy 1 on a small easy split); percentile
  intervals stay inside [0, 1] and do not change under a monotone transformation of the score.
  scipy.stats.bootstrap would stratify through its multi-sample form, but refuses a class of one image.
- A score undefined on the split itself (the AUC of a split of one class, the sensitivity of a class
  with no image) is undefined on every resample, and its interval is [None, None].

All resamples are scored at once: their confusion matrices from one bincount, their AUCs from each
image's count in the resample (`weighted_auc`), in blocks of about two million (resample, image)
pairs. 2,000 resamples of 120 images of 3 classes take about 10 ms (tests/test_bootstrap.py).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

from fpt.stages.runs.metrics import class_rates, confusion_counts, count_scores, reported_scores, weighted_auc

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
METHOD = "percentile; images resampled with replacement within each true class"
BLOCK = 2_000_000  # (resample, image) pairs scored at once: a few arrays of this size in memory

Interval = list[float | None]  # [low, high]; [None, None] where the score is undefined


class BootstrapSettings(BaseModel):
    """How the intervals next to them were computed."""

    resamples: int = RESAMPLES
    seed: int = SEED
    confidence: float = CONFIDENCE
    method: str = METHOD


class ClassRates(BaseModel):
    """One class against the rest: the share of its images predicted as it (sensitivity) and the
    share of the other images not predicted as it (specificity), with their intervals."""

    class_name: str
    images: int
    sensitivity: float | None
    specificity: float | None
    sensitivity_ci: Interval
    specificity_ci: Interval


class Uncertainty(BaseModel):
    """The intervals of a split's reported scores and its per-class rates."""

    intervals: dict[str, Interval]  # score name (as in Metrics) -> [low, high]
    per_class: list[ClassRates]
    bootstrap: BootstrapSettings


def resample_indices(labels: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, N) image indices: row b is resample b, the n_k draws with replacement from the
    images of class k for each class in ascending order (the scores do not depend on the order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    blocks = [np.empty((resamples, 0), dtype=np.intp)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        blocks.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(blocks, axis=1)


def resample_counts(indices: np.ndarray, num_images: int) -> np.ndarray:
    """(B, N): how often each image is drawn in each resample."""
    offsets = np.arange(len(indices))[:, None] * num_images
    return np.bincount((offsets + indices).ravel(), minlength=len(indices) * num_images).reshape(len(indices), -1)


def resampled_scores(labels: np.ndarray, probabilities: np.ndarray,
                     indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every score of each resample (B,), and each class's sensitivity and specificity (B, C)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = probabilities.shape[1]
    cells = labels * classes + probabilities.argmax(axis=1)  # each image's cell of the confusion matrix
    block = max(1, BLOCK // max(len(labels), 1))
    parts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
    for start in range(0, len(indices), block):
        rows = indices[start:start + block]
        offsets = np.arange(len(rows))[:, None] * classes**2
        counts = np.bincount((offsets + cells[rows]).ravel(), minlength=len(rows) * classes**2)
        counts = counts.reshape(len(rows), classes, classes)
        scores = count_scores(counts) | {"auc": weighted_auc(labels, probabilities, resample_counts(rows, len(labels)))}
        parts.append((scores, *class_rates(counts)))
    joined = {name: np.concatenate([part[0][name] for part in parts]) for name in parts[0][0]}
    return joined, np.concatenate([part[1] for part in parts]), np.concatenate([part[2] for part in parts])


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The central `confidence` share of the resampled values (np.quantile's linear interpolation);
    [None, None] where the score is undefined (NaN) on every resample."""
    defined = values[np.isfinite(values)]
    if len(defined) == 0:
        return [None, None]
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def _value(number: float) -> float | None:
    return None if math.isnan(number) else float(number)


def bootstrap_uncertainty(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str],
                          resamples: int = RESAMPLES, seed: int = SEED) -> Uncertainty:
    """Intervals of the scores a report shows (`reported_scores`) and each class's sensitivity and
    specificity with theirs, for one split's labels (N,) and probabilities (N, C)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    indices = resample_indices(labels, resamples, seed)
    scores, sensitivity, specificity = resampled_scores(labels, probabilities, indices)
    intervals = {name: percentile_interval(scores[name]) for name in reported_scores(probabilities.shape[1] == 2)}
    point_sensitivity, point_specificity = class_rates(
        confusion_counts(labels, probabilities.argmax(axis=1), probabilities.shape[1]))
    per_class = [
        ClassRates(class_name=name, images=int((labels == k).sum()), sensitivity=_value(point_sensitivity[k]),
                   specificity=_value(point_specificity[k]), sensitivity_ci=percentile_interval(sensitivity[:, k]),
                   specificity_ci=percentile_interval(specificity[:, k]))
        for k, name in enumerate(class_names)
    ]
    return Uncertainty(intervals=intervals, per_class=per_class,
                       bootstrap=BootstrapSettings(resamples=resamples, seed=seed))

"""`fpt compare`: is one run's AUC higher than another's on the same images, or is the difference noise?

Both runs' predictions of one split (predictions_<split>_<checkpoint>.csv, stages/runs/run_folder.py)
are matched by sample id; they must hold the same images with the same labels and classes.

- **Paired bootstrap** (every task): the class-stratified resamples of stages/runs/bootstrap.py, each
  scoring both runs on the same images, give the resampled differences d* = AUC_A* - AUC_B*. The
  interval is the 2.5th and 97.5th percentiles of d*; the two-sided p-value is the smallest level at
  which the percentile interval leaves out 0, 2 min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1), at most
  1. So p < 0.05 exactly where the 95 % interval leaves out 0 (up to the +1s), a run compared with itself
  gets 1, and no p is below 2 / (B + 1), about 0.001 for 2,000 resamples: more resamples cannot find
  more than that the difference is never reversed.
- **DeLong's test** (two classes): the variance of the AUC difference from the Mann-Whitney structural
  components (DeLong, DeLong and Clarke-Pearson, Biometrics 1988), computed from midranks (Sun and Xu,
  IEEE SPL 2014); z = difference / its standard error, p = 2 (1 - Phi(|z|)). It needs no resampling,
  and agrees with the bootstrap when the test set is not tiny.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from scipy.stats import norm, rankdata

from fpt.cache.errors import UserError
from fpt.stages.runs.bootstrap import (
    RESAMPLES, SEED, BootstrapSettings, Interval, percentile_interval, resample_counts, resample_indices,
)
from fpt.stages.runs.metrics import auc_score, weighted_auc
from fpt.stages.runs.run_folder import SplitPredictions, read_predictions


class AucComparison(BaseModel):
    """Two runs' AUCs on the same images, their difference (A - B) and how likely it is noise."""

    run_a: Path
    run_b: Path
    split: str
    checkpoint: str
    num_samples: int
    class_names: list[str]
    auc_a: float
    auc_b: float
    auc_a_ci: Interval
    auc_b_ci: Interval
    difference: float  # auc_a - auc_b
    difference_ci: Interval
    p_value: float  # paired bootstrap, two-sided
    delong_z: float | None = None  # DeLong's test, two classes only
    delong_p: float | None = None
    bootstrap: BootstrapSettings


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided: the smallest level at which the percentile interval of the resampled differences
    leaves out 0, with the +1 of a resampling test (never 0)."""
    below, above = int((differences <= 0).sum()), int((differences >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (len(differences) + 1))


def structural_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 (per positive image: the share of negatives it outranks, ties counting one half)
    and V01 (per negative image: the share of positives that outrank it), from midranks."""
    positive = labels == 1
    ranks = rankdata(scores)
    v10 = (ranks[positive] - rankdata(scores[positive])) / (~positive).sum()
    v01 = 1 - (ranks[~positive] - rankdata(scores[~positive])) / positive.sum()
    return v10, v01


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[float, float] | None:
    """(z, two-sided p) of DeLong's test of AUC_A = AUC_B for a binary task's positive-class scores;
    None with fewer than two images of either class. Equal AUCs with no variance: z 0, p 1."""
    positives, negatives = int((labels == 1).sum()), int((labels != 1).sum())
    if positives < 2 or negatives < 2:
        return None
    (v10_a, v01_a), (v10_b, v01_b) = structural_components(labels, scores_a), structural_components(labels, scores_b)
    covariance = np.cov(np.stack([v10_a, v10_b])) / positives + np.cov(np.stack([v01_a, v01_b])) / negatives
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = v10_a.mean() - v10_b.mean()
    if variance <= 1e-15:
        return (0.0, 1.0) if abs(difference) < 1e-12 else None
    z = difference / math.sqrt(variance)
    return float(z), float(2 * norm.sf(abs(z)))


def _predictions(run_dir: Path, split: str, checkpoint: str) -> SplitPredictions:
    path = run_dir / f"predictions_{split}_{checkpoint}.csv"
    if not path.is_file():
        hint = (f"`fpt evaluate --run {run_dir} --split {split} --checkpoint {checkpoint}` writes it"
                if (run_dir / "run.json").is_file() else "give a run folder written by `fpt train-side` or `fpt sweep`")
        raise UserError(f"{run_dir} has no {path.name}, the predictions `fpt compare` reads.", f"{hint.capitalize()}.")
    return read_predictions(path)


def _examples(ids: list[str] | set[str]) -> str:
    shown = sorted(ids)[:3]
    return ", ".join(shown) + (", ..." if len(ids) > 3 else "")


def matched_predictions(run_a: Path, run_b: Path, split: str,
                        checkpoint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels and both runs' probabilities of the same images, in run A's order; refuses runs whose
    predictions do not hold the same images with the same labels and classes."""
    a, b = _predictions(run_a, split, checkpoint), _predictions(run_b, split, checkpoint)
    fix = ("A paired comparison needs both runs' predictions of the same images: compare runs trained on caches "
           f"of the same dataset, whose {split} splits hold the same images with the same labels.")
    if a.class_names != b.class_names:
        raise UserError(f"{run_a} and {run_b} do not classify into the same classes ({', '.join(a.class_names)} "
                        f"against {', '.join(b.class_names)}).", fix)
    for run, predictions in ((run_a, a), (run_b, b)):
        if len(set(predictions.sample_ids)) != len(predictions.sample_ids):
            raise UserError(f"{run}'s predictions_{split}_{checkpoint}.csv lists some images twice, so its images "
                            "cannot be matched with the other run's.", fix)
    only_a, only_b = set(a.sample_ids) - set(b.sample_ids), set(b.sample_ids) - set(a.sample_ids)
    if only_a or only_b:
        raise UserError(f"{run_a} and {run_b} were not tested on the same images: {len(only_a)} of the {split} split's "
                        f"images are only in the first ({_examples(only_a) or 'none'}) and {len(only_b)} only in the "
                        f"second ({_examples(only_b) or 'none'}).", fix)
    position = {sample: row for row, sample in enumerate(b.sample_ids)}
    order = np.array([position[sample] for sample in a.sample_ids], dtype=np.intp)
    labels, labels_b = np.asarray(a.labels), np.asarray(b.labels)[order]
    differ = [sample for sample, x, y in zip(a.sample_ids, labels, labels_b) if x != y]
    if differ:
        raise UserError(f"{run_a} and {run_b} give {len(differ)} of the same {split} images different labels "
                        f"({_examples(differ)}).", fix)
    return labels, np.asarray(a.probabilities), np.asarray(b.probabilities)[order], a.class_names


def compare_runs(run_a: Path, run_b: Path, split: str = "test", checkpoint: str = "best",
                 resamples: int = RESAMPLES, seed: int = SEED) -> AucComparison:
    """Paired bootstrap (and, for two classes, DeLong's test) of two runs' AUC difference on one split."""
    run_a, run_b = Path(run_a), Path(run_b)
    labels, probabilities_a, probabilities_b, class_names = matched_predictions(run_a, run_b, split, checkpoint)
    if len(np.unique(labels)) < 2:
        raise UserError(f"The {split} split holds images of one class only, so it has no AUC to compare.",
                        "Compare the runs on a split with images of at least two classes (--split).")
    counts = resample_counts(resample_indices(labels, resamples, seed), len(labels))
    resampled_a = weighted_auc(labels, probabilities_a, counts)
    resampled_b = weighted_auc(labels, probabilities_b, counts)
    auc_a, auc_b = auc_score(labels, probabilities_a), auc_score(labels, probabilities_b)
    delong = delong_test(labels, probabilities_a[:, 1], probabilities_b[:, 1]) if len(class_names) == 2 else None
    return AucComparison(
        run_a=run_a, run_b=run_b, split=split, checkpoint=checkpoint, num_samples=len(labels),
        class_names=class_names, auc_a=auc_a, auc_b=auc_b, auc_a_ci=percentile_interval(resampled_a),
        auc_b_ci=percentile_interval(resampled_b), difference=auc_a - auc_b,
        difference_ci=percentile_interval(resampled_a - resampled_b),
        p_value=bootstrap_p_value(resampled_a - resampled_b),
        delong_z=delong[0] if delong else None, delong_p=delong[1] if delong else None,
        bootstrap=BootstrapSettings(resamples=resamples, seed=seed),
    )

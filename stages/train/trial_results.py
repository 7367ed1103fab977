"""What a trial's predictions become in its run folder: the end of each epoch, the test results
of its last and best models, and final_metrics.json with the run's report when it finishes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fpt.stages.core.files import copy_file, write_json
from fpt.stages.explain.gallery import why_no_gallery, write_gallery
from fpt.stages.runs.bootstrap import bootstrap_uncertainty
from fpt.stages.runs.metrics import classification_metrics
from fpt.stages.runs.run_folder import load_checkpoint, write_predictions
from fpt.stages.runs.run_summary import summarize_run
from fpt.stages.train.best_epoch import record_epoch
from fpt.stages.train.recipe import EpochRecord, TrainResult
from fpt.stages.train.resume_state import resume_path
from fpt.stages.train.trial_state import PackedTrial, TestPredictions

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # sample indices, labels, probabilities, mean loss


def end_epoch(trial: PackedTrial, epoch: int, seconds: float, prediction: Prediction, keep_weights: bool) -> str:
    """The epoch's validation metrics, checkpoints and metrics line (stages/train/best_epoch.py), and its
    line in train.log and the trackers, which it returns; the trial's running loss starts again.
    keep_weights: for a pack that keeps resume states."""
    _, labels, probabilities, loss = prediction
    val = classification_metrics(labels, probabilities, loss)
    record = EpochRecord(epoch=epoch, train_loss=trial.loss_sum / max(trial.seen, 1),
                         lr=trial.scheduler.get_last_lr()[0], seconds=seconds, val=val)
    trial.best = record_epoch(trial.run_dir, trial.model, record, trial.best, epoch == trial.epochs, keep_weights)
    trial.loss_sum, trial.seen = 0.0, 0
    trial.last_val = val
    return trial.tracker.epoch(epoch, trial.epochs, record.train_loss, record.lr, seconds, val)


PRUNED_FILE = "pruned.json"


def prune(trial: PackedTrial, epoch: int) -> None:
    """Stop the trial after `epoch`: a search judged it not promising. Its run folder keeps its epochs
    (metrics.jsonl, best checkpoint) and gets pruned.json; it keeps no resume state, so it never goes on."""
    trial.pruned_at = epoch
    best = trial.best
    write_json(trial.run_dir / PRUNED_FILE, {"epoch": epoch, "val": trial.last_val.model_dump() if trial.last_val else None,
                                             "best_epoch": best.epoch if best else None,
                                             "best_val": best.val.model_dump() if best else None})
    resume_path(trial.run_dir).unlink(missing_ok=True)
    trial.tracker.line(f"pruned after epoch {epoch}: the search stopped it as not promising")
    trial.tracker.close()


def record_test(trial: PackedTrial, which: str, prediction: Prediction, sample_ids: list[str],
                class_names: list[str]) -> None:
    """The test metrics and predictions_test_<which>.csv of the trial's `which` ("last", "best") model."""
    indices, labels, probabilities, loss = prediction
    trial.tests[which] = classification_metrics(labels, probabilities, loss)
    trial.tracker.test(which, trial.tests[which], trial.epochs)
    trial.test_predictions[which] = TestPredictions(labels, probabilities, class_names)
    write_predictions(trial.run_dir / f"predictions_test_{which}.csv", [sample_ids[i] for i in indices],
                      labels, probabilities, class_names)


def best_is_last(trial: PackedTrial) -> None:
    """The best epoch is the last one: the best model's test results are the last model's."""
    trial.tests["best"] = trial.tests["last"]
    trial.tracker.test("best", trial.tests["best"], trial.epochs)
    trial.test_predictions["best"] = trial.test_predictions["last"]
    copy_file(trial.run_dir / "predictions_test_last.csv", trial.run_dir / "predictions_test_best.csv")


def load_best(trial: PackedTrial) -> None:
    """The trial's model as it was at its best epoch."""
    load_checkpoint(trial.run_dir / "checkpoints" / "best.safetensors", trial.model)


def finish(trial: PackedTrial, cache: Path, began: float, draw_pictures: bool) -> TrainResult:
    """final_metrics.json and the report of a trained and tested trial; `began`: when its pack started.

    The test scores get bootstrap intervals and per-class rates (stages/runs/bootstrap.py) in every
    trial, a sweep's included: 2,000 resamples cost about 15 ms for 120 test images and 0.6 s for 4,105
    (DDR's test split) per model, against minutes of training.
    """
    if trial.best is None:
        raise RuntimeError(f"The trial {trial.run_dir} has no scored epoch: its validation scores were all NaN.")
    last = bootstrap_uncertainty(*trial.test_predictions["last"])
    same = trial.test_predictions["best"] is trial.test_predictions["last"]  # the best epoch was the last
    best = last if same else bootstrap_uncertainty(*trial.test_predictions["best"])
    result = TrainResult(
        run_dir=trial.run_dir, cache=cache, best_epoch=trial.best.epoch, best_val=trial.best.val,
        test_best=trial.tests["best"], test_last=trial.tests["last"], learnable_params=trial.learnable,
        seconds=time.perf_counter() - began, test_best_ci=best.intervals, test_last_ci=last.intervals,
        test_best_per_class=best.per_class, test_last_per_class=last.per_class, bootstrap=best.bootstrap,
    )
    write_json(trial.run_dir / "final_metrics.json", result.model_dump(mode="json"))
    resume_path(trial.run_dir).unlink(missing_ok=True)  # finished: nothing left to resume
    if draw_pictures and why_no_gallery(trial.run_dir) is None:
        write_gallery(trial.run_dir)  # heatmaps of a few test images, for the report (seconds, from the cache)
    summarize_run(trial.run_dir, draw_pictures)
    trial.tracker.line(f"finished in {result.seconds:.1f} s: best epoch {result.best_epoch}, test AUC of the best model "
                       f"{result.test_best.auc:.4f}, of the final one {result.test_last.auc:.4f}")
    trial.tracker.close()
    return result

"""A trial's best epoch, and the files an epoch leaves in its run folder.

The best epoch is the one with the highest validation AUC, or accuracy where the AUC is undefined
(a class absent from the split). `checkpoints/best.safetensors` holds the best epoch's model,
`checkpoints/last.safetensors` the last epoch's (a copy of the best when they are the same epoch),
and `metrics.jsonl` one line per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fpt.stages.core.files import append_jsonl, copy_file
from fpt.stages.model.fpt_model import FPTPlus
from fpt.stages.runs.metrics import Metrics
from fpt.stages.runs.run_folder import save_checkpoint
from fpt.stages.train.recipe import EpochRecord


@dataclass(frozen=True)
class BestEpoch:
    """The best epoch of a trial so far, with its validation metrics."""

    score: float
    epoch: int
    val: Metrics
    weights: dict[str, torch.Tensor] | None  # a copy of its model's weights, kept for the resume state only


def epoch_score(val: Metrics) -> float:
    """What the best epoch is chosen by: the validation AUC, or the accuracy where the AUC is NaN."""
    return val.auc if not math.isnan(val.auc) else val.accuracy


def improves(score: float, best: BestEpoch | None) -> bool:
    """Whether an epoch scoring `score` is the new best: any score beats no best epoch, a NaN score never wins."""
    return score > (best.score if best is not None else -math.inf)


def record_epoch(run_dir: Path, model: FPTPlus, record: EpochRecord, best: BestEpoch | None, final: bool,
                 keep_weights: bool) -> BestEpoch | None:
    """Write an epoch's checkpoints and its line of metrics.jsonl; returns the best epoch after it.

    final: the trial's last epoch, whose model is kept as last.safetensors; keep_weights: keep a copy
    of a new best model's weights in memory, for a run that keeps resume states.
    """
    checkpoints = run_dir / "checkpoints"
    # checkpoints first, the epoch's metrics line after them: a write that fails (a full disk) leaves
    # no line for an epoch whose files are not all written (the resume state comes last of all)
    score = epoch_score(record.val)
    if improves(score, best):
        save_checkpoint(checkpoints / "best.safetensors", model, {"epoch": str(record.epoch)})
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if keep_weights else None
        best = BestEpoch(score, record.epoch, record.val, weights)
    if final:
        if best is not None and best.epoch == record.epoch:
            copy_file(checkpoints / "best.safetensors", checkpoints / "last.safetensors")
        else:
            save_checkpoint(checkpoints / "last.safetensors", model, {"epoch": str(record.epoch)})
    append_jsonl(run_dir / "metrics.jsonl", record.model_dump())
    return best

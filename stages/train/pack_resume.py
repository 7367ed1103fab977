"""A pack's resume states: each trial's kept after every epoch it trains, and a pack put back from them.

A trial's state (stages/train/resume_state.py) holds its own model, optimiser, schedule, dropout
stream and best epoch, and the streams the pack shares: the augmentation's and the training split's
shuffle order. Those are the same in every state a pack keeps, so a resumed pack takes them from
its first trial's state.
"""

from __future__ import annotations

import math
from typing import Any

from fpt.stages.runs.metrics import Metrics
from fpt.stages.runs.run_folder import save_tensors
from fpt.stages.train.best_epoch import BestEpoch
from fpt.stages.train.pack_batches import PackBatches
from fpt.stages.train.resume_state import keep_epoch_lines, save_resume_state
from fpt.stages.train.trial_state import PackedTrial


class PackResume:
    """The resume states of a pack reading `batches`; `epochs_done`: the last epoch they hold."""

    def __init__(self, batches: PackBatches) -> None:
        self.batches = batches
        self.epochs_done = 0

    def save(self, trial: PackedTrial, epoch: int) -> None:
        """The trial's state at the end of `epoch`, replacing the one it had."""
        batches = self.batches
        save_resume_state(trial.run_dir, {
            "epoch": epoch,
            "model": {name: tensor.detach().cpu() for name, tensor in trial.model.state_dict().items()},
            "optimizer": trial.optimizer.state_dict(),
            "scheduler": trial.scheduler.state_dict(),
            "dropout_stream": trial.stream.state,
            "augment_crops": batches.crop_generator.get_state(),
            "augment_generator": batches.generator.get_state(),
            "shuffle": batches.train.rng.bit_generator.state,
            **_best_to_state(trial.best),
        })
        self.epochs_done = epoch

    def restore_shared(self, state: dict[str, Any]) -> None:
        """The pack's own streams (augmentation, shuffle order) as they were at the end of the state's epoch."""
        batches = self.batches
        # a state that keeps the crops' stream as a private torch stream's (CPU, CUDA) states: its CPU one
        crops = state["augment_crops"] if "augment_crops" in state else state["augment_stream"][0]
        batches.crop_generator.set_state(crops)
        batches.generator.set_state(state["augment_generator"])
        batches.train.rng.bit_generator.state = state["shuffle"]
        self.epochs_done = state["epoch"]

    @staticmethod
    def restore(trial: PackedTrial, state: dict[str, Any]) -> None:
        """Put the trial back as it was at the end of the state's epoch: its best checkpoint and its
        lines of metrics.jsonl too, which a crash after the state was kept may have left an epoch ahead."""
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
        trial.scheduler.load_state_dict(state["scheduler"])
        trial.stream.state = state["dropout_stream"]
        trial.best = _best_from_state(state)
        if trial.best is not None and trial.best.weights is not None:
            save_tensors(trial.run_dir / "checkpoints" / "best.safetensors", trial.best.weights,
                         {"epoch": str(trial.best.epoch)})
        keep_epoch_lines(trial.run_dir, state["epoch"])


def _best_to_state(best: BestEpoch | None) -> dict[str, Any]:
    """The best epoch as a resume state keeps it; no best epoch yet is a score of -inf at epoch 0."""
    if best is None:
        return {"best_score": -math.inf, "best_epoch": 0, "best_val": None, "best_weights": None}
    return {"best_score": best.score, "best_epoch": best.epoch, "best_val": best.val.model_dump(),
            "best_weights": best.weights}


def _best_from_state(state: dict[str, Any]) -> BestEpoch | None:
    """The best epoch a resume state holds (None before the first epoch was scored)."""
    if state["best_val"] is None:
        return None
    return BestEpoch(state["best_score"], state["best_epoch"], Metrics.model_validate(state["best_val"]),
                     state["best_weights"])

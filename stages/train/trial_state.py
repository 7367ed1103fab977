"""One trial of a pack: what it trains with, and what its training has reached.

A `PackedTrial` is built whole by stages/train/trial_setup.py (model, optimiser, schedule, random
stream and run folder all exist from the start); what changes as it trains is the running loss of
the epoch, the best epoch, the test results and, once something fails, its error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fpt.stages.core.precision import TrainPrecision
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.model.flat_parameters import FlatParameters
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.runs.metrics import Metrics
from fpt.stages.runs.tracking import RunTracker
from fpt.stages.train.best_epoch import BestEpoch
from fpt.stages.train.rng_stream import RngStream
from fpt.stages.train.stacked_step import StepMember


class TestPredictions(NamedTuple):
    """A model's predictions on the test split."""

    labels: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, classes)
    class_names: list[str]


@dataclass
class PackedTrial:
    """One model of a pack with its optimiser, schedule, random stream and run folder."""

    config: PipelineConfig
    run_dir: Path
    source: Path  # the dataset source the cache was checked against for this trial (run.json)
    spec: ModelSpec
    model: FPTPlus
    # the model's parameters in one buffer, for a model that is stacked; None for a model trained
    # through its own forward, because the stacked forward cannot reproduce it (see `stackable`)
    flat: FlatParameters | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: RngStream  # the model's own random stream: its initialisation and its dropout draw from it
    lr: float
    learnable: int
    tracker: RunTracker  # train.log and the trackers train.loggers names
    class_weights: torch.Tensor | None  # (C,) weights of its training cross-entropy (train.class_weights), on its device
    precision: TrainPrecision  # its training forward's arithmetic: train.precision resolved for its device
    best: BestEpoch | None = None  # None until an epoch has been scored
    loss_sum: float = 0.0  # the epoch's training loss so far, summed over its samples
    seen: int = 0
    tests: dict[str, Metrics] = field(default_factory=dict)  # "last" and "best": the test metrics of those models
    # "last" and "best": those models' test predictions, for the intervals in final_metrics.json
    test_predictions: dict[str, TestPredictions] = field(default_factory=dict)
    error: str | None = None  # what stopped the trial, in a pack that isolates failures
    last_val: Metrics | None = None  # the validation metrics of its latest epoch
    pruned_at: int | None = None  # the epoch after which a search stopped it as not promising

    @property
    def ok(self) -> bool:
        """Neither failed nor pruned: it trains, and is tested when its epochs are done."""
        return self.error is None and self.pruned_at is None

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    def member(self) -> StepMember:
        """What the trial's model needs for its own share of a stacked step."""
        return StepMember(self.model, self.optimizer, self.scheduler, self.stream, self.config.train.grad_clip,
                          self.class_weights, self.precision)

    def count(self, loss: float, samples: int) -> None:
        """Add a step's mean training loss over `samples` samples to the epoch's running loss."""
        self.loss_sum += loss * samples
        self.seen += samples

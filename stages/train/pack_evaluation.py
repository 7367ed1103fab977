"""Evaluating a pack's models on one read of a split: the validation split after every epoch, and
the test split for the last and the best model of every trial once training ends.

The models are evaluated in their stacks (each stack's parameters gathered once, as they do not
change while evaluating), in the stack threads if the pack has them. Where failures are isolated,
a split that fails for the pack is evaluated again one model at a time, to find the failing ones.
"""

from __future__ import annotations

import torch

from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.pack_batches import PackBatches
from fpt.stages.train.pack_failures import Isolation
from fpt.stages.train.pack_stacks import PackStacks, StackGroup
from fpt.stages.train.recipe import predict_many, predict_models
from fpt.stages.train.stack_threads import StackThreads
from fpt.stages.train.trial_results import Prediction, best_is_last, load_best, record_test
from fpt.stages.train.trial_state import PackedTrial


class PackEvaluation:
    """Predictions of a pack's models, in the groups of `stacks`."""

    def __init__(self, batches: PackBatches, stacks: PackStacks, threads: StackThreads | None,
                 isolation: Isolation) -> None:
        self.batches = batches
        self.stacks = stacks
        self.threads = threads
        self.isolation = isolation

    def predict(self, trials: list[PackedTrial], split: SplitBatches) -> list[Prediction | None]:
        """Predictions of the split for each trial, in the order given, on one read of it (None for a
        trial that failed on it, where failures are isolated)."""
        if not trials:
            return []
        groups = self.stacks.groups(trials)
        order = [t for g in groups for t in g.trials]
        for group in groups:
            if group.stack is None:  # its module's own forward, without dropout
                group.trials[0].model.eval()

        # the stacked parameters are gathered once: they do not change while evaluating
        stacked = [None if group.stack is None else group.stack.parameters() for group in groups]

        def logits_of(images: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
            def forward(group: StackGroup, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
                with torch.no_grad():  # no_grad is per thread: a stack thread does not inherit it
                    if group.stack is None:
                        return group.trials[0].model(images, keys, values).unsqueeze(0)
                    return group.stack.forward(params, images, keys, values)

            if self.threads is None:
                return torch.cat([forward(group, params) for group, params in zip(groups, stacked)])
            # the stacks in the stack threads, as they train; a model trained unstacked here
            stacks = [(group, params) for group, params in zip(groups, stacked) if group.stack is not None]
            threaded = iter(self.threads.map(forward, [g for g, _ in stacks], [p for _, p in stacks]))
            return torch.cat([forward(group, None) if group.stack is None else next(threaded) for group in groups])

        batches = self.batches

        def predict() -> list[Prediction | None]:
            found = predict_many(logits_of, len(order), split, batches.metadata, batches.side_size, batches.device,
                                 batches.prefetch)
            by_trial = {id(t): p for t, p in zip(order, found)}
            return [by_trial[id(t)] for t in trials]

        if self.isolation.isolate:
            try:
                return predict()
            except Exception:  # find the failing model(s) one at a time
                return [self.isolation.guard(t, lambda t=t: predict_models(
                    [t.model], split, batches.metadata, batches.side_size, batches.device, batches.prefetch)[0])
                    for t in trials]
        return predict()

    def test(self, trials: list[PackedTrial]) -> None:
        """The test results of each trial's last model, then of its best model: the last model's again
        where the best epoch is the last one, else the best checkpoint's, loaded."""
        sample_ids = self.batches.reader.sample_ids()
        class_names = self.batches.metadata.class_names
        guard = self.isolation.guard
        for trial, prediction in zip(trials, self.predict(trials, self.batches.test)):
            if prediction is not None:
                guard(trial, record_test, trial, "last", prediction, sample_ids, class_names)
        # a trial whose best epoch is its last has one model: its test results are already made
        for trial in trials:
            if trial.ok and trial.best is not None and trial.best.epoch == trial.epochs and "last" in trial.tests:
                guard(trial, best_is_last, trial)
        trials = [t for t in trials if t.ok and "best" not in t.tests]
        for trial in trials:
            guard(trial, load_best, trial)
        trials = [t for t in trials if t.ok]
        for trial, prediction in zip(trials, self.predict(trials, self.batches.test)):
            if prediction is not None:
                guard(trial, record_test, trial, "best", prediction, sample_ids, class_names)

"""One training step of every model of a pack on a shared batch.

The stacks step side by side in the stack threads, if the pack has them; a model the stacked forward
cannot reproduce steps through its own forward. Random draws stay in the pack's own thread, as a
model's random stream is swapped into torch's global generator while it draws: the models trained
unstacked step there, and the stacks' dropout masks are drawn there before the stacks run.

A stack that fails (out of memory for 16 stacked models, say) is split where failures are isolated,
each of its trials stepping again in a stack of its own, so the failure is pinned on its trial.
"""

from __future__ import annotations

import torch

from fpt.stages.train.pack_failures import Isolation
from fpt.stages.train.pack_stacks import PackStacks, StackGroup
from fpt.stages.train.recipe import optimization_step
from fpt.stages.train.stack_threads import StackThreads
from fpt.stages.train.stacked_step import dropout_masks, member_update, stacked_losses
from fpt.stages.train.trial_state import PackedTrial


class PackStep:
    """Steps the trials in training on a batch, in the groups of `stacks`."""

    def __init__(self, stacks: PackStacks, threads: StackThreads | None, isolation: Isolation) -> None:
        self.stacks = stacks
        self.threads = threads
        self.isolation = isolation

    def step(self, trials: list[PackedTrial], images: torch.Tensor, keys: torch.Tensor | None,
             values: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Every model's step on the batch; each trial's training loss is counted in its epoch's."""
        groups = self.stacks.groups(trials)
        stacks = [g for g in groups if g.stack is not None and any(t.ok for t in g.trials)]
        for group in groups:
            if group.stack is None:
                self._train_step(group, images, keys, values, labels)
        masks = [dropout_masks(g.stack, [t.stream for t in g.trials], len(labels), images.device) for g in stacks]
        if self.threads is None:
            for group, mask in zip(stacks, masks):
                self._train_step(group, images, keys, values, labels, mask)
        else:
            self.threads.map(lambda group, mask: self._train_step(group, images, keys, values, labels, mask),
                             stacks, masks)

    def _train_step(self, group: StackGroup, images: torch.Tensor, keys: torch.Tensor | None,
                    values: torch.Tensor | None, labels: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        """One step of a group; `masks`: a stack's dropout masks, drawn by `step` (None: no dropout)."""
        guard = self.isolation.guard
        if group.stack is None:
            (trial,) = group.trials
            guard(trial, self._step_unstacked, trial, images, keys, values, labels)
            return
        if not any(t.ok for t in group.trials):
            return
        streams = [t.stream for t in group.trials]
        weights = [t.class_weights for t in group.trials]
        precision = group.trials[0].precision  # one per stack (PackStacks)
        if len(group.trials) == 1:  # a stack of one: its failure is its trial's own
            losses = guard(group.trials[0], stacked_losses, group.stack, streams, images, keys, values, labels, masks,
                           weights, precision)
            if losses is None:
                return
        else:
            try:
                losses = stacked_losses(group.stack, streams, images, keys, values, labels, masks, weights, precision)
            except Exception:
                if not self.isolation.isolate:
                    raise
                row = {id(t): k for k, t in enumerate(group.trials)}
                for single in self.stacks.split(group):
                    k = row[id(single.trials[0])]
                    self._train_step(single, images, keys, values, labels, None if masks is None else masks[k:k + 1])
                return
        for trial, loss in zip(group.trials, losses.tolist()):
            guard(trial, self._update, trial, loss, len(labels))

    @staticmethod
    def _step_unstacked(trial: PackedTrial, images: torch.Tensor, keys: torch.Tensor | None,
                        values: torch.Tensor | None, labels: torch.Tensor) -> None:
        """The module's own forward, for a model the stacked forward cannot reproduce."""
        with trial.stream:
            if not trial.model.training:  # after an evaluation; train() walks every module
                trial.model.train()
            loss = optimization_step(trial.model, trial.optimizer, trial.scheduler, images, keys, values, labels,
                                     trial.config.train.grad_clip, trial.class_weights, trial.precision)
        trial.count(loss.item(), len(labels))

    @staticmethod
    def _update(trial: PackedTrial, loss: float, count: int) -> None:
        """A stacked model's own update after the stack's backward pass."""
        member_update(trial.member())
        trial.count(loss, count)

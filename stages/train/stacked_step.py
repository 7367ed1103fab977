"""One optimisation step of the recipe for K stacked models on one batch.

Each model gets its own cross-entropy (with its own class weights, if it has them); one backward through the stacked forward gives every
model the gradient of its own loss (the models share no parameter, so the gradient of the sum is
each model's own). Then each model takes its own step: gradient-norm clipping, AdamW with its
own learning rate and weight decay, and its own per-step schedule. The fusion dropout masks are
drawn from each model's own random stream, so a model steps the same in a pack of 16 as alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpt.stages.core.precision import TrainPrecision, arithmetic
from fpt.stages.model.fpt_model import FPTPlus
from fpt.stages.model.stacked_model import StackedModels
from fpt.stages.train.recipe import recipe_update, training_losses
from fpt.stages.train.rng_stream import RngStream


@dataclass
class StepMember:
    """What one model of a stack needs for its own share of the step."""

    model: FPTPlus
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: RngStream
    grad_clip: float
    class_weights: torch.Tensor | None = None  # (C,) weights of its cross-entropy, None for the plain one
    precision: TrainPrecision = "fp32"  # the arithmetic of its forward (train.precision resolved)


def dropout_masks(stack: StackedModels, streams: list[RngStream], batch_size: int,
                  device: torch.device) -> torch.Tensor | None:
    """(K, B, L, M, d) inverted-dropout masks of the fusion outputs, model k's drawn from streams[k]."""
    p = stack.fusion_dropout
    if not stack.spec.use_prompts or p == 0:
        return None
    keep = 1 - p
    masks = torch.empty((len(streams), *stack.dropout_mask_shape(batch_size)), device=device)
    for k, stream in enumerate(streams):
        with stream:
            # uniform draws kept below 1 - p: a Bernoulli(1 - p) mask, drawn 2.5x faster on the CPU
            # than bernoulli_, whose scalar path does not vectorise
            torch.rand(masks.shape[1:], device=device, out=masks[k])
    return masks.lt_(keep).div_(keep)


def stacked_losses(stack: StackedModels, streams: list[RngStream], images: torch.Tensor, keys: torch.Tensor | None,
                   values: torch.Tensor | None, labels: torch.Tensor, masks: torch.Tensor | None = None,
                   class_weights: list[torch.Tensor | None] | None = None,
                   precision: TrainPrecision = "fp32") -> torch.Tensor:
    """Back-propagate every model's training loss on the batch; each model's parameters get its
    gradient (`.grad`). Returns the K losses, detached. `masks`: the step's dropout masks if the
    caller drew them already (`dropout_masks`), else they are drawn here from `streams`;
    `class_weights`: each model's cross-entropy weights (None: plain cross-entropy for all);
    `precision`: the arithmetic of the forward and the losses (stages/core/precision.py). Autocast
    casts the stacked fp32 parameters to bf16 where a product uses them, so its backward hands the
    leaves fp32 gradients; it is entered here, in the thread that runs the stack."""
    leaves = stack.leaves()
    if masks is None:
        masks = dropout_masks(stack, streams, len(labels), images.device)
    with arithmetic(precision, images.device):
        logits = stack.forward(leaves, images, keys, values, masks)
        losses = training_losses(logits, labels, class_weights or [None] * len(streams))
    losses.sum().backward()
    stack.hand_back_gradients(leaves)
    return losses.detach()


def member_update(member: StepMember) -> None:
    """The model's own gradient clipping, AdamW step and schedule step, after `stacked_losses`."""
    recipe_update(member.optimizer, member.scheduler, member.grad_clip)
    member.optimizer.zero_grad(set_to_none=True)


def step_together(stack: StackedModels, members: list[StepMember], images: torch.Tensor, keys: torch.Tensor | None,
                  values: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """One full step of every model of the stack, all in one precision; returns the K training losses."""
    if len({m.precision for m in members}) > 1:
        raise ValueError("the models of a stack step in one precision")
    losses = stacked_losses(stack, [m.stream for m in members], images, keys, values, labels,
                            class_weights=[m.class_weights for m in members], precision=members[0].precision)
    for member in members:
        member_update(member)
    return losses

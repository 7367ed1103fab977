"""A model's parameters gathered into one contiguous buffer, so its optimiser steps one tensor.

torch's AdamW, fused or not, walks its parameters in Python on every step: for the side network
and fusion modules that is 85 tensors, and a pack of 16 models would pay ~40 ms a step for
updates whose arithmetic takes a few (bench/README.md). AdamW and gradient clipping treat every
number alike (one learning rate, one weight decay, one norm over all gradients), so stepping the
buffer is the same recipe. The model keeps its ordinary parameters (checkpoints, evaluation, loading
the best weights write and read the buffer through them); only the optimiser sees the buffer.
"""

from __future__ import annotations

import torch
from torch import nn


class FlatParameters:
    """`model`'s parameters re-pointed at consecutive slices of `buffer` (1-D, in `named_parameters` order)."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        first = named[0][1]
        if any(p.dtype != first.dtype or p.device != first.device for _, p in named):
            raise ValueError("one buffer needs all parameters on one device in one dtype")
        if not all(p.requires_grad for _, p in named):
            raise ValueError("a frozen parameter would be stepped with the buffer")
        self.model = model
        self.layout: list[tuple[str, int, torch.Size]] = []
        total = 0
        for name, parameter in named:
            self.layout.append((name, total, parameter.shape))
            total += parameter.numel()
        self.buffer = torch.empty(total, dtype=first.dtype, device=first.device)
        for (_, offset, shape), (_, parameter) in zip(self.layout, named):
            view = self.buffer[offset:offset + parameter.numel()].view(shape)
            view.copy_(parameter.detach())
            parameter.data = view

    def gradients(self) -> dict[str, torch.Tensor]:
        """Each parameter's gradient as a view of the buffer's gradient (after a stacked backward)."""
        grad = self.buffer.grad
        if grad is None:
            return {}
        return {name: grad[offset:offset + shape.numel()].view(shape) for name, offset, shape in self.layout}

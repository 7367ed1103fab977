"""The side network's input: stored uint8 side images as normalised float tensors, plainly resized to s
(evaluation, prediction, explanation; training augments them instead: stages/train/augment.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], in_place: bool = False
              ) -> torch.Tensor:
    """(images - mean) / std per channel; `in_place` writes it into `images` (no new batch allocated)."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images.sub_(mean_t) if in_place else images - mean_t).div_(std_t)


def eval_images(images: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    batch = to_float_images(images)
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return normalize(batch, mean, std)

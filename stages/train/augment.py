"""Side-image preparation: augmentation for training, plain resize for evaluation.

Only the side image is augmented; the cached LPM features come from the plain resized image
(METHOD.md). Crops and photometric jitter use torchvision's own functional transforms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from fpt.stages.core.settings import AugmentConfig


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def eval_images(images: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    batch = to_float_images(images)
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return normalize(batch, mean, std)


def train_images(
    images: np.ndarray, size: int, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    batch = to_float_images(images)
    out = []
    for image in batch:
        top, left, height, width = RandomResizedCrop.get_params(image, list(config.crop_scale), list(config.crop_ratio))
        image = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
        if torch.rand((), generator=generator) < config.hflip:
            image = TF.hflip(image)
        if config.brightness > 0:
            factor = 1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.brightness
            image = TF.adjust_brightness(image, factor)
        if config.contrast > 0:
            factor = 1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.contrast
            image = TF.adjust_contrast(image, factor)
        out.append(image)
    return normalize(torch.stack(out), mean, std)

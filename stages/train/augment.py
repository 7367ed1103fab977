"""Side-image augmentation for training (the plain resize for evaluation is stages/model/side_input.py).

Only the side image is augmented; the cached LPM features come from the plain resized image
(docs/method.md). Each image gets a random resized crop (torchvision's `get_params`, drawing from
torch's global generator), resized antialiased in uint8 by torchvision's v2 kernel, as the
published recipe's PIL transforms resize uint8 images; then, in float, a horizontal flip and a
brightness and a contrast factor (drawn from `generator`) as torchvision's functional transforms
apply them, bit for bit (tests/test_augment.py). Only the crop goes image by image; the flips and
blends are done for the whole batch at once, with the same float32 operations.

Why uint8 and batched: done image by image in float through torchvision's functions, augmenting a
batch of 16 took 14 ms on one core of the demo's 75 ms training step; the uint8 resize is 7x faster
than the float one (0.75 against 5.2 ms for 16 crops of 144 px to 128) and rounds each crop to
the 1/255 steps the stored image already has (bench/README.md section 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF2

from fpt.stages.core.settings import AugmentConfig
from fpt.stages.model.side_input import normalize

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), as its adjust_contrast uses them
LUMA = (0.2989, 0.587, 0.114)


def train_images(
    images: np.ndarray, size: int, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
    count = len(batch)
    crops, flips, brightness, contrast = [], [], [], []
    for image in batch:  # the draws in torchvision's order, image by image
        top, left, height, width = RandomResizedCrop.get_params(image, list(config.crop_scale), list(config.crop_ratio))
        crops.append(TF2.resized_crop(image, top, left, height, width, [size, size], antialias=True))
        flips.append(bool(torch.rand((), generator=generator) < config.hflip))
        if config.brightness > 0:
            brightness.append(1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.brightness)
        if config.contrast > 0:
            contrast.append(1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.contrast)
    out = torch.stack(crops).float().div_(255.0)
    for i in (i for i, flip in enumerate(flips) if flip):
        out[i] = out[i].flip(-1)
    if brightness:  # torchvision's blend with black: ratio * image, clamped
        out.mul_(_per_image(brightness)).clamp_(0, 1)
    if contrast:  # blend with the mean of the image's grey: ratio * image + (1 - ratio) * mean, clamped
        grey = (LUMA[0] * out[:, 0]).add_(LUMA[1] * out[:, 1]).add_(LUMA[2] * out[:, 2]).unsqueeze(1)
        means = torch.cat([torch.mean(grey[i], dim=(-3, -2, -1), keepdim=True)[None] for i in range(count)])
        out.mul_(_per_image(contrast)).add_(_per_image([1.0 - ratio for ratio in contrast]) * means).clamp_(0, 1)
    return normalize(out, mean, std, in_place=True)


def _per_image(factors: list[float]) -> torch.Tensor:
    """One float32 factor per image, shaped to scale a batch (B, 3, H, W)."""
    return torch.tensor(factors, dtype=torch.float32).view(-1, 1, 1, 1)

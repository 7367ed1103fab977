"""Side-image augmentation for training (the plain resize for evaluation is stages/model/side_input.py).

Only the side image is augmented; the cached LPM features come from the plain resized image
(docs/method.md). Crops and photometric jitter use torchvision's own functional transforms.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from fpt.stages.core.settings import AugmentConfig
from fpt.stages.model.side_input import normalize, to_float_images


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

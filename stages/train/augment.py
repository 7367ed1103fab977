"""Side-image augmentation for training (the plain resize for evaluation is stages/model/side_input.py).

Only the side image is augmented; the cached LPM features come from the plain resized image
(docs/method.md). Each image gets a random resized crop (torchvision's `get_params`, drawing from
`crop_generator` what it draws from torch's global generator: `crop_box`), resized antialiased in
uint8 by torchvision's v2 kernel (as PIL resizes an 8-bit image, in 8 bits); then, in float, a
horizontal flip and a brightness and a contrast factor (drawn from `generator`) as torchvision's
functional transforms apply them, bit for bit (tests/test_augment.py). Both generators are the
caller's own, never torch's global state, so a batch can be augmented in another thread while the
training step draws its dropout. Only the crop goes image by image; the flips and
blends are done for the whole batch at once, with the same float32 operations.

Why uint8 and batched: with the training step at 47 ms a batch on one core for the demo's side
network, the batch's augmentation is what keeps an epoch from the step's own time (bench/README.md
section 1). Done image by image in float through torchvision's functions it took 8.8 ms of CPU time
for 16 side images of 144 px on one core, 3.4 ms in this form (best of 400); the uint8 resize alone is
7x faster than the float one (0.75 against 5.1 ms for 16 crops), and rounds each crop to the 1/255
steps the stored image already has.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF2

from fpt.stages.core.settings import AugmentConfig
from fpt.stages.model.side_input import normalize

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), as its adjust_contrast uses them
LUMA = (0.2989, 0.587, 0.114)


def train_images(
    images: np.ndarray, size: int, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
    generator: torch.Generator, crop_generator: torch.Generator,
) -> torch.Tensor:
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
    crops, flips, brightness, contrast = [], [], [], []
    log_ratio = torch.log(torch.tensor(config.crop_ratio))
    for image in batch:  # the draws in torchvision's order, image by image
        top, left, height, width = crop_box(image.shape[-2], image.shape[-1], config.crop_scale, config.crop_ratio,
                                            log_ratio, crop_generator)
        crops.append(TF2.resize_image(image[:, top : top + height, left : left + width], [size, size], antialias=True))
        flips.append(bool(torch.rand((), generator=generator) < config.hflip))
        if config.brightness > 0:
            brightness.append(1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.brightness)
        if config.contrast > 0:
            contrast.append(1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.contrast)
    # to float32 first, then scaled in place: the same numbers as dividing the uint8 batch, which torch does
    # through a type-promoting path ~20x slower (1.7 ms against 0.08 for 16 crops of 128 px on 2 threads)
    out = torch.stack(crops).to(torch.float32).div_(255.0)
    for i in (i for i, flip in enumerate(flips) if flip):
        out[i] = out[i].flip(-1)
    if brightness:  # torchvision's blend with black: ratio * image, clamped
        out.mul_(_per_image(brightness)).clamp_(0, 1)
    if contrast:  # blend with the mean of the image's grey: ratio * image + (1 - ratio) * mean, clamped
        grey = (LUMA[0] * out[:, 0]).add_(LUMA[1] * out[:, 1]).add_(LUMA[2] * out[:, 2]).unsqueeze(1)
        means = grey.mean(dim=(-3, -2, -1), keepdim=True)  # each image's own mean, as torchvision takes it
        out.mul_(_per_image(contrast)).add_(_per_image([1.0 - ratio for ratio in contrast]) * means).clamp_(0, 1)
    return normalize(out, mean, std, in_place=True)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], log_ratio: torch.Tensor,
             generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's `RandomResizedCrop.get_params`,
    draw for draw as it draws from torch's global generator, here from `generator`, with its float32
    arithmetic, less its per-call set-up (`log_ratio`: the float32 log of `ratio`, computed once a batch)."""
    area = height * width
    low, high = float(log_ratio[0]), float(log_ratio[1])
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(low, high, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return int(top), int(left), h, w
    in_ratio = float(width) / float(height)  # no draw fits: the central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _per_image(factors: list[float]) -> torch.Tensor:
    """One float32 factor per image, shaped to scale a batch (B, 3, H, W)."""
    return torch.tensor(factors, dtype=torch.float32).view(-1, 1, 1, 1)

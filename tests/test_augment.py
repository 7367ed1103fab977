"""Training augmentation: the batched form gives torchvision's per-image transforms bit for bit (the
crop resized in uint8 by its v2 kernel, then flip, brightness and contrast in float)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

from fpt.stages.core.settings import AugmentConfig
from fpt.stages.model.side_input import normalize
from fpt.stages.train.augment import train_images

MEAN, STD = (0.4, 0.3, 0.2), (0.2, 0.25, 0.3)


def torchvision_images(images: np.ndarray, size: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The augmentation written image by image with torchvision's functional transforms."""
    out = []
    for image in torch.from_numpy(images).permute(0, 3, 1, 2):
        top, left, height, width = RandomResizedCrop.get_params(image, list(config.crop_scale), list(config.crop_ratio))
        image = TF2.resized_crop(image, top, left, height, width, [size, size], antialias=True).float() / 255
        if torch.rand((), generator=generator) < config.hflip:
            image = TF.hflip(image)
        if config.brightness > 0:
            image = TF.adjust_brightness(image, 1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.brightness)
        if config.contrast > 0:
            image = TF.adjust_contrast(image, 1 + (torch.rand((), generator=generator).item() * 2 - 1) * config.contrast)
        out.append(image)
    return normalize(torch.stack(out), MEAN, STD)


@pytest.mark.parametrize("settings", [{}, {"brightness": 0.0}, {"contrast": 0.0, "hflip": 1.0},
                                      {"brightness": 0.6, "contrast": 0.6, "crop_scale": (0.3, 1.0)},
                                      {"crop_scale": (0.95, 1.0), "crop_ratio": (0.2, 5.0)}])  # central crops too
def test_batched_augmentation_equals_torchvisions_per_image_transforms(settings: dict) -> None:
    config = AugmentConfig(**settings)
    images = np.random.default_rng(0).integers(0, 256, (9, 40, 40, 3), dtype=np.uint8)
    outputs = []
    # torchvision draws the crops from torch's global generator; train_images from a generator of its own
    # in the same state
    torch.manual_seed(3)
    outputs.append(torchvision_images(images, 24, config, torch.Generator().manual_seed(5)))
    torch.manual_seed(11)  # another global state: it must not matter
    outputs.insert(0, train_images(images, 24, config, MEAN, STD, torch.Generator().manual_seed(5),
                                   torch.Generator().manual_seed(3)))
    assert outputs[0].shape == (9, 3, 24, 24)
    assert torch.equal(outputs[0], outputs[1])

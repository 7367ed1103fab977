"""Decoding one image file and turning it into the LPM input and the stored side image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.BICUBIC


class ImageDecodeError(Exception):
    """An image file could not be decoded; carries the path and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, I;16, I, F, RGBA, LA, P, CMYK...) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if image.mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB; `draft_size` lets JPEG decode at reduced scale."""
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(path, f"cannot decode image ({error})") from None


def resize_square(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    return image.resize((size, size), RESAMPLE)


def normalized_tensor(
    image: Image.Image, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """HWC uint8 RGB -> CHW float32 normalised with the dataset's mean and std."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (array - mean_t) / std_t


def side_image(image: Image.Image, stored_size: int) -> np.ndarray:
    """The side network's image as stored in the cache: stored_size x stored_size x 3 uint8."""
    return np.asarray(resize_square(image, stored_size), dtype=np.uint8).copy()

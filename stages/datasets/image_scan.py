"""One pass over every image before any LPM work: does it decode, and its pixel statistics.

Each image is fully decoded (JPEG at reduced scale through draft) and reduced to a small
square; the per-channel sums give the train split's mean/std for `normalization: auto`
without a second pass. PIL releases the GIL while decoding, so threads run in parallel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stages.datasets.images import ImageDecodeError, open_rgb, resize_square
from stages.datasets.samples import Sample

STATS_SIZE = 64


@dataclass(frozen=True)
class ImageCheck:
    sample: Sample
    failure: str  # "" when the image decoded
    channel_sum: np.ndarray  # (3,) over the STATS_SIZE^2 pixels, in 0..1
    channel_sum_sq: np.ndarray

    @property
    def ok(self) -> bool:
        return not self.failure


def check_image(sample: Sample) -> ImageCheck:
    try:
        image = resize_square(open_rgb(sample.path, draft_size=STATS_SIZE), STATS_SIZE)
    except ImageDecodeError as error:
        return ImageCheck(sample, error.reason, np.zeros(3), np.zeros(3))
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
    return ImageCheck(sample, "", pixels.sum(0), (pixels**2).sum(0))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def scan_images(samples: list[Sample], show_progress: bool = True, workers: int | None = None) -> list[ImageCheck]:
    """Check every sample's image, in sample order."""
    checks: list[ImageCheck] = []
    with Progress(
        TextColumn("[bold]Checking images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not show_progress, transient=True,
    ) as progress:
        task = progress.add_task("check", total=len(samples))
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            for check in pool.map(check_image, samples):
                checks.append(check)
                progress.advance(task)
    return checks


def train_normalization(checks: list[ImageCheck]) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """Per-channel mean/std over the decodable train images; None when there are none."""
    train = [c for c in checks if c.ok and c.sample.split == "train"]
    if not train:
        return None
    count = len(train) * STATS_SIZE * STATS_SIZE
    mean = np.sum([c.channel_sum for c in train], axis=0) / count
    variance = np.sum([c.channel_sum_sq for c in train], axis=0) / count - mean**2
    std = np.sqrt(np.maximum(variance, 1e-12))
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))

"""One pass over every image before any LPM work: does it decode, and its pixel statistics.

Each image is fully decoded (a JPEG at reduced scale through draft, unless its statistics are
wanted) and its per-channel sums give the train split's mean/std for `normalization: auto`
without a second pass. The statistics are taken over the train images' pixels at full
resolution: from thumbnails, the std comes out 2-10 % low (docs/method.md). PIL releases the GIL
while decoding, so threads run in parallel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fpt.cache.progress import open_progress
from fpt.stages.datasets.images import ImageDecodeError, open_rgb
from fpt.stages.datasets.samples import Sample

CHECK_SIZE = 64  # the reduced scale a JPEG is decoded at when only its decodability is checked


@dataclass(frozen=True)
class ImageCheck:
    sample: Sample
    failure: str  # "" when the image decoded
    channel_sum: np.ndarray  # (3,) over the image's pixels, in 0..1 (zeros where no statistics were taken)
    channel_sum_sq: np.ndarray
    pixels: int  # how many pixels the sums are over

    @property
    def ok(self) -> bool:
        return not self.failure


def check_image(sample: Sample, with_stats: bool = False) -> ImageCheck:
    """Decode the image; with `with_stats`, at full resolution, with its per-channel sums."""
    try:
        image = open_rgb(sample.path, draft_size=None if with_stats else CHECK_SIZE)
    except ImageDecodeError as error:
        return ImageCheck(sample, error.reason, np.zeros(3), np.zeros(3), 0)
    if not with_stats:
        return ImageCheck(sample, "", np.zeros(3), np.zeros(3), 0)
    values = np.asarray(image).reshape(-1, 3)  # uint8: the sums are exact integers
    squares = np.square(values, dtype=np.uint32).sum(0, dtype=np.uint64)
    return ImageCheck(sample, "", values.sum(0, dtype=np.uint64) / 255.0, squares / 255.0**2, len(values))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def scan_images(samples: list[Sample], show_progress: bool = True, workers: int | None = None,
                full_resolution_stats: bool = False) -> list[ImageCheck]:
    """Check every sample's image, in sample order; with `full_resolution_stats`, the train images'
    pixel sums too (what `train_normalization` needs)."""
    checks: list[ImageCheck] = []
    with open_progress(show_progress, transient=True) as progress:
        task = progress.add_task("Checking images", total=len(samples))
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            for check in pool.map(lambda s: check_image(s, full_resolution_stats and s.split == "train"), samples):
                checks.append(check)
                progress.advance(task)
    return checks


def train_normalization(checks: list[ImageCheck]) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """Per-channel mean/std over the decodable train images; None when there are none."""
    train = [c for c in checks if c.ok and c.sample.split == "train" and c.pixels]
    # summed in an order of the images' own sums, not of their ids: the same train images give the same bits
    # however they are named or labelled, so a relabelling keeps the normalisation, and so the cache key
    train.sort(key=lambda c: (*c.channel_sum.tolist(), *c.channel_sum_sq.tolist(), c.pixels))
    if not train:
        return None
    count = sum(c.pixels for c in train)
    mean = np.sum([c.channel_sum for c in train], axis=0) / count
    variance = np.sum([c.channel_sum_sq for c in train], axis=0) / count - mean**2
    std = np.sqrt(np.maximum(variance, 1e-12))
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))

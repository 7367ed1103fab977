"""The built-in `demo` dataset: synthetic fundus-like photographs, generated deterministically.

Each image is a reddish disc with illumination fall-off, an optic disc, vessels and smooth
texture. The class is the density of tiny fine-textured lesions: windowed striations with a
period of 2-3 px, about 15 px across at 512 px, each with zero mean. They are plain at 512 px,
while the 4x down-sampling to 128 px (an anti-aliased resize) removes frequencies that high
almost entirely. That is the situation FPT+ exists for: the label lives in detail only the
high-resolution LPM sees.

Written as ordinary PNG files in a class-per-folder tree with train/val/test splits, so it is
read by the same code as a user's folder dataset. Beside them, demo_lesions.json records where
every lesion and the fundus disc are (`DemoTruth`): the ground truth that `fpt explain`'s heatmaps
are measured against (stages/explain/pointing.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel

from fpt.cache.progress import open_progress
from fpt.stages.core.settings import DemoConfig
from fpt.stages.datasets.samples import SPLITS

CLASS_NAMES = ["none", "mild", "moderate", "severe", "proliferative"]
MANIFEST = "demo_manifest.json"
TRUTH_FILE = "demo_lesions.json"
GENERATOR_VERSION = 4  # bump when the files change, so stale demo folders are rebuilt (4: demo_lesions.json)
# Lesions per class at the reference size of 512 px; scaled with image area.
LESIONS_PER_CLASS = [(0, 8), (80, 110), (170, 210), (260, 300), (340, 390)]
REFERENCE_SIZE = 512
LESION_AMPLITUDE = (0.3, 0.45)


class ImageTruth(BaseModel):
    """Where things are in one demo image, in its pixels (y, x from the top left)."""

    fundus: tuple[float, float, float]  # centre y, x and radius of the fundus disc
    lesions: list[tuple[float, float, float]]  # centre y, x and radius (2 sigma of the lesion's window) of each lesion


class DemoTruth(BaseModel):
    image_size: int
    images: dict[str, ImageTruth]  # by sample id: the image's path relative to the demo folder


def class_names(num_classes: int) -> list[str]:
    return [f"{index}_{name}" for index, name in enumerate(CLASS_NAMES[:num_classes])]


def _lesion_kernel(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A Gaussian-windowed striation (period 2.2-3.2 px) whose pixels sum to zero."""
    half = max(3, int(round(7 * scale)))
    axis = np.arange(-half, half + 1, dtype=np.float64)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    period = rng.uniform(2.2, 3.2) * max(scale, 0.75)
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    window = np.exp(-(xx**2 + yy**2) / (2 * (3.0 * scale) ** 2))
    kernel = np.cos(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase) * window
    kernel -= kernel.sum() * window / window.sum()
    return kernel / np.abs(kernel).max()


def _vessels(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    darkening = np.zeros((size, size))
    centre = np.array([0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(0.15, 0.25)]) * size
    for _ in range(rng.integers(5, 9)):
        angle = rng.uniform(0, 2 * np.pi)
        curvature = rng.uniform(-1.5, 1.5) / size
        width = rng.uniform(1.0, 2.5) * size / REFERENCE_SIZE
        t = np.linspace(0, size * 0.7, 300)
        theta = angle + curvature * t
        ys = centre[0] + np.cumsum(np.sin(theta)) * (t[1] - t[0])
        xs = centre[1] + np.cumsum(np.cos(theta)) * (t[1] - t[0])
        for y, x in zip(ys, xs):
            if 0 <= y < size and 0 <= x < size:
                y0, y1 = int(max(0, y - 4 * width)), int(min(size, y + 4 * width + 1))
                x0, x1 = int(max(0, x - 4 * width)), int(min(size, x + 4 * width + 1))
                d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
                darkening[y0:y1, x0:x1] = np.maximum(
                    darkening[y0:y1, x0:x1], np.exp(-d2 / (2 * width**2))
                )
    return darkening


def render_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic fundus photograph of the given class, as an HxWx3 uint8 array."""
    return render_with_truth(label, size, rng)[0]


def render_with_truth(label: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ImageTruth]:
    """One synthetic fundus photograph of the given class, and where its fundus and lesions are."""
    axis = np.arange(size, dtype=np.float64)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    cy, cx = size / 2 + rng.normal(0, size * 0.01, 2)
    radius = size * rng.uniform(0.44, 0.48)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
    disc = np.clip((1.0 - dist) * size / 6, 0, 1)

    base = np.array([0.78, 0.36, 0.16]) * rng.uniform(0.85, 1.1, 3)
    illumination = 1.0 - 0.45 * dist**2 + rng.normal(0, 0.03)
    image = base[None, None, :] * illumination[..., None]

    od_y, od_x = cy + rng.normal(0, size * 0.03), cx + size * 0.22 * rng.choice([-1, 1])
    od = np.exp(-((yy - od_y) ** 2 + (xx - od_x) ** 2) / (2 * (size * 0.05) ** 2))
    image += od[..., None] * np.array([0.22, 0.24, 0.14])
    image *= 1.0 - 0.35 * _vessels(rng, size, yy, xx)[..., None]

    smooth_texture = rng.normal(0, 1, (size // 16 + 2, size // 16 + 2))
    texture = np.asarray(
        Image.fromarray(smooth_texture.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    )
    image *= 1.0 + 0.04 * texture[..., None]
    image += rng.normal(0, 0.012, image.shape)

    scale = size / REFERENCE_SIZE
    low, high = LESIONS_PER_CLASS[label]
    count = int(round(rng.integers(low, high + 1) * scale**2))
    tint = np.array([1.0, 0.8, 0.5])
    lesions = []
    for _ in range(count):
        kernel = _lesion_kernel(rng, scale)
        half = kernel.shape[0] // 2
        while True:
            y, x = rng.uniform(half, size - half - 1, 2)
            if np.hypot(y - cy, x - cx) < radius * 0.85:
                break
        y, x = int(y), int(x)
        amplitude = rng.uniform(*LESION_AMPLITUDE)
        image[y - half : y + half + 1, x - half : x + half + 1] += amplitude * kernel[..., None] * tint[None, None, :]
        lesions.append((float(y), float(x), 2 * 3.0 * scale))  # the kernel's centre pixel; 2 sigma of its window

    image *= disc[..., None]
    truth = ImageTruth(fundus=(float(cy), float(cx), float(radius)), lesions=lesions)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), truth


def read_demo_truth(root: Path) -> DemoTruth:
    """The lesion and fundus positions written beside the demo images under `root`."""
    return DemoTruth.model_validate_json((root / TRUTH_FILE).read_text())


def patch_masks(truth: ImageTruth, image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(fundus, lesion) masks over a grid x grid patch grid of the image: the patches whose centre lies in the
    fundus disc, and those of them that a lesion's disc overlaps."""
    step = image_size / grid
    edges = np.arange(grid) * step
    centres = edges + step / 2
    cy, cx, radius = truth.fundus
    fundus = np.hypot(centres[:, None] - cy, centres[None, :] - cx) < radius
    lesion = np.zeros((grid, grid), bool)
    for y, x, r in truth.lesions:
        # distance from the lesion's centre to each patch's square (0 inside it)
        dy = np.maximum(np.maximum(edges - y, y - (edges + step)), 0)
        dx = np.maximum(np.maximum(edges - x, x - (edges + step)), 0)
        lesion |= np.hypot(dy[:, None], dx[None, :]) < r
    return fundus, lesion & fundus


def _split_sizes(config: DemoConfig) -> dict[str, int]:
    return {"train": config.num_train, "val": config.num_val, "test": config.num_test}


def _manifest(config: DemoConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, **config.model_dump()}


def demo_is_current(root: Path, config: DemoConfig) -> bool:
    manifest = root / MANIFEST
    if not manifest.exists():
        return False
    try:
        return json.loads(manifest.read_text()) == _manifest(config)
    except (OSError, json.JSONDecodeError):
        return False


def generate_demo(root: Path, config: DemoConfig, show_progress: bool = True) -> None:
    """Write the demo dataset under `root` unless an identical one is already there.

    Labels are balanced per split; every image has its own seed derived from
    (config.seed, split, index), so the data does not depend on generation order.
    The tree is built in a temporary folder and moved into place, so an interrupted
    generation never leaves a half-written dataset behind.
    """
    if demo_is_current(root, config):
        return
    names = class_names(config.num_classes)
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    total = sum(_split_sizes(config).values())
    truth = DemoTruth(image_size=config.image_size, images={})
    with open_progress(show_progress, transient=True) as progress:
        task = progress.add_task("Generating demo images", total=total)
        for split_index, split in enumerate(SPLITS):
            count = _split_sizes(config)[split]
            for name in names:
                (staging / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                label = index % config.num_classes
                rng = np.random.default_rng([config.seed, split_index, index])
                pixels, truth.images[f"{split}/{names[label]}/demo_{split}_{index:05d}.png"] = render_with_truth(
                    label, config.image_size, rng)
                path = staging / split / names[label] / f"demo_{split}_{index:05d}.png"
                Image.fromarray(pixels).save(path, compress_level=1)
                progress.advance(task)
    (staging / TRUTH_FILE).write_text(truth.model_dump_json())
    (staging / MANIFEST).write_text(json.dumps(_manifest(config), indent=2))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)

"""Time `fpt extract --dry-run`'s validation on a synthetic class-per-folder tree.

Builds N small PNG files (default 10,000; 3 classes; 70/15/15 split) in a temporary folder,
then times the layout read + structural checks and the full decode pass separately.

    python bench/validate_dataset.py [--files 10000] [--size 64] [--format png|jpg] [--workers N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.datasets import image_scan  # noqa: E402
from fpt.stages.datasets.registry import read_layout  # noqa: E402
from fpt.stages.datasets.validate import validate_dataset  # noqa: E402

CLASSES = ["a", "b", "c"]
SAVE_OPTIONS = {"png": {"compress_level": 1}, "jpg": {"quality": 90}}


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour structure plus mild noise: compresses like a photograph, not like noise."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)


def build_tree(root: Path, files: int, size: int, suffix: str) -> None:
    rng = np.random.default_rng(0)
    for index in range(files):
        fraction = index / files
        split = "train" if fraction < 0.7 else "val" if fraction < 0.85 else "test"
        folder = root / split / CLASSES[index % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = photo_like(rng, size)
        Image.fromarray(pixels).save(folder / f"img_{index:06d}.{suffix}", **SAVE_OPTIONS[suffix])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="side of each synthetic image in px")
    parser.add_argument("--format", choices=sorted(SAVE_OPTIONS), default="png")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: min(8, cpus))")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "tree"
        began = time.perf_counter()
        build_tree(root, args.files, args.size, args.format)
        print(f"built {args.files} {args.format} files of {args.size}x{args.size} px in {time.perf_counter() - began:.1f} s")
        config = load_config(None, [f"dataset.path={root}"], "folder")
        began = time.perf_counter()
        _, layout = read_layout(config, show_progress=False)
        structure_s = time.perf_counter() - began
        if args.workers is not None:
            image_scan.default_workers = lambda: args.workers  # type: ignore[assignment]
        began = time.perf_counter()
        report = validate_dataset(config, show_progress=False)
        total_s = time.perf_counter() - began
        print(f"layout read + structural checks: {structure_s:.2f} s ({len(layout.samples)} samples, "
              f"{len(layout.problems)} problems)")
        print(f"full dry-run validation (structure + decode every image + normalisation): {total_s:.2f} s, "
              f"{report.images_checked / total_s:.0f} images/s, workers {image_scan.default_workers()}")
        print(f"counts: {report.split_counts}; ready: {report.ready}")


if __name__ == "__main__":
    main()

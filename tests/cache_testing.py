"""Shared helpers of the tests/test_cache_*.py files: tiny demo settings and whole-store reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from fpt.pipeline.config import load_config
from fpt.stages.core.settings import PipelineConfig

TINY = [
    "demo.num_train=12", "demo.num_val=6", "demo.num_test=6", "demo.image_size=128",
    "extract.input_size=64", "lpm.name=vit_tiny_patch16_224", "lpm.weights=none",
    "cache.shard_size=4", "cache.chunk_size=2", "extract.num_workers=0", "extract.batch_size=4",
    "train.epochs=1", "train.batch_size=4", "train.device=cpu", "extract.device=cpu",
]


def tiny_assignments(root: Path, *extra: str) -> list[str]:
    return [*TINY, f"dataset.data_root={root / 'data'}", f"cache.root={root / 'cache'}",
            f"train.runs_root={root / 'runs'}", *extra]


def tiny_config(root: Path, *extra: str) -> PipelineConfig:
    return load_config(None, tiny_assignments(root, *extra), "demo")


def demo_source(root: Path) -> Path:
    """Where `tiny_config(root)`'s demo images are, as caches record their source."""
    return (root / "data" / "demo").resolve()


def cli_args(assignments: list[str]) -> list[str]:
    return [part for item in assignments for part in ("--set", item)]


def stored_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store as numpy, read with zarr alone."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    return {name: array[...] for name, array in group.arrays()}

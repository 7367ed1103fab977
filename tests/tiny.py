"""The one tiny configuration the tests run on, and the variants some tests need, each written as
the settings it changes: a 24-image demo at 128 px through a random-weight ViT-Tiny at 64 px, so a
whole extract-and-train takes seconds on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from fpt.pipeline.config import load_config
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.extract.run import run_extract
from fpt.stages.train.train_side import train_side

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "demo.num_train=12", "demo.num_val=6", "demo.num_test=6", "demo.image_size=128",
    "extract.input_size=64", "lpm.name=vit_tiny_patch16_224", "lpm.weights=none",
    "cache.shard_size=4", "cache.chunk_size=2", "extract.num_workers=0", "extract.batch_size=4",
    "train.epochs=1", "train.batch_size=4", "train.device=cpu", "extract.device=cpu",
]
# the side network at 64 px from side images stored at 72, two epochs: training, sweeps, prediction
TRAINING = ["extract.side_store_size=72", "side.input_size=64", "train.epochs=2"]
# twice the images, in shards of 8, for the end-to-end run
LARGER = ["demo.num_train=24", "demo.num_val=12", "demo.num_test=12", "extract.side_store_size=40",
          "side.input_size=32", "cache.shard_size=8", "cache.chunk_size=4", "train.epochs=3", "train.batch_size=8"]


def tiny_assignments(root: Path, *extra: str) -> list[str]:
    """TINY with its data, cache and runs under `root`, then `extra`."""
    return [*TINY, f"dataset.data_root={root / 'data'}", f"cache.root={root / 'cache'}",
            f"train.runs_root={root / 'runs'}", *extra]


def tiny_config(root: Path, *extra: str) -> PipelineConfig:
    return load_config(None, tiny_assignments(root, *extra), "demo")


def demo_source(root: Path) -> Path:
    """Where `tiny_config(root)`'s demo images are, as caches record their source."""
    return (root / "data" / "demo").resolve()


def cli_args(assignments: list[str]) -> list[str]:
    return [part for item in assignments for part in ("--set", item)]


def trained_tiny_run(root: Path) -> dict[str, Path]:
    """A tiny demo extracted and trained (TRAINING) under `root`: its run folder, demo images, cache and root."""
    config = tiny_config(root, *TRAINING)
    run_extract(config, show_progress=False)
    result = train_side(config, show_progress=False)
    return {"run": result.run_dir, "data": root / "data" / "demo", "cache": result.cache, "root": root}

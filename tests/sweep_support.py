"""Tiny demo settings and a shared tiny cache for the sweep tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_sets(root: Path) -> list[str]:
    return [
        f"dataset.data_root={root / 'data'}",
        f"cache.root={root / 'cache'}",
        f"train.runs_root={root / 'runs'}",
        "demo.num_train=12", "demo.num_val=6", "demo.num_test=6", "demo.image_size=128",
        "extract.input_size=64", "extract.side_store_size=72", "extract.num_workers=0",
        "side.input_size=64", "lpm.name=vit_tiny_patch16_224", "lpm.weights=none",
        "train.epochs=2", "train.batch_size=4", "cache.shard_size=4", "cache.chunk_size=2",
    ]


def tiny_config(root: Path, extra: list[str] | None = None):
    from fpt.pipeline.config import load_config

    return load_config(REPO / "pipeline.yaml", tiny_sets(root) + list(extra or []), dataset="demo")


def build_tiny_cache(root: Path) -> Path:
    from fpt.stages.extract.run import run_extract

    return run_extract(tiny_config(root), show_progress=False).path

"""Shared fixtures: tiny configurations so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def torch_threads():
    """`torch_threads(n)` sets torch's thread count for the test; the count is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def tiny_assignments(tmp: Path) -> list[str]:
    """--set options for a demo run that takes seconds: small images, tiny random LPM."""
    return [
        f"dataset.data_root={tmp / 'data'}",
        f"cache.root={tmp / 'cache'}",
        f"train.runs_root={tmp / 'runs'}",
        "demo.num_train=24",
        "demo.num_val=12",
        "demo.num_test=12",
        "demo.image_size=128",
        "extract.input_size=64",
        "extract.side_store_size=40",
        "extract.num_workers=0",
        "side.input_size=32",
        "cache.shard_size=8",
        "cache.chunk_size=4",
        "lpm.name=vit_tiny_patch16_224",
        "lpm.weights=none",
        "train.epochs=3",
        "train.batch_size=8",
    ]


@pytest.fixture
def tiny_config(tmp_path: Path):
    from fpt.pipeline.config import load_config

    return load_config(REPO / "pipeline.yaml", tiny_assignments(tmp_path), dataset="demo")

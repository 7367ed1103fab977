"""Tiny demo settings and a shared tiny cache for the sweep tests."""

from __future__ import annotations

from pathlib import Path

from tiny import REPO, TRAINING, tiny_assignments

from fpt.pipeline.config import load_config
from fpt.stages.extract.run import run_extract


def tiny_sets(root: Path) -> list[str]:
    return tiny_assignments(root, *TRAINING)


def tiny_config(root: Path, extra: list[str] | None = None):
    return load_config(REPO / "pipeline.yaml", tiny_sets(root) + list(extra or []), dataset="demo")


def build_tiny_cache(root: Path) -> Path:
    return run_extract(tiny_config(root), show_progress=False).path

"""Building small datasets on disk for the dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fpt.pipeline.config import load_config
from fpt.stages.core.settings import PipelineConfig


def write_image(path: Path, value: int = 128, size: int = 16, suffix_format: str | None = None) -> Path:
    """A small RGB image whose pixels vary with `value`, so files differ in content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(rng.normal(value, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=suffix_format)
    return path


def class_tree(root: Path, classes: list[str], per_class: dict[str, int] | None = None) -> Path:
    """root/{train,val,test}/<class>/<class>_<split>_<i>.png"""
    per_class = per_class or {"train": 2, "val": 1, "test": 1}
    value = 0
    for split, count in per_class.items():
        for name in classes:
            for index in range(count):
                value += 7
                write_image(root / split / name / f"{name}_{split}_{index}.png", value % 256)
    return root


def ddr_tree(root: Path, grades: dict[str, list[int]]) -> Path:
    """root/DR_grading/{train,valid,test}/ + .txt files; one image per listed grade."""
    folder = root / "DR_grading"
    value = 0
    for split, split_grades in grades.items():
        lines = []
        for index, grade in enumerate(split_grades):
            value += 11
            name = f"{split}_{index:03d}.jpg"
            write_image(folder / split / name, value % 256)
            lines.append(f"{name} {grade}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def config_for(name: str, root: Path, *assignments: str) -> PipelineConfig:
    return load_config(
        Path(__file__).resolve().parents[1] / "pipeline.yaml",
        [f"dataset.path={root}", "extract.num_workers=0", *assignments],
        name,
    )

"""What a dataset is once its files are found: labelled samples in splits, plus its facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    sample_id: str
    path: Path
    label: int
    split: Split


@dataclass
class ResolvedDataset:
    """A dataset ready for extraction: its samples (train, then val, then test) and facts."""

    name: str
    root: Path
    class_names: list[str]
    samples: list[Sample]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    default_lr: float
    notes: list[str] = field(default_factory=list)  # warnings and facts to show the user
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out as undecodable
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> images left out on purpose

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_counts(self) -> dict[str, int]:
        return {split: sum(1 for s in self.samples if s.split == split) for split in SPLITS}

    def class_counts(self, split: Split) -> list[int]:
        counts = [0] * self.num_classes
        for sample in self.samples:
            if sample.split == split:
                counts[sample.label] += 1
        return counts

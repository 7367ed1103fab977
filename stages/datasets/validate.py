"""`fpt extract --dry-run`: check a whole dataset and report, without building the LPM.

Unlike resolve_dataset, which stops at the first kind of trouble, this collects everything:
structural problems, every undecodable image, counts per split and class, normalisation.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.image_scan import scan_images
from fpt.stages.datasets.problems import DatasetProblem
from fpt.stages.datasets.registry import choose_normalization, expected_location, normalization_source, read_layout
from fpt.stages.datasets.samples import SPLITS


class DecodeFailure(BaseModel):
    path: str
    reason: str


class DatasetReport(BaseModel):
    dataset: str
    layout: str
    location: str
    class_names: list[str]
    class_counts: dict[str, list[int]]  # split -> images per class (decodable ones)
    excluded: dict[str, int]
    notes: list[str]
    problems: list[DatasetProblem]
    decode_failures: list[DecodeFailure]
    on_decode_error: str
    normalization_source: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    images_checked: int
    seconds: float

    @property
    def split_counts(self) -> dict[str, int]:
        return {split: sum(counts) for split, counts in self.class_counts.items()}

    @property
    def errors(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ready(self) -> bool:
        """Would `fpt extract` go ahead with this dataset and configuration?"""
        return not self.errors and (not self.decode_failures or self.on_decode_error == "skip") and all(
            self.split_counts.values()
        )


def validate_dataset(config: PipelineConfig, show_progress: bool = True) -> DatasetReport:
    began = time.perf_counter()
    spec, layout = read_layout(config, show_progress)
    checks = scan_images(layout.samples, show_progress, full_resolution_stats=normalization_source(config) == "auto")
    counts = {split: [0] * len(layout.class_names) for split in SPLITS}
    for check in checks:
        if check.ok and 0 <= check.sample.label < len(layout.class_names):
            counts[check.sample.split][check.sample.label] += 1
    mean = std = None
    if any(check.ok and check.sample.split == "train" for check in checks):
        mean, std = choose_normalization(spec, config, checks)
    return DatasetReport(
        dataset=spec.name, layout="csv" if config.dataset.csv is not None else spec.layout, location=str(expected_location(spec, config)),
        class_names=layout.class_names, class_counts=counts, excluded=layout.excluded, notes=layout.notes,
        problems=layout.problems,
        decode_failures=[DecodeFailure(path=str(c.sample.path), reason=c.failure) for c in checks if not c.ok],
        on_decode_error=config.extract.on_decode_error, normalization_source=normalization_source(config),
        mean=mean, std=std, images_checked=len(checks), seconds=time.perf_counter() - began,
    )

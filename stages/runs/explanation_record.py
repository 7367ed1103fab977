"""explain.json: what `fpt explain` wrote into a run folder, read back by the report.

    <run>/explain/<name>/
        explain.json    this record: the settings, the aggregation, and one entry per image
        maps.npz        the raw maps (see `MAPS_ARRAYS`)
        <picture>.png   per image: the attention heatmap over the image, and the LPM's own selection
The test images of the run's gallery (a few per class, correct and wrong) are explained into
<run>/explain/gallery/ when the run finishes, and report.md shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

EXPLAIN_FOLDER = "explain"
GALLERY = "gallery"
RECORD_FILE = "explain.json"
MAPS_FILE = "maps.npz"
MAPS_ARRAYS = {
    "attention": "(S, g, g) float32: the image's map, the mean of the layer maps",
    "attention_per_layer": "(S, L, g, g) float32: each chosen layer's map",
    "prefix_mass": "(S, L) float32: each layer's attention mass on the prefix tokens (1 - its map's sum)",
    "selection": "(S, g, g) float32: the share of (layer, head) pairs that kept the patch",
    "probabilities": "(S, C) float32",
    "labels": "(S,) int64: the true class, -1 where unknown",
}


class ExplainedImage(BaseModel):
    sample: str  # the cache's sample id, or the image file
    label: int | None  # the true class where known
    predicted: int
    probabilities: list[float]
    prefix_mass: float  # the mean over layers of the attention mass on prefix tokens
    picture: str  # the PNG's name in the explanation's folder
    image: str | None  # the picture was drawn over this file; None: over the cache's side image


class ExplanationRecord(BaseModel):
    run: str
    checkpoint: Literal["best", "last"]
    source: Literal["cache", "images"]
    split: str | None
    class_names: list[str]
    layers: list[int]  # the LPM blocks whose keys were cached, in the maps' layer order
    grid: int  # the LPM's patch grid is grid x grid
    patch_size: int
    input_size: int
    num_prefix_tokens: int
    aggregation: str
    images: list[ExplainedImage]
    seconds_per_image: float  # maps and pictures, after the model and cache (or LPM) were loaded


def gallery_record(run_dir: Path) -> ExplanationRecord | None:
    """The run's gallery, if it has one."""
    path = run_dir / EXPLAIN_FOLDER / GALLERY / RECORD_FILE
    if not path.is_file():
        return None
    return ExplanationRecord.model_validate_json(path.read_text())

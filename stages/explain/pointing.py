"""How well a heatmap points at known lesions: a pointing-game ratio over patches.

ratio = (share of the map's mass, within the region, that lies on lesion patches)
        / (share of the region's patches that are lesion patches).
1 is what a map with no preference gets on average; a map that puts all its mass on lesion patches
gets 1 / (lesion share). The region is where lesions can be (the fundus disc for the demo), so a
map is not rewarded for avoiding the black border. The control is the same map with its values
shuffled over the region's patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from fpt.stages.datasets.demo import patch_masks, read_demo_truth
from fpt.stages.runs.explanation_record import MAPS_FILE, RECORD_FILE, ExplanationRecord


def pointing_ratio(heatmap: np.ndarray, lesions: np.ndarray, region: np.ndarray) -> float:
    """heatmap (g, g) >= 0; lesions, region: (g, g) bool masks (lesions within region). NaN where the region
    holds no lesion patch, or no mass."""
    lesions = lesions & region
    mass = float(heatmap[region].sum())
    if not lesions.any() or mass <= 0:
        return float("nan")
    return (float(heatmap[lesions].sum()) / mass) / (lesions.sum() / region.sum())


def shuffled_within(heatmap: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The map with its values permuted among the region's patches (the pointing game's control)."""
    result = heatmap.copy()
    result[region] = rng.permutation(heatmap[region])
    return result


class PointingResult(BaseModel):
    """The pointing game over the explained demo images that hold lesions."""

    images: int
    ratios: list[float]  # per image
    shuffled_ratios: list[float]  # per image, the control
    ratio: float  # the mean over images of the map's ratio
    shuffled_ratio: float  # the same for the control: each map shuffled over the fundus
    ratio_by_class: dict[str, float]
    lesion_share: float  # the mean share of the fundus's patches that are lesion patches


def demo_pointing_game(explanation: Path, demo_root: Path, seed: int = 0, map_name: str = "attention") -> PointingResult:
    """Score the maps of an explanation folder (maps.npz, explain.json) of demo images against the lesions the
    demo generator recorded (demo_lesions.json under `demo_root`); images without lesions are left out.
    `map_name`: `attention` (the fusion's) or `selection` (the LPM's own)."""
    record = ExplanationRecord.model_validate_json((explanation / RECORD_FILE).read_text())
    maps = np.load(explanation / MAPS_FILE)
    truth = read_demo_truth(demo_root)
    rng = np.random.default_rng(seed)
    ratios, controls, shares, by_class = [], [], [], {}
    for sample, heatmap, entry in zip(maps["samples"], maps[map_name], record.images):
        fundus, lesions = patch_masks(truth.images[str(sample)], truth.image_size, record.grid)
        ratio = pointing_ratio(heatmap, lesions, fundus)
        if np.isnan(ratio):
            continue
        ratios.append(ratio)
        controls.append(pointing_ratio(shuffled_within(heatmap, fundus, rng), lesions, fundus))
        shares.append(lesions.sum() / fundus.sum())
        by_class.setdefault(record.class_names[entry.label] if entry.label is not None else "?", []).append(ratio)
    return PointingResult(images=len(ratios), ratios=ratios, shuffled_ratios=controls, ratio=float(np.mean(ratios)), shuffled_ratio=float(np.mean(controls)),
                          ratio_by_class={name: float(np.mean(values)) for name, values in by_class.items()},
                          lesion_share=float(np.mean(shares)))

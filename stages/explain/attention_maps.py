"""Heatmaps of where a trained model's fusion prompts looked, from the cached keys and their token indices.

Aggregation (written into every explanation's explain.json): in each chosen layer and head, each of
the M prompts' attention over the n kept tokens sums to 1. The layer's map is the mean over its
prompts and heads, scattered back to the tokens the keys came from (stages/explain/patch_maps.py),
so a layer's patch map and its prefix-token mass sum to 1; the image's map is the mean of the layer
maps. Prefix tokens (class, registers) have no place on the image: their mass is reported beside
the map, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpt.stages.explain.patch_maps import TokenGrid, scatter_to_patches, selection_frequency
from fpt.stages.model.fpt_model import FPTPlus

AGGREGATION = (
    "In each chosen LPM layer and head, each of the M fusion prompts' attention over the n kept tokens sums to 1. "
    "A layer's map is the mean over its prompts and heads, summed back onto the patch each kept token came from; "
    "its patch map and its prefix-token mass sum to 1. The image's map is the mean of the layer maps. "
    "Selection: the share of (layer, head) pairs whose top-n tokens included the patch."
)


@dataclass
class Explanation:
    """A batch's heatmaps (on the CPU, float32) and the model's class probabilities."""

    probabilities: torch.Tensor  # (B, C)
    layer_maps: torch.Tensor  # (B, L, grid, grid): attention mass per patch, per chosen layer
    prefix_mass: torch.Tensor  # (B, L): attention mass on the prefix tokens, per chosen layer
    selection: torch.Tensor  # (B, grid, grid): share of (layer, head) pairs that kept the patch

    @property
    def attention(self) -> torch.Tensor:
        """(B, grid, grid): the mean of the layer maps."""
        return self.layer_maps.mean(1)


@torch.no_grad()
def explain_batch(model: FPTPlus, side_images: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  token_indices: torch.Tensor, layout: TokenGrid) -> Explanation:
    """side_images (B, 3, s, s) normalised; keys, values (B, L, H, n, Dh); token_indices (B, L, H, n)."""
    if model.fusion is None:
        raise ValueError("a model trained without prompts (side.use_prompts: false) does not look at the LPM's tokens")
    model.eval()
    probabilities = model(side_images, keys, values).float().softmax(-1)
    # (B, L, H, n): the mean over prompts, divided by the number of heads, so that the sum over every head's
    # tokens is the mean over heads. Each head kept its own tokens: its weights go back through its own indices.
    weights = model.fusion.attention(keys).float().mean(dim=3) / keys.shape[2]
    layer_maps, prefix = scatter_to_patches(weights.flatten(2), token_indices.flatten(2), layout)
    return Explanation(probabilities=probabilities.cpu(), layer_maps=layer_maps.cpu(), prefix_mass=prefix.cpu(),
                       selection=selection_frequency(token_indices, layout).cpu())

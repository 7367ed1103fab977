"""The heatmap arithmetic against hand-computed truth: token indices back to patches, the fusion's
attention aggregated as explain.json states it, and the pointing-game ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fpt.stages.explain.attention_maps import explain_batch
from fpt.stages.explain.patch_maps import TokenGrid, scatter_to_patches, selection_frequency
from fpt.stages.explain.pointing import pointing_ratio, shuffled_within
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec


def patch_of(token: int, num_prefix: int, grid: int) -> tuple[int, int]:
    """timm's token order: prefix tokens, then the patches row by row."""
    return (token - num_prefix) // grid, (token - num_prefix) % grid


def test_scatter_puts_each_weight_on_its_patch_and_prefix_apart():
    layout = TokenGrid(num_prefix=1, grid=4)
    weights = torch.tensor([0.5, 0.3, 0.2])
    indices = torch.tensor([0, 6, 16])
    patches, prefix = scatter_to_patches(weights, indices, layout)
    expected = torch.zeros(4, 4)
    expected[1, 1] = 0.3  # token 6 = patch 5: row 1, column 1
    expected[3, 3] = 0.2  # token 16 = patch 15: the last one
    torch.testing.assert_close(patches, expected)
    assert float(prefix) == pytest.approx(0.5)


def test_scatter_with_register_tokens_sums_tokens_kept_twice():
    layout = TokenGrid(num_prefix=5, grid=3)  # class token + 4 registers (DINOv2 reg4)
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    indices = torch.tensor([[4, 5, 5, 13]])  # a register, patch (0, 0) twice (two heads), patch (2, 2)
    patches, prefix = scatter_to_patches(weights, indices, layout)
    assert float(prefix[0]) == pytest.approx(0.1)
    assert float(patches[0, 0, 0]) == pytest.approx(0.5)
    assert float(patches[0, 2, 2]) == pytest.approx(0.4)
    assert float(patches.sum() + prefix.sum()) == pytest.approx(1.0)


def test_token_grid_of_the_lpm_token_count():
    assert TokenGrid.of(1025, 1).grid == 32  # ViT-B/16 at 512
    assert TokenGrid.of(1374, 5).grid == 37  # ViT-S/14 reg4 at 518
    with pytest.raises(ValueError):
        TokenGrid.of(1000, 1)


def test_selection_frequency_counts_layer_head_pairs():
    layout = TokenGrid(num_prefix=1, grid=2)
    # one sample, 2 layers x 2 heads, 2 kept tokens each: patch (0, 0) = token 1 kept by all four pairs
    indices = torch.tensor([[[[1, 2], [1, 3]], [[1, 4], [0, 1]]]])
    share = selection_frequency(indices, layout)
    torch.testing.assert_close(share, torch.tensor([[[1.0, 0.25], [0.25, 0.25]]]))


def focused_model(layout: TokenGrid, heads: int = 2, head_dim: int = 8, layers: int = 2) -> FPTPlus:
    spec = ModelSpec(num_classes=3, lpm_dim=heads * head_dim, num_heads=heads, patch_size=16, num_layers=layers,
                     side_input_size=32, side_reduction=2, num_prompts=4)
    model = FPTPlus(spec).eval()
    with torch.no_grad():  # every prompt of a layer the same vector: one query per head
        model.fusion.prompts.copy_(torch.randn(layers, 1, heads * head_dim).expand(-1, spec.num_prompts, -1))
    return model


def keys_pointing_at(model: FPTPlus, token_positions: list[int], count: int) -> torch.Tensor:
    """(1, L, H, count, Dh) keys: zero except at `token_positions[l]` of layer l, where each head's key is its
    query scaled up, so every prompt's attention goes there."""
    fusion = model.fusion
    layers, _, width = fusion.prompts.shape
    with torch.no_grad():
        queries = fusion.norm(fusion.prompts)[:, 0].view(layers, fusion.num_heads, fusion.head_dim)
    keys = torch.zeros(1, layers, fusion.num_heads, count, fusion.head_dim)
    for layer, position in enumerate(token_positions):
        keys[0, layer, :, position] = 40 * queries[layer] / queries[layer].norm(dim=-1, keepdim=True)
    return keys


@pytest.mark.parametrize("grid,num_prefix", [(14, 1), (16, 1), (16, 5)])
def test_attention_lands_on_the_patch_of_the_attended_token(grid: int, num_prefix: int):
    """A hand-built case: the fusion attends (almost) only to one kept token per layer, at a known LPM index;
    the map puts that layer's mass on that token's patch, and a prefix token's mass beside the map."""
    torch.manual_seed(0)
    layout = TokenGrid(num_prefix=num_prefix, grid=grid)
    model = focused_model(layout)
    kept = 6
    rng = np.random.default_rng(grid + num_prefix)
    chosen = np.sort(rng.choice(np.arange(num_prefix, layout.num_tokens), kept - 1, replace=False))
    indices = torch.tensor(np.concatenate([[0], chosen]))  # token 0 (class) is kept too, at position 0
    token_indices = indices.expand(1, 2, 2, kept).clone()
    keys = keys_pointing_at(model, [3, 0], kept)  # layer 0 attends a patch token, layer 1 the class token
    values = torch.randn_like(keys)
    side = torch.randn(1, 3, 32, 32)
    explained = explain_batch(model, side, keys, values, token_indices, layout)
    row, column = patch_of(int(indices[3]), num_prefix, grid)
    assert explained.layer_maps.shape == (1, 2, grid, grid)
    assert float(explained.layer_maps[0, 0, row, column]) > 0.99
    assert float(explained.prefix_mass[0, 1]) > 0.99 and float(explained.layer_maps[0, 1].sum()) < 0.01
    torch.testing.assert_close(explained.layer_maps.sum(dim=(2, 3)) + explained.prefix_mass, torch.ones(1, 2))
    torch.testing.assert_close(explained.attention, explained.layer_maps.mean(1))
    torch.testing.assert_close(explained.probabilities.sum(-1), torch.ones(1))


def test_heads_keeping_different_tokens_are_averaged_through_their_own_indices():
    """Head 0 kept tokens [1, 2], head 1 kept [3, 4], both attending their first kept token: each head's mass
    (1/2 of the layer's) lands on its own token's patch."""
    layout = TokenGrid(num_prefix=1, grid=2)
    torch.manual_seed(1)
    model = focused_model(layout, layers=1)
    keys = keys_pointing_at(model, [0], 2)
    token_indices = torch.tensor([[[[1, 2], [3, 4]]]])
    explained = explain_batch(model, torch.randn(1, 3, 32, 32), keys, torch.randn_like(keys), token_indices, layout)
    layer = explained.layer_maps[0, 0]
    assert float(layer[0, 0]) == pytest.approx(0.5, abs=0.01)  # token 1: head 0's choice
    assert float(layer[1, 0]) == pytest.approx(0.5, abs=0.01)  # token 3: head 1's choice


def test_pointing_ratio_of_perfect_uniform_and_shuffled_maps():
    region = np.zeros((4, 4), bool)
    region[:, 1:] = True  # 12 patches where lesions can be
    lesions = np.zeros((4, 4), bool)
    lesions[0, 1:] = True  # 3 of them: a quarter
    perfect = lesions.astype(float)
    assert pointing_ratio(perfect, lesions, region) == pytest.approx(4.0)
    uniform = np.ones((4, 4))
    assert pointing_ratio(uniform, lesions, region) == pytest.approx(1.0)
    outside = np.zeros((4, 4))
    outside[:, 0] = 1.0  # all mass outside the region: no mass to judge
    assert np.isnan(pointing_ratio(outside, lesions, region))
    shuffled = shuffled_within(perfect + 0.0, region, np.random.default_rng(0))
    assert shuffled[~region].sum() == 0 and shuffled.sum() == perfect.sum()
    ratios = [pointing_ratio(shuffled_within(perfect, region, np.random.default_rng(seed)), lesions, region)
              for seed in range(200)]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.15)

"""Shapes and parameter counts of the stage-two model at ViT-B/16-384 defaults (docs/method.md)."""

from __future__ import annotations

import timm
import torch

from fpt.stages.model.fpt_model import FPTPlus, ModelSpec


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def vit_b_spec(**overrides) -> ModelSpec:
    values = dict(num_classes=5, lpm_dim=768, num_heads=12, patch_size=16, num_layers=6, side_input_size=128)
    values.update(overrides)
    return ModelSpec(**values)


def test_fptplus_parameter_counts_match_method():
    model = FPTPlus(vit_b_spec())
    # docs/method.md: side 751,877; fusion 149,088 = prompts 73,728 + LayerNorm 1,536 + output 73,824
    assert count(model.side) == 751_877
    assert count(model.fusion) == 149_088
    assert model.fusion.prompts.numel() == 73_728
    assert count(model.fusion.norm) == 1_536
    assert count(model.fusion.output) == 73_824
    lpm = timm.create_model("vit_base_patch16_384", pretrained=False)
    ratio = count(model) / count(lpm)
    assert 0.0100 < ratio < 0.0106, ratio  # "1.03% of the 86.9 M of the LPM"


def test_fpt_variant_parameter_count():
    # FPT (MICCAI): layers 0..11, side input 224, Dp = D/8 without LayerNorm, projection on.
    # By hand: side 12 blocks x 111,840 + patch 73,824 + cls 96 + pos 197x96 + norm 192 + head 485
    # = 1,435,589; fusion prompts 12x16x96 + proj 96x768+768 + out 768x96+96 = 166,752.
    model = FPTPlus(vit_b_spec(num_layers=12, side_input_size=224, prompt_reduction=8, prompt_norm=False,
                               prompt_projection=True))
    assert count(model.side) == 1_435_589
    assert count(model.fusion) == 166_752


def test_forward_shapes_and_prompts_matter():
    torch.manual_seed(0)
    model = FPTPlus(vit_b_spec(num_layers=2, side_input_size=32, num_prompts=4)).eval()
    images = torch.randn(3, 3, 32, 32)
    keys, values = torch.randn(3, 2, 12, 10, 64), torch.randn(3, 2, 12, 10, 64)
    with torch.no_grad():
        logits = model(images, keys, values)
        other = model(images, keys, values * 3 + 1)
    assert logits.shape == (3, 5)
    assert not torch.allclose(logits, other), "the cached values must influence the prediction"


def test_side_only_model_has_no_fusion():
    model = FPTPlus(vit_b_spec(use_prompts=False))
    assert model.fusion is None
    assert count(model) == 751_877
    assert model(torch.randn(1, 3, 128, 128), None, None).shape == (1, 5)

"""FPT+ stage-two model: fusion modules + side network, sized from the cache's metadata."""

from __future__ import annotations

import torch
from pydantic import BaseModel
from torch import nn

from fpt.stages.model.fusion import PromptFusion
from fpt.stages.model.side_network import SideViT


class ModelSpec(BaseModel):
    """Everything needed to rebuild the stage-two model (stored with checkpoints)."""

    num_classes: int
    lpm_dim: int
    num_heads: int
    patch_size: int
    num_layers: int
    side_input_size: int
    side_reduction: int = 8
    num_prompts: int = 16
    prompt_reduction: int = 1
    prompt_norm: bool = True
    prompt_projection: bool = False
    use_prompts: bool = True
    fusion_dropout: float = 0.5
    mlp_ratio: float = 4.0

    @property
    def side_width(self) -> int:
        return self.lpm_dim // self.side_reduction

    @property
    def prompt_width(self) -> int:
        return self.lpm_dim // self.prompt_reduction


class FPTPlus(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.side = SideViT(
            image_size=spec.side_input_size,
            patch_size=spec.patch_size,
            width=spec.side_width,
            depth=spec.num_layers,
            num_heads=spec.num_heads,
            mlp_ratio=spec.mlp_ratio,
            num_classes=spec.num_classes,
        )
        self.fusion = (
            PromptFusion(
                num_layers=spec.num_layers,
                num_prompts=spec.num_prompts,
                lpm_dim=spec.lpm_dim,
                num_heads=spec.num_heads,
                side_dim=spec.side_width,
                prompt_dim=spec.prompt_width,
                prompt_norm=spec.prompt_norm,
                prompt_projection=spec.prompt_projection,
                dropout=spec.fusion_dropout,
            )
            if spec.use_prompts
            else None
        )

    def forward(self, side_images: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
        prompts = self.fusion(keys, values) if self.fusion is not None else None
        return self.side(side_images, prompts)

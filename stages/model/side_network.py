"""The side ViT, trained from scratch, into whose blocks the fine-grained prompts are injected."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class SideViT(nn.Module):
    """A small ViT (timm's VisionTransformer class, standard init) with per-block prompts.

    At block i the tokens are [patch tokens ; prompts of layer i]; the prompt outputs are
    dropped after the block, so fresh prompts enter every block.
    """

    def __init__(
        self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int, mlp_ratio: float, num_classes: int
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"side width {width} is not divisible by {num_heads} heads")
        self.vit = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            class_token=True,
            global_pool="token",
        )

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, s, s), prompts (B, depth, M, width) or None -> logits (B, classes)."""
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.norm_pre(x)
        for index, block in enumerate(vit.blocks):
            if prompts is None:
                x = block(x)
            else:
                num_tokens = x.shape[1]
                x = block(torch.cat([x, prompts[:, index]], dim=1))[:, :num_tokens]
        x = vit.norm(x)
        return vit.forward_head(x)

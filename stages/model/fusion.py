"""Fusion modules: learnable prompts cross-attend into the LPM's cached keys and values.

One set of prompts per chosen layer (L x M x Dp); the LayerNorm, the optional prompt
projection and the output projection are shared by all layers (docs/method.md, stage two).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PromptFusion(nn.Module):
    def __init__(
        self,
        num_layers: int,
        num_prompts: int,
        lpm_dim: int,
        num_heads: int,
        side_dim: int,
        prompt_dim: int | None = None,
        prompt_norm: bool = True,
        prompt_projection: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        prompt_dim = lpm_dim if prompt_dim is None else prompt_dim
        if lpm_dim % num_heads:
            raise ValueError(f"LPM width {lpm_dim} is not divisible by {num_heads} heads")
        if not prompt_projection and prompt_dim != lpm_dim:
            raise ValueError("without a prompt projection the prompt width must equal the LPM width")
        if prompt_dim != lpm_dim and prompt_dim != side_dim:
            raise ValueError("a reduced prompt width must equal the side width (it is added after projection)")
        self.num_heads = num_heads
        self.head_dim = lpm_dim // num_heads
        self.residual_before_projection = prompt_dim == lpm_dim
        self.prompts = nn.Parameter(torch.empty(num_layers, num_prompts, prompt_dim))
        nn.init.normal_(self.prompts, std=1e-6)
        self.norm = nn.LayerNorm(prompt_dim) if prompt_norm else nn.Identity()
        self.projection = nn.Linear(prompt_dim, lpm_dim) if prompt_projection else nn.Identity()
        self.output = nn.Linear(lpm_dim, side_dim)
        self.dropout = nn.Dropout(dropout)

    def attention(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: (B, L, H, n, Dh) -> the prompts' attention over the cached tokens, (B, L, H, M, n):
        softmax(Q_l K_l^T / sqrt(Dh)) per layer and head, each row summing to 1. `fpt explain` puts it
        back on the image through the tokens' indices."""
        layers, prompts, _ = self.prompts.shape
        queries = self.projection(self.norm(self.prompts))
        queries = queries.view(layers, prompts, self.num_heads, self.head_dim).transpose(1, 2)
        # Expanding the queries over the batch (a view) lets matmul treat (B, L, H) as one batch
        # axis with the keys as they are; einsum's backward permutes (copies) the whole keys
        # tensor every step (1.6x slower fwd+bwd on CPU, bench/README.md).
        queries = (queries / math.sqrt(self.head_dim)).expand(keys.shape[0], *queries.shape)
        return torch.matmul(queries, keys.transpose(-1, -2)).softmax(dim=-1)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """keys, values: (B, L, H, n, Dh) -> fine-grained prompts (B, L, M, d)."""
        layers, prompts, _ = self.prompts.shape
        context = torch.matmul(self.attention(keys), values)
        context = context.transpose(2, 3).reshape(keys.shape[0], layers, prompts, -1)
        if self.residual_before_projection:
            # Linear(C + P) = W C + (W P + b): the prompts are projected once, not once per sample,
            # and the (B, L, M, D) sum is never formed (bench/README.md)
            out = F.linear(context, self.output.weight) + self.output(self.prompts)
        else:
            out = self.output(context) + self.prompts
        return self.dropout(out)

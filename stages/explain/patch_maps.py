"""Putting per-token numbers back on the LPM's patch grid.

The LPM's tokens are its prefix tokens (class and register tokens: `num_prefix` of them) followed
by the grid x grid patches in row-major order (timm's layout; the LPM input is square). A cached
key or value carries the LPM index of its token (the store's token_indices), so any number given
per cached token (an attention weight, a count) can be summed back onto the patch it came from.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel


class TokenGrid(BaseModel):
    """The LPM's token layout: `num_prefix` prefix tokens, then a `grid` x `grid` patch grid."""

    num_prefix: int
    grid: int

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.grid * self.grid

    @classmethod
    def of(cls, num_tokens: int, num_prefix: int) -> "TokenGrid":
        grid = math.isqrt(num_tokens - num_prefix)
        if grid * grid != num_tokens - num_prefix:
            raise ValueError(f"{num_tokens} tokens with {num_prefix} prefix tokens do not form a square patch grid")
        return cls(num_prefix=num_prefix, grid=grid)


def scatter_to_patches(weights: torch.Tensor, token_indices: torch.Tensor, layout: TokenGrid
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-token numbers onto the tokens they belong to.

    weights, token_indices: (..., n) (a number for each kept token, and its LPM token index).
    Returns the patch map (..., grid, grid) and the total on prefix tokens (...,). Nothing is lost:
    patch map sum + prefix total = weights sum.
    """
    per_token = torch.zeros((*weights.shape[:-1], layout.num_tokens), dtype=weights.dtype, device=weights.device)
    per_token.scatter_add_(-1, token_indices.long(), weights)
    prefix = per_token[..., : layout.num_prefix].sum(-1)
    patches = per_token[..., layout.num_prefix:].reshape(*weights.shape[:-1], layout.grid, layout.grid)
    return patches, prefix


def selection_frequency(token_indices: torch.Tensor, layout: TokenGrid) -> torch.Tensor:
    """How often each patch was among the LPM's kept tokens: (B, L, H, n) indices -> (B, grid, grid), the
    share of the L x H (layer, head) pairs that kept it (0 to 1)."""
    batch, layers, heads, _ = token_indices.shape
    ones = torch.ones(token_indices.shape, dtype=torch.float32, device=token_indices.device)
    counts, _ = scatter_to_patches(ones.reshape(batch, -1), token_indices.reshape(batch, -1), layout)
    return counts / (layers * heads)

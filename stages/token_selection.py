"""Important-token selection inside the frozen LPM's self-attention (METHOD.md, stage one).

In each chosen layer, per head: A = softmax(q k^T / sqrt(Dh)); importance is the mean of A
over queries (`global`) or the CLS query's row (`class_token`); the top n = floor(N * ratio)
keys and values are kept. Attention is computed a block of queries at a time, so memory is
O(chunk x N) per head instead of O(N x N), and the block's own output is computed from the
same softmax, so the LPM's forward pass is not run twice.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Importance = Literal["global", "class_token"]


def num_selected(num_tokens: int, token_ratio: float) -> int:
    return max(1, math.floor(num_tokens * token_ratio + 1e-9))


def attention_with_importance(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, importance: Importance, query_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention output (B, H, N, Dh) and per-key importance (B, H, N).

    q, k, v: (B, H, N, Dh). The importance is computed in float32 whatever the input dtype.
    Per block of queries the logits are exponentiated in place (after subtracting the row max)
    and never divided: the output is (E v) / rowsum and the column sums of A = E / rowsum come
    from one matrix-vector product, (1 / rowsum)^T E. That is two passes over the block fewer
    than softmax followed by a sum (bench/README.md).
    """
    batch, heads, num_tokens, _ = q.shape
    output = torch.empty_like(q)
    scores = torch.zeros((batch, heads, 1, num_tokens), dtype=torch.float32, device=q.device)
    k_t = k.transpose(-2, -1)
    q = q * scale  # scaling the (N, Dh) queries, not each (chunk, N) block of logits
    # Every block's logits go into one buffer. At ViT-B/512 a block is 50 MB, above glibc's 32 MiB
    # limit for reusing freed heap memory: a fresh block per chunk was mapped and faulted in anew,
    # 22-30 % of the selecting attention's time (bench/README.md). Same products, same bits.
    rows = min(query_chunk, num_tokens)
    storage = torch.empty(batch * heads * rows * num_tokens, dtype=q.dtype, device=q.device)
    for start in range(0, num_tokens, query_chunk):
        stop = min(start + query_chunk, num_tokens)
        block = storage[: batch * heads * (stop - start) * num_tokens].view(batch, heads, stop - start, num_tokens)
        weights = torch.matmul(q[:, :, start:stop], k_t, out=block).float()
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        inverse_sums = weights.sum(dim=-1, keepdim=True).reciprocal_()  # (B, H, chunk, 1)
        output[:, :, start:stop] = (weights.to(v.dtype) @ v) * inverse_sums.to(v.dtype)
        if importance == "global":
            scores += inverse_sums.transpose(-2, -1) @ weights
        elif start == 0:
            scores = weights[:, :, :1] * inverse_sums[:, :, :1]
    scores = scores.squeeze(2)
    if importance == "global":
        scores /= num_tokens
    return output, scores


def select_tokens(
    k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the `count` highest-scoring keys/values per (sample, head), in token order.

    Returns keys, values (B, H, count, Dh) and the kept token indices (B, H, count).
    """
    top = torch.topk(scores, count, dim=-1).indices.sort(dim=-1).values
    gather_index = top.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1])
    return k.gather(2, gather_index), v.gather(2, gather_index), top


class TokenSelectingLPM(nn.Module):
    """Runs a frozen timm ViT and returns the selected keys/values of the chosen layers.

    forward(images) -> keys, values: (B, L, H, n, Dh), indices: (B, L, H, n).
    Blocks after the last chosen layer are not run.
    """

    def __init__(
        self, vit: nn.Module, layers: list[int], token_ratio: float, importance: Importance, query_chunk: int = 128
    ) -> None:
        super().__init__()
        depth = len(vit.blocks)
        if max(layers) >= depth:
            raise ValueError(f"layer {max(layers)} requested but the LPM has only {depth} blocks (0..{depth - 1})")
        self.vit = vit
        self.layers = sorted(layers)
        self.token_ratio = token_ratio
        self.importance: Importance = importance
        self.query_chunk = query_chunk

    def _selecting_block(
        self, block: nn.Module, x: torch.Tensor, count: int, need_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = block.attn
        batch, num_tokens, _ = x.shape
        h = block.norm1(x)
        qkv = attn.qkv(h).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out, scores = attention_with_importance(q, k, v, attn.scale, self.importance, self.query_chunk)
        keys, values, indices = select_tokens(k, v, scores, count)
        if need_output:
            gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
            out = out.transpose(1, 2).reshape(batch, num_tokens, -1)
            out = attn.norm(out)
            if gate is not None:
                out = out * gate
            out = attn.proj_drop(attn.proj(out))
            x = x + block.drop_path1(block.ls1(out))
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, keys, values, indices

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        count = num_selected(x.shape[1], self.token_ratio)
        keys, values, indices = [], [], []
        last = self.layers[-1]
        chosen = set(self.layers)
        for index, block in enumerate(vit.blocks[: last + 1]):
            if index in chosen:
                x, k, v, idx = self._selecting_block(block, x, count, need_output=index != last)
                keys.append(k)
                values.append(v)
                indices.append(idx)
            else:
                x = block(x)
        return torch.stack(keys, 1), torch.stack(values, 1), torch.stack(indices, 1)

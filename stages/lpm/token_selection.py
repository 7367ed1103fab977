"""Important-token selection inside the frozen LPM's self-attention (docs/method.md, stage one).

In each chosen layer, per head: A = softmax(q k^T / sqrt(Dh) + bias); importance is the mean of A
over queries (`global`) or the CLS query's row (`class_token`); the top n = floor(N * ratio)
keys and values are kept. Attention is computed a block of queries at a time, so memory is
O(chunk x N) per head instead of O(N x N), and the block's own output is computed from the
same softmax, so the LPM's forward pass is not run twice.

The model runs its own `forward_features`: position embeddings, rotary embeddings, relative
position biases, prefix tokens and every block's residual structure (pre- or post-norm, layer
scale, gates) are timm's code. In a chosen block, the one call of the family's attention to
`torch.nn.functional.scaled_dot_product_attention` (q and k as the attention uses them, after
their norms and rotary embeddings; the additive bias as its mask) is answered by
`attention_with_importance` instead, through a torch function mode, and the keys, values and
scores are kept. stages/lpm/families.py lists the attention classes known to make that call.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fpt.cache.errors import UserError
from fpt.stages.core.precision import Precision, arithmetic

Importance = Literal["global", "class_token"]


def num_selected(num_tokens: int, token_ratio: float) -> int:
    return max(1, math.floor(num_tokens * token_ratio + 1e-9))


def attention_with_importance(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, importance: Importance, query_chunk: int,
    bias: torch.Tensor | None = None, need_output: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Self-attention output (B, H, N, Dh) (None unless `need_output`) and per-key importance (B, H, N).

    q, k, v: (B, H, N, Dh); bias: added to the logits, broadcastable to (B, H, N, N) (a relative
    position bias). The importance is computed in float32 whatever the input dtype.
    Per block of queries the logits are exponentiated in place (after subtracting the row max)
    and never divided: the output is (E v) / rowsum and the column sums of A = E / rowsum come
    from one matrix-vector product, (1 / rowsum)^T E. That is two passes over the block fewer
    than softmax followed by a sum (bench/README.md).
    """
    batch, heads, num_tokens, _ = q.shape
    output = torch.empty_like(q) if need_output else None
    scores = torch.zeros((batch, heads, 1, num_tokens), dtype=torch.float32, device=q.device)
    k_t = k.transpose(-2, -1)
    q = q * scale  # scaling the (N, Dh) queries, not each (chunk, N) block of logits
    # Every block's logits go into one buffer. At ViT-B/512 a block is 50 MB, above glibc's 32 MiB
    # limit for reusing freed heap memory: a fresh block per chunk would be mapped and faulted in anew,
    # 22-30 % of the selecting attention's time (bench/README.md). Same products, same bits.
    rows = min(query_chunk, num_tokens)
    storage = torch.empty(batch * heads * rows * num_tokens, dtype=q.dtype, device=q.device)
    for start in range(0, num_tokens, query_chunk):
        stop = min(start + query_chunk, num_tokens)
        block = storage[: batch * heads * (stop - start) * num_tokens].view(batch, heads, stop - start, num_tokens)
        weights = torch.matmul(q[:, :, start:stop], k_t, out=block)
        if bias is not None:
            weights += bias[..., start:stop, :]
        weights = weights.float()
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        inverse_sums = weights.sum(dim=-1, keepdim=True).reciprocal_()  # (B, H, chunk, 1)
        if output is not None:
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


class _LastChosenLayerDone(Exception):
    """Ends the LPM's forward once the last chosen layer's keys and values are kept."""


class _SelectingAttention(TorchFunctionMode):
    """Active while a chosen block runs: its attention's scaled_dot_product_attention call is answered
    by `attention_with_importance`, and the selected keys, values and token indices are kept."""

    def __init__(self, owner: "TokenSelectingLPM", layer: int) -> None:
        super().__init__()
        self.owner = owner
        self.layer = layer
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.calls += 1
        q, k, v = args[:3]
        bias = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        owner = self.owner
        if self.calls > 1 or kwargs.get("is_causal") or (bias is not None and bias.dtype == torch.bool) \
                or k.shape[1] != q.shape[1]:
            raise UserError(
                f"Block {self.layer} of the LPM computes attention in a way fpt cannot score tokens in "
                "(several attention calls, a causal or boolean mask, or fewer key heads than query heads).",
                "Use a model of a supported family (stages/lpm/families.py lists them).",
            )
        scale = kwargs.get("scale") or q.shape[-1] ** -0.5
        last = self.layer == owner.layers[-1]
        output, scores = attention_with_importance(q, k, v, scale, owner.importance, owner.query_chunk, bias,
                                                   need_output=not last)
        owner.kept[self.layer] = select_tokens(k, v, scores, num_selected(k.shape[2], owner.token_ratio))
        if last:
            raise _LastChosenLayerDone
        return output


class TokenSelectingLPM(nn.Module):
    """Runs a frozen timm ViT and returns the selected keys/values of the chosen layers.

    forward(images) -> keys, values: (B, L, H, n, Dh), indices: (B, L, H, n).
    Blocks after the last chosen layer are not run, nor the attention output of the last one.
    """

    def __init__(
        self, vit: nn.Module, layers: list[int], token_ratio: float, importance: Importance, query_chunk: int = 128,
        precision: Precision = "fp32",
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
        self.precision: Precision = precision
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._active: _SelectingAttention | None = None
        for layer in self.layers:
            vit.blocks[layer].attn.fused_attn = True  # the path that calls scaled_dot_product_attention

    def _entering(self, layer: int):
        def hook(module: nn.Module, inputs: Any) -> None:
            self._active = _SelectingAttention(self, layer)
            self._active.__enter__()
        return hook

    def _leaving(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._stop_selecting(check=True)

    def _stop_selecting(self, check: bool = False) -> None:
        """Leave the chosen block's mode; with `check`, refuse a block whose attention was never answered."""
        active, self._active = self._active, None
        if active is None:
            return
        active.__exit__(None, None, None)
        if check and not active.calls:
            raise UserError(
                f"Block {active.layer} of the LPM did not compute its attention through "
                "scaled_dot_product_attention, so its tokens cannot be scored.",
                "Use a model of a supported family (stages/lpm/families.py lists them).",
            )

    def _refuse_non_finite(self) -> None:
        """Refuse keys or values that overflowed: they would be written to the cache as inf or NaN."""
        broken = [layer for layer, (keys, values, _) in self.kept.items()
                  if not (torch.isfinite(keys).all() and torch.isfinite(values).all())]
        if not broken:
            return
        where = f"The LPM's keys or values in block(s) {', '.join(map(str, sorted(broken)))} are not finite (inf or NaN)"
        if self.precision == "fp16":
            raise UserError(f"{where} at extract.precision=fp16: this model's activations exceed fp16's range "
                            "(largest value 65504).", "Use extract.precision=bf16 (the range of fp32) or fp32.")
        raise UserError(f"{where} at extract.precision={self.precision}: the weights hold inf or NaN, or the "
                        "input does.", "Check the weights file (lpm.weights) and the images' normalisation.")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.kept = {}
        # hooks for this forward only: the model itself stays as timm made it
        handles = [hook for layer in self.layers for hook in (
            self.vit.blocks[layer].register_forward_pre_hook(self._entering(layer)),
            self.vit.blocks[layer].register_forward_hook(self._leaving))]
        try:
            with arithmetic(self.precision, images.device):
                self.vit.forward_features(images)
        except _LastChosenLayerDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
            self._stop_selecting()
        self._refuse_non_finite()
        kept = [self.kept[layer] for layer in self.layers]
        return tuple(torch.stack([part[i] for part in kept], 1) for i in range(3))  # type: ignore[return-value]

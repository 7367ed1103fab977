"""K stage-two models of one architecture run as one, their parameters stacked on a leading axis.

A pack (stages/train/packed_training.py) steps K models on the same batch. One by one, each model's
step is some 500 small operations whose dispatch costs more than their arithmetic at demo size
(bench/README.md). Stacked, every operation runs once for all K models on K times the data: the
linear layers are batched matrix products, the shared side image is patch-embedded by one
convolution with all K models' filters, and the K models' prompt queries attend to the shared
cached keys in one product (K * M queries instead of M).

The models stay ordinary `FPTPlus` modules for everything else (checkpoints, evaluation, loading
weights); their parameters live in one buffer per model (`FlatParameters`), which is what each
model's optimiser steps. A step gathers the K buffers into one (K, P) block, whose slices are the
stacked parameters, and scatters the stacked gradients back into a (K, P) block whose rows are
the buffers' gradients: two copies of K * P numbers, against 85 tensors per model for the
optimiser and the clipping to walk otherwise.

The stacked forward computes the same function as `FPTPlus.forward` (tests/test_stacked_model.py
compares them); the dropout of the fusion modules is applied with masks drawn by the caller, one
per model from that model's own random stream, so a model's result does not depend on its pack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from fpt.stages.model.flat_parameters import FlatParameters
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec

_BLOCK_PARAMETERS = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
}
_BLOCK_IDENTITIES = ("attn.q_norm", "attn.k_norm", "attn.norm", "ls1", "ls2", "drop_path1", "drop_path2", "mlp.norm")


def _is_plain_block(block: nn.Module) -> bool:
    """A timm Block with exactly the pieces the stacked forward reproduces (pre-norm, GELU MLP, no extras)."""
    if not isinstance(block, Block):
        return False
    names = {name for name, _ in block.named_parameters()}
    if names != _BLOCK_PARAMETERS or getattr(block.attn, "gate", None) is not None:
        return False
    if any(not isinstance(block.get_submodule(name), nn.Identity) for name in _BLOCK_IDENTITIES):
        return False
    if not isinstance(block.mlp.act, nn.GELU) or block.mlp.act.approximate != "none":
        return False
    return block.attn.attn_drop.p == 0 and block.attn.proj_drop.p == 0 and block.mlp.drop1.p == 0 and block.mlp.drop2.p == 0


def stackable(model: FPTPlus) -> bool:
    """Whether `StackedModels` reproduces this model's forward (timm's plain ViT pieces only)."""
    vit = model.side.vit
    plain_vit = (
        vit.cls_token is not None and vit.reg_token is None and vit.pos_embed is not None and not vit.no_embed_class
        and not vit.dynamic_img_size and vit.global_pool == "token" and isinstance(vit.norm_pre, nn.Identity)
        and isinstance(vit.fc_norm, nn.Identity) and isinstance(vit.patch_embed.norm, nn.Identity)
        and vit.pos_drop.p == 0 and vit.head_drop.p == 0 and isinstance(vit.norm, nn.LayerNorm)
    )
    return plain_vit and all(_is_plain_block(block) for block in vit.blocks)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (K, ..., in), weight (K, out, in), bias (K, out) or None -> (K, ..., out), one batched product."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(rows, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
    return out.view(*x.shape[:-1], weight.shape[1])


# The fusion attends two samples at a time. All at once, its attention weights (B, L, H, K*M, n) are
# 60 MB at demo size with 16 stacked models (240 MB at ViT-B), above glibc's 32 MiB limit for reusing
# freed heap memory, so every step mapped fresh pages and faulted them in: that doubled the fusion's
# time. Two samples keep them under the limit up to 16 stacked ViT-B/512 models (30 MB). The number is
# fixed, not chosen from K, so that a model's gradient is summed over the same sample groups in the
# same order in a pack of 16 as alone: on one torch thread packed trials equal lone ones bit for bit
# (tests/test_stacked_model.py checks it at the demo's sizes).
FUSION_SAMPLES_PER_PRODUCT = 2


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax(queries keys^T) values per sample, layer and head; queries (L, H, Q, Dh) shared by the samples."""
    logits = torch.matmul(queries.expand(keys.shape[0], *queries.shape), keys.transpose(-1, -2))
    return torch.matmul(logits.softmax(dim=-1), values)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis with each model's own affine (weight, bias: (K, d))."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return torch.addcmul(bias.view(shape), F.layer_norm(x, x.shape[-1:], eps=eps), weight.view(shape))


class StackedModels:
    """K `FPTPlus` models of one `ModelSpec`, each with its parameters in a `FlatParameters` buffer."""

    def __init__(self, members: list[FlatParameters]) -> None:
        if not members:
            raise ValueError("nothing to stack")
        models = [m.model for m in members]
        spec = models[0].spec
        if any(m.spec != spec for m in models) or not all(stackable(m) for m in models):
            raise ValueError("only models of one architecture built from timm's plain ViT pieces can be stacked")
        if any(m.layout != members[0].layout for m in members):
            raise ValueError("the models' parameter buffers are laid out differently")
        self.members = members
        self.spec: ModelSpec = spec
        lead = models[0]
        self.side_eps = lead.side.vit.norm.eps
        self.block_eps = [(b.norm1.eps, b.norm2.eps) for b in lead.side.vit.blocks]
        fusion = lead.fusion
        self.fusion_eps = fusion.norm.eps if fusion is not None and isinstance(fusion.norm, nn.LayerNorm) else None
        self.fusion_dropout = fusion.dropout.p if fusion is not None else 0.0
        self.layout = members[0].layout

    def __len__(self) -> int:
        return len(self.members)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The models' parameters as they are now, stacked: (K, ...) slices of one gathered block."""
        block = torch.stack([m.buffer for m in self.members])
        K = len(self)
        return {name: block[:, offset:offset + shape.numel()].view(K, *shape) for name, offset, shape in self.layout}

    def leaves(self) -> dict[str, torch.Tensor]:
        """Fresh autograd leaves over the stacked parameters, for one forward and backward."""
        return {name: tensor.requires_grad_(True) for name, tensor in self.parameters().items()}

    def hand_back_gradients(self, leaves: dict[str, torch.Tensor]) -> None:
        """Scatter the stacked gradients into one (K, P) block; row k becomes model k's buffer gradient."""
        lead = self.members[0].buffer
        block = torch.empty(len(self), lead.numel(), dtype=lead.dtype, device=lead.device)
        for name, offset, shape in self.layout:
            rows = block[:, offset:offset + shape.numel()]
            grad = leaves[name].grad
            if grad is None:
                rows.zero_()
            else:
                rows.copy_(grad.view(len(self), -1))
        for k, member in enumerate(self.members):
            member.buffer.grad = block[k]

    def dropout_mask_shape(self, batch_size: int) -> tuple[int, ...]:
        """Shape of one model's fusion dropout mask: (B, L, M, d)."""
        spec = self.spec
        return (batch_size, spec.num_layers, spec.num_prompts, spec.side_width)

    # -- the forward ---------------------------------------------------------------------------
    def forward(self, params: dict[str, torch.Tensor], images: torch.Tensor, keys: torch.Tensor | None,
                values: torch.Tensor | None, dropout_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (K, B, classes) of all K models on one batch.

        images (B, 3, s, s), keys/values (B, L, H, n, Dh) or None; dropout_masks (K, B, L, M, d)
        already scaled by 1 / (1 - p), or None for no dropout (evaluation).
        """
        prompts = None
        if self.spec.use_prompts:
            assert keys is not None and values is not None
            prompts = self._fusion(params, keys, values)
            if dropout_masks is not None:
                prompts = prompts * dropout_masks
        return self._side(params, images, prompts)

    def _fusion(self, params: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Fine-grained prompts (K, B, L, M, d); the K models' queries share one product with the keys."""
        spec, K = self.spec, len(self)
        raw = params["fusion.prompts"]  # (K, L, M, Dp)
        layers, prompts = raw.shape[1], raw.shape[2]
        heads, head_dim = spec.num_heads, spec.lpm_dim // spec.num_heads
        queries = raw
        if self.fusion_eps is not None:
            queries = _layer_norm(queries, params["fusion.norm.weight"], params["fusion.norm.bias"], self.fusion_eps)
        if spec.prompt_projection:
            queries = _linear(queries, params["fusion.projection.weight"], params["fusion.projection.bias"])
        # (K, L, M, H, Dh) -> (L, H, K*M, Dh): every model's queries in one matrix per layer and head
        queries = queries.view(K, layers, prompts, heads, head_dim).permute(1, 3, 0, 2, 4)
        queries = queries.reshape(layers, heads, K * prompts, head_dim) / math.sqrt(head_dim)
        batch = keys.shape[0]
        groups = []
        for start in range(0, batch, FUSION_SAMPLES_PER_PRODUCT):
            stop = min(start + FUSION_SAMPLES_PER_PRODUCT, batch)
            group = _attend(queries, keys[start:stop], values[start:stop])  # (g, L, H, K*M, Dh)
            groups.append(group.view(stop - start, layers, heads, K, prompts, head_dim).permute(3, 0, 1, 4, 2, 5))
        # one copy joins the groups and reorders them to (K, B, L, M, H, Dh)
        context = torch.cat(groups, dim=1).view(K, batch, layers, prompts, heads * head_dim)
        weight, bias = params["fusion.output.weight"], params["fusion.output.bias"]
        if spec.prompt_width == spec.lpm_dim:
            # Linear(C + P) as Linear(C) + (W P + b), as PromptFusion computes it
            return _linear(context, weight) + _linear(raw, weight, bias).unsqueeze(1)
        return _linear(context, weight, bias) + raw.unsqueeze(1)

    def _side(self, params: dict[str, torch.Tensor], images: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        K, width, heads = len(self), self.spec.side_width, self.spec.num_heads
        batch = images.shape[0]
        p = "side.vit."
        filters = params[p + "patch_embed.proj.weight"]  # (K, d, 3, P, P)
        patches = F.conv2d(images, filters.flatten(0, 1), params[p + "patch_embed.proj.bias"].flatten(),
                           stride=self.spec.patch_size)  # (B, K*d, g, g)
        x = patches.view(batch, K, width, -1).permute(1, 0, 3, 2)  # (K, B, g*g, d)
        cls = params[p + "cls_token"].expand(K, batch, 1, width)
        x = torch.cat([cls, x], dim=2) + params[p + "pos_embed"]  # pos_embed (K, 1, T, d)
        last = len(self.block_eps) - 1
        for index, (eps1, eps2) in enumerate(self.block_eps):
            b = f"{p}blocks.{index}."
            # The block runs on [tokens ; prompts] and the prompts' outputs are dropped after it. They
            # only serve as keys and values, so only the tokens' rows are queried and carried
            # through the projection and the MLP: the same result with ~17 % less arithmetic. After
            # the last block only the class token is read (the head pools it), so that block
            # carries the class token's row alone: the same logits, and its queries, attention,
            # projection and MLP shrink 65-fold at 128 px. The queries and the keys/values are
            # projected apart, each straight into attention's layout, without the copies that
            # splitting one qkv product costs. unbind, not two selects: its backward stacks the two
            # gradients instead of zero-filling and adding.
            joined = x if prompts is None else torch.cat([x, prompts[:, :, index]], dim=2)
            length = joined.shape[2]
            if index == last:
                x = x[:, :, :1]
            rows = x.shape[2]
            h = _layer_norm(joined, params[b + "norm1.weight"], params[b + "norm1.bias"], eps1)
            w, bias, head_width = params[b + "attn.qkv.weight"], params[b + "attn.qkv.bias"], width // heads
            q = _linear(h[:, :, :rows], w[:, :width], bias[:, :width])
            q = q.view(K * batch, rows, heads, head_width).transpose(1, 2)
            k, v = _linear(h, w[:, width:], bias[:, width:]).view(K * batch, length, 2, heads, head_width).unbind(2)
            attended = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
            attended = attended.transpose(1, 2).reshape(K, batch, rows, width)
            x = x + _linear(attended, params[b + "attn.proj.weight"], params[b + "attn.proj.bias"])
            h = _layer_norm(x, params[b + "norm2.weight"], params[b + "norm2.bias"], eps2)
            h = F.gelu(_linear(h, params[b + "mlp.fc1.weight"], params[b + "mlp.fc1.bias"]))
            x = x + _linear(h, params[b + "mlp.fc2.weight"], params[b + "mlp.fc2.bias"])
        x = _layer_norm(x, params[p + "norm.weight"], params[p + "norm.bias"], self.side_eps)
        return _linear(x[:, :, 0], params[p + "head.weight"], params[p + "head.bias"])

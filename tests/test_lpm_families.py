"""Token selection agrees with timm's own attention for every supported ViT family, and other models
are refused with a message: rotary embeddings (EVA02, DINOv3, rope ViTs), relative position biases
(BEiT, relpos ViTs), post-norm blocks, registers and distillation tokens, global-pool models.

The reference is timm's unfused attention (fused_attn off): the attention map each block really
computes is captured where it enters `attn_drop`, the keys and values it multiplies at its two
matrix products, and each block's output by a hook."""

from __future__ import annotations

import pytest
import timm
import torch
from tiny import tiny_config
from torch import nn
from torch.overrides import TorchFunctionMode

from fpt.cache.errors import UserError
from fpt.stages.extract.settings_check import check_before_scan
from fpt.stages.lpm.families import FAMILIES, attention_class, check_family
from fpt.stages.lpm.token_selection import TokenSelectingLPM, num_selected

# (timm name, image size): one tiny instance per supported family, 4 blocks
MODELS = [
    ("vit_tiny_patch16_224", 64),  # ViT, class token
    ("deit_tiny_distilled_patch16_224", 64),  # class and distillation tokens
    ("vit_small_patch14_reg4_dinov2", 56),  # registers, layer scale
    ("vit_base_patch16_rpn_224", 64),  # post-norm ResPostBlock, no class token
    ("eva02_tiny_patch14_224", 56),  # EVA attention, rotary embeddings
    ("vit_small_patch16_dinov3", 64),  # EVA attention, rotary embeddings, registers
    ("vit_small_patch16_rope_224", 64),  # rotary attention
    ("beit_base_patch16_224", 64),  # relative position bias
    ("vit_relpos_small_patch16_224", 64),  # relative position bias, global pool
]
LAYERS = [1, 2]


def tiny_model(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=size, depth=4).eval()
    with torch.no_grad():  # perturbed, so that zero-initialised biases, tables and scales matter
        for parameter_name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
            if parameter_name.endswith(("qkv.weight", "q_proj.weight", "k_proj.weight")):
                parameter.mul_(4.0)  # sharper attention: rankings far from ties
    return model


class MultipliedOperands(TorchFunctionMode):
    """Keeps the keys and values an unfused attention multiplies: k from `q @ k^T`, v from `attn @ v`."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__) and all(a.dim() == 4 for a in args[:2]):
            left, right = args[:2]
            if left.shape[-1] == self.tokens:  # attention weights (B, H, N, N) @ v (B, H, N, Dh)
                self.values = right.detach().clone()
            elif right.shape[-1] == self.tokens:  # q (B, H, N, Dh) @ k^T (B, H, Dh, N)
                self.keys = right.transpose(-2, -1).detach().clone()
        return func(*args, **(kwargs or {}))


def reference(model: nn.Module, images: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor],
                                                               dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """timm's unfused attention maps (B, H, N, N), block outputs, and the (keys, values) (B, H, N, Dh)
    each attention multiplied, as rotary embeddings and norms left them, for every block."""
    maps, outputs, operands, handles = {}, {}, {}, []
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens

    def entering(module, inputs, index):
        operands[index] = MultipliedOperands(tokens)
        operands[index].__enter__()

    def leaving(module, inputs, output, index):
        operands[index].__exit__(None, None, None)
        operands[index] = (operands[index].keys, operands[index].values)

    for index, block in enumerate(model.blocks):
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda module, inputs, output, index=index: maps.__setitem__(index, inputs[0].detach())))
        handles.append(block.register_forward_hook(
            lambda module, inputs, output, index=index: outputs.__setitem__(index, output.detach())))
        handles.append(block.attn.register_forward_pre_hook(lambda m, i, index=index: entering(m, i, index)))
        handles.append(block.attn.register_forward_hook(lambda m, i, o, index=index: leaving(m, i, o, index)))
    with torch.no_grad():
        model.forward_features(images)
    for handle in handles:
        handle.remove()
    return maps, outputs, operands


@pytest.mark.parametrize("name, size", MODELS)
def test_each_family_selects_the_tokens_timm_attends_to(name: str, size: int) -> None:
    model = tiny_model(name, size)
    assert check_family(model, name) in FAMILIES.values()
    images = torch.randn(2, 3, size, size)
    maps, outputs, operands = reference(model, images)
    importances = ["global"] + (["class_token"] if getattr(model, "cls_token", None) is not None else [])
    for importance in importances:
        seen: dict[int, torch.Tensor] = {}
        hooks = [model.blocks[i].register_forward_hook(
            lambda module, inputs, output, i=i: seen.__setitem__(i, output.detach())) for i in range(len(model.blocks))]
        with torch.no_grad():
            keys, values, indices = TokenSelectingLPM(model, LAYERS, 0.25, importance, query_chunk=7)(images)
        for hook in hooks:
            hook.remove()
        tokens = maps[LAYERS[0]].shape[-1]
        count = num_selected(tokens, 0.25)
        assert keys.shape[:4] == values.shape[:4] == (2, len(LAYERS), maps[LAYERS[0]].shape[1], count)
        for position, layer in enumerate(LAYERS):
            attention = maps[layer]
            scores = attention.mean(dim=2) if importance == "global" else attention[:, :, 0]
            expected = torch.topk(scores, count, dim=-1).indices.sort(dim=-1).values
            assert torch.equal(indices[:, position], expected), (name, importance, layer)
            # the kept keys and values are the rows timm's attention multiplied (rotated keys for rotary families)
            reference_keys, reference_values = operands[layer]
            gather = expected.unsqueeze(-1).expand(-1, -1, -1, reference_keys.shape[-1])
            torch.testing.assert_close(keys[:, position], reference_keys.gather(2, gather), rtol=1e-4, atol=3e-5)
            torch.testing.assert_close(values[:, position], reference_values.gather(2, gather), rtol=1e-4, atol=3e-5)
        # every block before the last chosen one ran as timm runs it; none after it ran
        for index in range(LAYERS[-1]):
            torch.testing.assert_close(seen[index], outputs[index], rtol=1e-4, atol=3e-5)
        assert LAYERS[-1] not in seen and all(i not in seen for i in range(LAYERS[-1] + 1, len(model.blocks)))


def test_values_are_those_the_attention_averages(tmp_path) -> None:
    """For a plain ViT, the kept values are rows of v = qkv(norm1(x)): the block's own projection."""
    model = tiny_model("vit_tiny_patch16_224", 64)
    images = torch.randn(2, 3, 64, 64)
    projected = {}
    handle = model.blocks[2].attn.qkv.register_forward_hook(
        lambda module, inputs, output: projected.__setitem__("qkv", output.detach()))
    with torch.no_grad():
        _, values, indices = TokenSelectingLPM(model, [2], 0.25, "global")(images)
    handle.remove()
    attn = model.blocks[2].attn
    batch, tokens, _ = projected["qkv"].shape
    v = projected["qkv"].reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    expected = v.gather(2, indices[:, 0].unsqueeze(-1).expand(-1, -1, -1, attn.head_dim))
    torch.testing.assert_close(values[:, 0], expected)


class Unknown(nn.Module):
    """An attention fpt has not checked: it may compute anything."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.inner = attn

    def forward(self, x, **kwargs):
        return self.inner(x, **kwargs)


def test_a_model_of_another_family_is_refused_naming_the_supported_ones() -> None:
    model = tiny_model("vit_tiny_patch16_224", 64)
    model.blocks[1].attn = Unknown(model.blocks[1].attn)
    with pytest.raises(UserError) as refused:
        check_family(model, "my_vit")
    message = refused.value.paragraph()
    assert f"fpt cannot score the tokens of my_vit (VisionTransformer; attention: {attention_class(model.blocks[1].attn)}" in message
    assert all(family in message for family in FAMILIES.values())


def test_class_token_importance_is_refused_for_a_model_without_a_class_token(tmp_path) -> None:
    config = tiny_config(tmp_path, "lpm.name=vit_medium_patch16_gap_256", "extract.importance=class_token")
    with pytest.raises(UserError) as refused:
        check_before_scan(config)
    assert "vit_medium_patch16_gap_256 has no class token" in refused.value.paragraph()

"""The timm ViT families whose tokens fpt can score, one entry per attention class.

Token selection (stages/lpm/token_selection.py) runs the model's own forward and answers, in each
chosen block, the attention's call to `scaled_dot_product_attention` with q and k as the attention
uses them (after their norms and rotary embeddings) and its additive bias (a relative position
bias). A family is supported when its attention makes exactly that call on its fused path, which
tests/test_lpm_families.py checks against timm's own unfused attention for each entry here. Any
other model is refused before any image is read.
"""

from __future__ import annotations

from torch import nn

from fpt.cache.errors import UserError

# attention class (module.name) -> the families that use it, as users know them
FAMILIES: dict[str, str] = {
    "timm.layers.attention.Attention": "ViT, DeiT, DINOv2 (with registers), CLIP and post-norm ViTs (timm VisionTransformer)",
    "timm.layers.attention.AttentionRope": "ViTs with rotary position embeddings (vit_*_rope_*)",
    "timm.models.eva.EvaAttention": "EVA02 and DINOv3 (timm Eva)",
    "timm.models.beit.Attention": "BEiT (relative position bias)",
    "timm.models.vision_transformer_relpos.RelPosAttention": "ViTs with relative position bias (vit_relpos_*)",
}


def attention_class(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def check_family(model: nn.Module, name: str) -> str:
    """The family of `name`'s attention, or a UserError that names the supported ones."""
    blocks = getattr(model, "blocks", None)
    classes = {attention_class(block.attn) for block in blocks} if blocks is not None and all(
        hasattr(block, "attn") for block in blocks) else set()
    known = classes and all(cls in FAMILIES for cls in classes) and hasattr(model, "forward_features") \
        and hasattr(model, "patch_embed")
    if not known:
        found = ", ".join(sorted(classes)) or "no blocks[i].attn"
        raise UserError(
            f"fpt cannot score the tokens of {name} ({type(model).__name__}; attention: {found}): it knows how the "
            "attention of these families computes: " + "; ".join(FAMILIES.values()) + ".",
            "Choose an LPM of one of them (lpm.name), e.g. vit_base_patch16_384.orig_in21k_ft_in1k, a DINOv2 or "
            "DINOv3 ViT, or EVA02.",
        )
    return FAMILIES[classes.pop()]

"""Token selection equals a brute-force reference: explicit softmax attention, full matrices."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from fpt.stages.lpm.token_selection import TokenSelectingLPM, num_selected


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0, depth=6)
    # timm's init gives near-uniform attention; sharpen it so the ranking is far from ties
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    return model.eval()


def reference_selection(model, images, layers, ratio, importance):
    """Runs timm's own blocks; at each chosen layer recomputes attention by the formula."""
    captured = {}

    def capture(index):
        def hook(module, inputs, output):
            captured[index] = output.detach()
        return hook

    handles = [model.blocks[i].norm1.register_forward_hook(capture(i)) for i in layers]
    with torch.no_grad():
        model.forward_features(images)
    for handle in handles:
        handle.remove()
    keys_out, values_out, index_out = [], [], []
    for layer in layers:
        attn = model.blocks[layer].attn
        normed = captured[layer]  # (B, N, D): the block's normed input
        batch, tokens, dim = normed.shape
        heads, head_dim = attn.num_heads, dim // attn.num_heads
        weight, bias = attn.qkv.weight.detach(), attn.qkv.bias.detach()
        q = normed @ weight[:dim].T + bias[:dim]
        k = normed @ weight[dim : 2 * dim].T + bias[dim : 2 * dim]
        v = normed @ weight[2 * dim :].T + bias[2 * dim :]
        per_layer_k, per_layer_v, per_layer_i = [], [], []
        for b in range(batch):
            ks, vs, idxs = [], [], []
            for h in range(heads):
                sl = slice(h * head_dim, (h + 1) * head_dim)
                qh, kh, vh = q[b, :, sl].double(), k[b, :, sl].double(), v[b, :, sl].double()
                scores = qh @ kh.T / math.sqrt(head_dim)
                a = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
                a = a / a.sum(dim=1, keepdim=True)
                score = a.mean(dim=0) if importance == "global" else a[0]
                count = math.floor(tokens * ratio)
                order = sorted(range(tokens), key=lambda t: -float(score[t]))[:count]
                order = sorted(order)
                idxs.append(torch.tensor(order))
                ks.append(k[b, order, sl])
                vs.append(v[b, order, sl])
            per_layer_k.append(torch.stack(ks))
            per_layer_v.append(torch.stack(vs))
            per_layer_i.append(torch.stack(idxs))
        keys_out.append(torch.stack(per_layer_k))
        values_out.append(torch.stack(per_layer_v))
        index_out.append(torch.stack(per_layer_i))
    return torch.stack(keys_out, 1), torch.stack(values_out, 1), torch.stack(index_out, 1)


@pytest.mark.parametrize("importance", ["global", "class_token"])
@pytest.mark.parametrize("query_chunk", [5, 1000])
def test_selection_matches_explicit_attention(importance, query_chunk):
    model = tiny_vit()
    images = torch.randn(2, 3, 64, 64)
    layers = [1, 3, 4]
    ratio = 0.3
    selector = TokenSelectingLPM(model, layers, ratio, importance, query_chunk=query_chunk)
    with torch.inference_mode():
        keys, values, indices = selector(images)
    ref_keys, ref_values, ref_indices = reference_selection(model, images, layers, ratio, importance)
    tokens = 1 + (64 // 16) ** 2
    assert keys.shape == (2, 3, 3, math.floor(tokens * ratio), 64)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(keys, ref_keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, ref_values, rtol=1e-4, atol=1e-5)


def test_selection_is_per_head():
    model = tiny_vit(1)
    selector = TokenSelectingLPM(model, [2], 0.25, "global")
    with torch.inference_mode():
        _, _, indices = selector(torch.randn(1, 3, 64, 64))
    per_head = [tuple(indices[0, 0, h].tolist()) for h in range(indices.shape[2])]
    assert len(set(per_head)) > 1, "each head must rank tokens by its own attention"


def test_paper_token_count():
    # docs/method.md: 1025 tokens at 512 px with patch 16, ratio 0.2 -> 205 kept
    assert num_selected(1 + (512 // 16) ** 2, 0.2) == 205
    assert num_selected(1025, 0.5) == 512


def test_layers_beyond_depth_rejected():
    with pytest.raises(ValueError):
        TokenSelectingLPM(tiny_vit(), [6], 0.2, "global")

"""The fusion module equals docs/method.md's formula, computed by hand with explicit loops."""

from __future__ import annotations

import math

import numpy as np
import torch

from fpt.stages.model.fusion import PromptFusion


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def hand_fusion(prompts, ln_w, ln_b, proj_w, proj_b, out_w, out_b, keys, values, heads, residual_first):
    """keys/values (L, H, n, Dh) of one sample -> (L, M, d)."""
    layers, m, _ = prompts.shape
    dh = keys.shape[-1]
    result = []
    for l in range(layers):
        q = layer_norm(prompts[l], ln_w, ln_b) if ln_w is not None else prompts[l]
        if proj_w is not None:
            q = q @ proj_w.T + proj_b
        context = np.zeros((m, heads * dh))
        for h in range(heads):
            for i in range(m):
                qh = q[i, h * dh : (h + 1) * dh]
                weights = softmax(np.array([qh @ keys[l, h, t] / math.sqrt(dh) for t in range(keys.shape[2])]))
                context[i, h * dh : (h + 1) * dh] = sum(w * values[l, h, t] for t, w in enumerate(weights))
        if residual_first:
            result.append((context + prompts[l]) @ out_w.T + out_b)
        else:
            result.append(context @ out_w.T + out_b + prompts[l])
    return np.stack(result)


def hand_attention(prompts, ln_w, ln_b, keys, heads):
    """The prompts' attention weights over the tokens, (L, H, M, n), of one sample (FPT+: no projection)."""
    layers, m, _ = prompts.shape
    dh = keys.shape[-1]
    weights = np.zeros((layers, heads, m, keys.shape[2]))
    for l in range(layers):
        q = layer_norm(prompts[l], ln_w, ln_b)
        for h in range(heads):
            for i in range(m):
                qh = q[i, h * dh : (h + 1) * dh]
                weights[l, h, i] = softmax(np.array([qh @ keys[l, h, t] / math.sqrt(dh) for t in range(keys.shape[2])]))
    return weights


def randomize(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter))


def test_fptplus_fusion_matches_formula():
    layers, m, dim, heads, side, n = 2, 3, 8, 2, 5, 7
    fusion = PromptFusion(layers, m, dim, heads, side, prompt_norm=True, prompt_projection=False, dropout=0.5).eval()
    randomize(fusion)
    keys = torch.randn(2, layers, heads, n, dim // heads)
    values = torch.randn(2, layers, heads, n, dim // heads)
    with torch.no_grad():
        out = fusion(keys, values).double().numpy()
    g = lambda t: t.detach().double().numpy()
    for b in range(2):
        expected = hand_fusion(g(fusion.prompts), g(fusion.norm.weight), g(fusion.norm.bias), None, None,
                               g(fusion.output.weight), g(fusion.output.bias), g(keys[b]), g(values[b]), heads, True)
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-4)


def test_attention_weights_match_formula():
    """The weights `fpt explain` maps onto the image are the softmax the fusion's forward uses."""
    layers, m, dim, heads, side, n = 2, 3, 8, 2, 5, 7
    fusion = PromptFusion(layers, m, dim, heads, side).eval()
    randomize(fusion)
    keys = torch.randn(2, layers, heads, n, dim // heads)
    with torch.no_grad():
        weights = fusion.attention(keys).double().numpy()
    g = lambda t: t.detach().double().numpy()
    assert weights.shape == (2, layers, heads, m, n)
    for b in range(2):
        expected = hand_attention(g(fusion.prompts), g(fusion.norm.weight), g(fusion.norm.bias), g(keys[b]), heads)
        np.testing.assert_allclose(weights[b], expected, rtol=1e-4, atol=1e-6)


def test_fpt_variant_adds_prompts_after_projection():
    layers, m, dim, heads, side, n = 2, 2, 8, 2, 4, 5
    fusion = PromptFusion(layers, m, dim, heads, side, prompt_dim=side, prompt_norm=False, prompt_projection=True).eval()
    randomize(fusion)
    keys = torch.randn(1, layers, heads, n, dim // heads)
    values = torch.randn(1, layers, heads, n, dim // heads)
    with torch.no_grad():
        out = fusion(keys, values).double().numpy()
    g = lambda t: t.detach().double().numpy()
    expected = hand_fusion(g(fusion.prompts), None, None, g(fusion.projection.weight), g(fusion.projection.bias),
                           g(fusion.output.weight), g(fusion.output.bias), g(keys[0]), g(values[0]), heads, False)
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-4)


def test_fusion_is_permutation_invariant_over_tokens():
    fusion = PromptFusion(2, 4, 16, 4, 6).eval()
    randomize(fusion)
    keys, values = torch.randn(1, 2, 4, 9, 4), torch.randn(1, 2, 4, 9, 4)
    perm = torch.randperm(9)
    with torch.no_grad():
        torch.testing.assert_close(fusion(keys, values), fusion(keys[:, :, :, perm], values[:, :, :, perm]))


def test_prompt_initialisation_and_dropout():
    fusion = PromptFusion(6, 16, 768, 12, 96)
    assert fusion.prompts.shape == (6, 16, 768)
    assert float(fusion.prompts.detach().abs().max()) < 1e-4  # N(0, 1e-6^2)
    assert fusion.dropout.p == 0.5

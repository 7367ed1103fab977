"""The LPM loads weights the way a user gives them: a local file, the hub, or random on request."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from fpt.cache.errors import UserError
from fpt.cache.hashing import file_sha256
from fpt.stages.core.settings import LPMConfig
from fpt.stages.lpm.build import build_lpm


def test_local_weights_file_loads_with_resampled_position_embedding(tmp_path: Path):
    torch.manual_seed(5)
    saved = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(path))

    model, identity = build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights=str(path)), input_size=64)

    assert identity.weights_source == "file"
    assert identity.weights_identity == "sha256:" + file_sha256(path)
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["blocks.3.attn.qkv.weight"], saved.state_dict()["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(loaded["patch_embed.proj.weight"], saved.state_dict()["patch_embed.proj.weight"])
    # 224 px -> 14x14 grid resampled to 64 px -> 4x4 grid, plus the class token
    assert loaded["pos_embed"].shape == (1, 1 + 16, 192)
    torch.testing.assert_close(loaded["pos_embed"][:, 0], saved.state_dict()["pos_embed"][:, 0])
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_random_weights_only_when_asked_and_recorded():
    model_a, identity = build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights="none", init_seed=3), 64)
    model_b, _ = build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights="none", init_seed=3), 64)
    assert identity.weights_identity == "random:3"
    torch.testing.assert_close(model_a.state_dict()["blocks.0.attn.qkv.weight"], model_b.state_dict()["blocks.0.attn.qkv.weight"])
    assert (identity.embed_dim, identity.num_heads, identity.head_dim, identity.depth) == (192, 3, 64, 12)


def test_missing_weights_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights=str(tmp_path / "nope.safetensors")), 64)


def test_weights_of_another_architecture_are_refused(tmp_path: Path):
    other = timm.create_model("vit_small_patch16_224", pretrained=False)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="do not load"):
        build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights=str(path)), 64)


def test_hub_without_network_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub"):
        build_lpm(LPMConfig(name="vit_tiny_patch16_224", weights="hub"), 64)


def test_unknown_model_name():
    with pytest.raises(UserError, match="no model"):
        build_lpm(LPMConfig(name="vit_does_not_exist", weights="none"), 64)

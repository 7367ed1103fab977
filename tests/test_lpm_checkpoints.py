"""LPM weights files in the formats people have load exactly, or are refused: a RETFound-style MAE
checkpoint, Meta's DINOv2 format, prefixed keys, a file missing encoder weights, a pickle that would
run code. Each file is built here from a small model and loaded through build_lpm, as extract does."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fpt.cache.errors import UserError
from fpt.stages.core.settings import LPMConfig
from fpt.stages.lpm.build import build_lpm

REPO = Path(__file__).resolve().parents[1]
TINY, SIZE = "vit_tiny_patch16_224", 64


def encoder_state(name: str = TINY, size: int = SIZE) -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
    with torch.no_grad():
        for parameter in model.parameters():  # away from any initial value, zeros included
            parameter.add_(torch.randn_like(parameter))
    return {k: v.clone() for k, v in model.state_dict().items()}


def mae_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """As RETFound ships it: the MAE encoder and decoder under 'model', with training state beside."""
    decoder = {"mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192),
               "decoder_pos_embed": torch.randn(1, 17, 128), "decoder_blocks.0.norm1.weight": torch.ones(128),
               "decoder_norm.weight": torch.ones(128), "decoder_pred.weight": torch.randn(768, 128)}
    return {"model": {**encoder, **decoder}, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
            "epoch": 799, "args": argparse.Namespace(model="vit_large_patch16", lr=1.5e-4, norm_pix_loss=True)}


def assert_loaded(model: torch.nn.Module, encoder: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == encoder.keys()
    for key, tensor in encoder.items():
        torch.testing.assert_close(loaded[key], tensor, msg=key)


def test_a_retfound_style_mae_checkpoint_loads_the_encoder_and_lists_the_decoder(tmp_path: Path) -> None:
    encoder = encoder_state()
    path = tmp_path / "RETFound_mae.pth"
    torch.save(mae_checkpoint(encoder), path)
    notes: list[str] = []
    model, identity = build_lpm(LPMConfig(name=TINY, weights=str(path)), SIZE, notes)
    assert_loaded(model, encoder)
    assert identity.weights_source == "file"
    assert any("under 'model'" in note for note in notes)
    assert any("6 keys of RETFound_mae.pth are not the encoder's" in note and "decoder_blocks" in note
               and "mask_token" in note for note in notes)


@pytest.mark.parametrize("wrap", ["encoder.", "module.backbone."])
def test_prefixed_keys_are_found(tmp_path: Path, wrap: str) -> None:
    encoder = encoder_state()
    path = tmp_path / "prefixed.pth"
    torch.save({f"{wrap}{k}": v for k, v in encoder.items()}, path)
    notes: list[str] = []
    model, _ = build_lpm(LPMConfig(name=TINY, weights=str(path)), SIZE, notes)
    assert_loaded(model, encoder)
    assert any(f"with prefix {'+'.join(p + '.' for p in wrap.rstrip('.').split('.'))}" in note for note in notes)


def test_metas_dinov2_format_with_registers_loads(tmp_path: Path) -> None:
    name, size = "vit_small_patch14_reg4_dinov2", 56
    encoder = encoder_state(name, size)
    first_position = torch.randn(1, 1, encoder["cls_token"].shape[-1])
    meta = {k: v for k, v in encoder.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    meta.update(register_tokens=encoder["reg_token"], cls_token=encoder["cls_token"] - first_position,
                pos_embed=torch.cat([first_position, encoder["pos_embed"]], dim=1), mask_token=torch.zeros(1, 384))
    path = tmp_path / "dinov2_vits14_reg4_teacher.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in meta.items()}, "iteration": 1000}, path)
    model, _ = build_lpm(LPMConfig(name=name, weights=str(path)), size)
    assert_loaded(model, encoder)


def test_a_file_missing_encoder_weights_is_refused_by_name(tmp_path: Path) -> None:
    encoder = encoder_state()
    del encoder["blocks.3.attn.qkv.weight"]
    path = tmp_path / "partial.pth"
    torch.save(encoder, path)
    with pytest.raises(UserError) as refused:
        build_lpm(LPMConfig(name=TINY, weights=str(path)), SIZE)
    message = refused.value.paragraph()
    assert "lacks 1 of the" in message and "blocks.3.attn.qkv.weight" in message and "random values" in message


class Payload:
    """Unpickling this would run code chosen by the file's author."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": encoder_state(), "payload": Payload()}, path)
    with pytest.raises(UserError) as refused:
        build_lpm(LPMConfig(name=TINY, weights=str(path)), SIZE)
    assert "could run code from the file" in refused.value.paragraph()


def test_fpt_extract_reports_what_it_left_out_of_a_retfound_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "RETFound_mae.pth"
    torch.save(mae_checkpoint(encoder_state()), path)
    sets = [f"dataset.data_root={tmp_path / 'data'}", f"cache.root={tmp_path / 'cache'}", "demo.num_train=6",
            "demo.num_val=3", "demo.num_test=3", "demo.image_size=128", f"extract.input_size={SIZE}",
            f"lpm.name={TINY}", f"lpm.weights={path}", "extract.num_workers=0", "cache.shard_size=4",
            "cache.chunk_size=2"]
    done = subprocess.run([sys.executable, "-m", "fpt.pipeline.cli", "extract", "--dataset", "demo", "--quiet",
                           "--config", str(REPO / "pipeline.yaml"), *[x for s in sets for x in ("--set", s)]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr
    assert "keys of RETFound_mae.pth are not the encoder's and were left out" in done.stdout

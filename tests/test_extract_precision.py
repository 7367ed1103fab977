"""extract.precision: bf16/fp16 autocast of the LPM, its place in the cache key, and the refusal of
keys or values that overflow 16 bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_token_selection import tiny_vit
from tiny import tiny_config

from fpt.cache.errors import UserError
from fpt.cache.reader import read_metadata
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.extract.run import run_extract
from fpt.stages.lpm.token_selection import TokenSelectingLPM
from fpt.stages.train.cache_choice import find_cache

LAYERS = [2, 3, 4, 5]


def _selections(precision: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return TokenSelectingLPM(tiny_vit(), LAYERS, 0.25, "global", precision=precision)(images)


def test_bf16_runs_the_lpm_in_bf16_and_keeps_nearly_every_fp32_token() -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    keys32, values32, indices32 = _selections("fp32", images)
    keys16, values16, indices16 = _selections("bf16", images)
    # the attention's inputs were bf16: autocast was active inside the blocks
    assert keys16.dtype == values16.dtype == torch.bfloat16 and keys32.dtype == torch.float32
    count = indices32.shape[-1]
    same = sum(len(set(a.tolist()) & set(b.tolist()))
               for a, b in zip(indices32.reshape(-1, count), indices16.reshape(-1, count)))
    assert same / indices32.numel() > 0.9
    # where both kept a token, its key is the fp32 key up to bf16's rounding (unit roundoff 2^-8 = 0.4 %),
    # grown through the blocks before it
    kept_both = indices32 == indices16
    relative = (keys16.float() - keys32).norm(dim=-1) / keys32.norm(dim=-1)
    assert kept_both.float().mean() > 0.5
    assert relative[kept_both].median() < 0.03 and relative[kept_both].max() < 0.1


def test_keys_beyond_fp16s_range_are_refused_with_the_way_out() -> None:
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[3].attn.qkv.weight.mul_(20000.0)  # keys around 1e5, past fp16's largest value 65504
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        keys, _, _ = TokenSelectingLPM(model, LAYERS, 0.25, "global", precision="fp32")(images)
        assert keys[:, 1].abs().max() > 65504  # block 3: finite in fp32
        with pytest.raises(UserError) as refused:
            TokenSelectingLPM(model, LAYERS, 0.25, "global", precision="fp16")(images)
    assert "block(s) 3" in str(refused.value) and "extract.precision=bf16" in str(refused.value)


def test_precision_is_in_the_key_and_fp32_keys_are_those_without_the_setting(tmp_path: Path) -> None:
    fp32 = run_extract(tiny_config(tmp_path), show_progress=False)
    bf16 = run_extract(tiny_config(tmp_path, "extract.precision=bf16"), show_progress=False)
    assert bf16.path != fp32.path and not bf16.reused
    assert read_metadata(bf16.path).extraction.precision == "bf16"
    assert read_metadata(fp32.path).extraction.precision == "fp32"
    # an fp32 store's metadata does not name a precision, so the key it hashes is a store's without it
    written = json.loads((fp32.path / "zarr.json").read_text())["attributes"]["fpt"]["extraction"]
    assert "precision" not in written
    assert json.loads((bf16.path / "zarr.json").read_text())["attributes"]["fpt"]["extraction"]["precision"] == "bf16"

    # training picks the store of its own precision, and refuses the other one named explicitly
    config = tiny_config(tmp_path, "extract.precision=bf16")
    assert find_cache(config, dataset_source(config)) == bf16.path
    with pytest.raises(UserError) as refused:
        find_cache(tiny_config(tmp_path), dataset_source(config), explicit=bf16.path)
    assert "extract.precision: cache has bf16, requested fp32" in str(refused.value)

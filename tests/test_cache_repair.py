"""A damaged store is never trained on, and running `fpt extract` again extracts only its damaged shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from cache_testing import stored_arrays
from tiny import tiny_config

from fpt.cache.errors import UserError
from fpt.cache.integrity import shard_file, verify_store
from fpt.cache.reader import read_metadata
from fpt.stages.extract.run import run_extract
from fpt.stages.train.train_side import train_side


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the compressed payload, away from the headers
    path.write_bytes(bytes(data))


def test_training_refuses_a_damaged_store_and_extract_repairs_only_the_damaged_shard(tmp_path: Path) -> None:
    built = run_extract(tiny_config(tmp_path), show_progress=False)
    original = stored_arrays(built.path)
    _flip_byte(shard_file(built.path, zarr.open_group(built.path, mode="r")["keys"], 1))

    with pytest.raises(UserError) as refused:
        train_side(tiny_config(tmp_path), show_progress=False)
    message = refused.value.paragraph()
    assert f"The cache {built.path} is damaged: shard 1 (keys)" in message
    assert f"dataset demo from {(tmp_path / 'data' / 'demo').resolve()}" in message
    assert not list((tmp_path / "runs").rglob("metrics.jsonl"))  # no epoch was trained

    repaired = run_extract(tiny_config(tmp_path), show_progress=False)
    assert repaired.path == built.path and not repaired.reused
    assert repaired.computed_samples == 4  # the LPM ran on the damaged shard's 4 samples only
    assert any("1 damaged shard(s)" in note and "(1)" in note for note in repaired.notes)
    assert verify_store(built.path, read_metadata(built.path)).ok and read_metadata(built.path).complete
    for name, array in stored_arrays(built.path).items():
        assert np.array_equal(array, original[name]), name

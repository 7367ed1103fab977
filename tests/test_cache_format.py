"""The stored format: encodings of each dtype, format versions, reading with zarr alone."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from fpt.cache.encoding import decode, encode
from fpt.cache.errors import UserError
from fpt.cache.metadata import FORMAT_VERSION, StorageSettings
from fpt.cache.reader import CacheReader, read_metadata
from fpt.cache.synthetic import sample_labels, synthetic_features, synthetic_metadata, write_synthetic_cache


def _features(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Tokens of very different magnitudes, as in real attention keys; one all-zero token.
    x = rng.standard_normal((2, 3, 5, 64)).astype(np.float32) * rng.uniform(0.01, 50, (2, 3, 5, 1)).astype(np.float32)
    x[0, 0, 0] = 0
    return x


def test_bfloat16_matches_torch_rounding() -> None:
    x = _features()
    stored, scales = encode(x, "bfloat16")
    assert stored.dtype == np.uint16 and scales is None
    reference = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(decode(stored, None, "bfloat16"), reference)


def test_int8_error_is_at_most_half_a_step_per_token() -> None:
    x = _features(1)
    stored, scales = encode(x, "int8")
    assert stored.dtype == np.int8 and scales is not None and scales.shape == x.shape[:-1]
    restored = decode(stored, scales, "int8")
    step = scales.astype(np.float32)[..., None]
    assert np.all(np.abs(restored - x) <= step / 2 + 1e-6 * np.abs(x))
    # The largest magnitude of every non-zero token uses the full int8 range.
    peak = np.abs(stored).max(axis=-1)
    assert np.all(peak[np.abs(x).max(axis=-1) > 0] == 127)
    np.testing.assert_array_equal(restored[0, 0, 0], 0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8", "int4"])
def test_reader_returns_floats_close_to_the_written_features(tmp_path: Path, dtype: str) -> None:
    storage = StorageSettings(dtype=dtype, codec="zstd", codec_level=3, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 6, "val": 3, "test": 3}, selected=7, head_dim=16, side_store_size=16,
                                  storage=storage)
    path = write_synthetic_cache(tmp_path, metadata)
    reader = CacheReader(path)
    got = reader.read(0, metadata.num_samples)
    labels = sample_labels(metadata)
    expected = np.stack([synthetic_features(i, int(labels[i]), metadata.feature_shape)[0] for i in range(12)])
    assert got["keys"].dtype.kind == "f"
    tolerance = {"float32": 0, "float16": 2e-3, "bfloat16": 1.6e-2, "int8": 2e-2, "int4": 1 / 14}[dtype]
    peak = np.abs(expected).max()
    assert np.abs(got["keys"].astype(np.float32) - expected).max() <= tolerance * peak
    np.testing.assert_array_equal(got["labels"], labels)


def test_documented_zarr_only_reading(tmp_path: Path) -> None:
    """The recipe of docs/cache-format.md: plain zarr and the stored scales give the reader's floats."""
    storage = StorageSettings(dtype="int8", codec="blosc-zstd", codec_level=5, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 5, "val": 2, "test": 2}, selected=5, head_dim=8, side_store_size=16,
                                  storage=storage)
    path = write_synthetic_cache(tmp_path, metadata)
    group = zarr.open_group(path, mode="r")
    info = group.attrs["fpt"]
    assert info["format_version"] == FORMAT_VERSION and info["complete"]
    keys = group["keys"][:].astype(np.float32) * group["keys_scale"][:].astype(np.float32)[..., None]
    np.testing.assert_array_equal(keys, CacheReader(path).read(0, 9)["keys"])
    # the labels and splits: the label table beside the features, each sample's row found by its content
    table = json.loads((path / "tables" / f"{info['latest_table']}.json").read_text())
    row_of = {}
    for row, content in enumerate(group["contents"][:].tolist()):
        row_of.setdefault(content, row)
    val = [sample for sample in table["samples"] if sample["split"] == "val"]
    rows = [row_of[sample["content"]] for sample in val]
    assert len(val) == 2 and rows == [5, 6]
    np.testing.assert_array_equal(group["keys"][rows[0]].astype(np.float32) * group["keys_scale"][rows[0]][..., None],
                                  CacheReader(path).read(5, 6)["keys"][0])


@pytest.mark.parametrize("version, advice", [(1, "Re-run `fpt extract`"), (FORMAT_VERSION + 1, "Upgrade fpt")])
def test_other_format_versions_get_a_clear_message(tmp_path: Path, version: int, advice: str) -> None:
    metadata = synthetic_metadata({"train": 2, "val": 1, "test": 1}, selected=3, head_dim=8, side_store_size=16)
    path = write_synthetic_cache(tmp_path, metadata)
    group = zarr.open_group(path, mode="r+")
    group.attrs["fpt"] = {**group.attrs["fpt"], "format_version": version}
    with pytest.raises(UserError) as caught:
        read_metadata(path)
    message = caught.value.paragraph()
    assert f"format version {version}" in message and advice in message

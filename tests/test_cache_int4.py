"""`cache.dtype: int4`: the encoding against a hand-written reference, its error bound and edge cases,
reading it with zarr alone, and the whole pipeline on it (extract, train, transcode, predict)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tiny import TRAINING, cli_args, tiny_assignments, tiny_config
from typer.testing import CliRunner

from fpt.cache.encoding import decode, decode_rows, encode
from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.pipeline.cli import app
from fpt.stages.extract.frozen_lpm import StageOne, as_stored, frozen_selector, image_features
from fpt.stages.extract.run import run_extract
from fpt.stages.train.train_side import train_side

GROUP = 32


def reference_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """docs/cache-format.md's int4, one group and one byte at a time in plain Python."""
    channels = x.shape[-1]
    flat = x.reshape(-1, channels).astype(np.float32)
    groups = -(-channels // GROUP)
    packed = np.zeros((len(flat), -(-channels // 2)), np.uint8)
    scales = np.zeros((len(flat), groups), np.float16)
    for row, token in enumerate(flat):
        nibbles = [8] * (2 * packed.shape[1])
        for g in range(groups):
            part = token[g * GROUP : (g + 1) * GROUP]
            scale = np.float16(max(float(np.abs(part).max()) / 7, 2.0**-24))
            scales[row, g] = scale
            for offset, value in enumerate(part):
                q = min(7, max(-7, round(float(value) / float(scale))))  # Python rounds half to even
                nibbles[g * GROUP + offset] = q + 8
        for i in range(packed.shape[1]):
            packed[row, i] = nibbles[2 * i] | (nibbles[2 * i + 1] << 4)
    return packed.reshape(*x.shape[:-1], -1), scales.reshape(*x.shape[:-1], groups)


def reference_decode(packed: np.ndarray, scales: np.ndarray, channels: int) -> np.ndarray:
    out = np.zeros((*packed.shape[:-1], channels), np.float32)
    for index in np.ndindex(packed.shape[:-1]):
        for c in range(channels):
            byte = int(packed[index][c // 2])
            nibble = byte & 0x0F if c % 2 == 0 else byte >> 4
            out[index][c] = np.float32(nibble - 8) * np.float32(scales[index][c // GROUP])
    return out


def _features(channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # tokens of very different magnitudes, and one outlier channel, as in real attention keys
    x = rng.standard_normal((3, 2, 4, channels)).astype(np.float32) * rng.uniform(0.01, 50, (3, 2, 4, 1)).astype(np.float32)
    x[1, 0, 2, channels // 3] *= 40
    return x


@pytest.mark.parametrize("channels", [64, 40, 63, 1])
def test_int4_matches_the_hand_written_reference(channels: int) -> None:
    """64: whole groups; 40: a shorter last group; 63 and 1: an odd Dh, padded with one zero nibble."""
    x = _features(channels)
    packed, scales = encode(x, "int4")
    want_packed, want_scales = reference_encode(x)
    assert packed.dtype == np.uint8 and scales.dtype == np.float16
    np.testing.assert_array_equal(packed, want_packed)
    np.testing.assert_array_equal(scales, want_scales)
    restored = decode(packed, scales, "int4", channels)
    np.testing.assert_array_equal(restored, reference_decode(packed, scales, channels))
    rows = np.array([2, 0, 2])
    np.testing.assert_array_equal(decode_rows(packed, scales, rows, "int4", channels=channels).numpy(), restored[rows])


def test_int4_error_is_at_most_half_a_step_per_group() -> None:
    x = _features(64, seed=1)
    packed, scales = encode(x, "int4")
    restored = decode(packed, scales, "int4", 64)
    step = np.repeat(scales.astype(np.float32), GROUP, axis=-1)
    assert np.all(np.abs(restored - x) <= step / 2 + 1e-6 * np.abs(x))
    # the largest magnitude of every group is stored as +-7: the whole range is used
    nibbles = np.stack([packed & 15, packed >> 4], -1).reshape(x.shape).astype(int) - 8
    assert np.all(np.abs(nibbles).reshape(*x.shape[:-1], -1, GROUP).max(-1) == 7)
    assert nibbles.min() >= -7


def test_int4_zero_and_constant_groups() -> None:
    x = np.zeros((2, 64), np.float32)
    x[1, :32] = -3.5  # one all-equal group, then zeros
    packed, scales = encode(x, "int4")
    restored = decode(packed, scales, "int4", 64)
    assert np.all(packed[0] == 0x88) and np.all(scales[0] > 0)  # zeros: nibble 8, a tiny non-zero scale
    np.testing.assert_array_equal(restored[0], 0)
    np.testing.assert_array_equal(restored[1, :32], np.float32(-7) * np.float32(np.float16(3.5 / 7)))
    assert np.abs(restored[1, :32] + 3.5).max() <= 3.5 / 7 * 1e-3
    np.testing.assert_array_equal(restored[1, 32:], 0)


def test_decode_rows_refuses_int4_without_the_head_dimension() -> None:
    packed, scales = encode(_features(64), "int4")
    with pytest.raises(ValueError, match="head dimension"):
        decode_rows(packed, scales, np.array([0]), "int4")


def test_documented_zarr_only_reading_of_int4(tmp_path: Path) -> None:
    """docs/cache-format.md's nibble order and scales, with zarr alone, give the reader's floats."""
    storage = StorageSettings(dtype="int4", codec="zstd", codec_level=3, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 5, "val": 2, "test": 2}, selected=5, head_dim=40, side_store_size=16,
                                  storage=storage)
    path = write_synthetic_cache(tmp_path, metadata)
    group = zarr.open_group(path, mode="r")
    head_dim = group.attrs["fpt"]["lpm"]["head_dim"]
    stored = group["keys"][:]
    assert stored.shape == (9, *metadata.feature_shape[:-1], 20) and stored.dtype == np.uint8
    assert group["keys_scale"].shape == (9, *metadata.feature_shape[:-1], 2)
    nibbles = np.stack([stored & 0x0F, stored >> 4], axis=-1).reshape(*stored.shape[:-1], -1)[..., :head_dim]
    scale = np.repeat(group["keys_scale"][:].astype(np.float32), 32, axis=-1)[..., :head_dim]
    keys = (nibbles.astype(np.float32) - 8) * scale
    np.testing.assert_array_equal(keys, CacheReader(path).read(0, 9)["keys"])
    assert "keys_scale" in zarr.open_array(path / "shard_sha256").attrs["arrays"]


def test_as_stored_rounds_like_the_store() -> None:
    x = _features(64, seed=2)
    packed, scales = encode(x, "int4")
    np.testing.assert_array_equal(as_stored(torch.from_numpy(x), "int4").numpy(), decode(packed, scales, "int4", 64))


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("int4")
    config = tiny_config(root, *TRAINING, "cache.dtype=int4")
    extracted = run_extract(config, show_progress=False)
    result = train_side(config, show_progress=False)
    return {"root": root, "config": config, "cache": extracted.path, "run": result.run_dir, "result": result}


def test_extract_and_train_from_an_int4_store(int4_run: dict) -> None:
    reader = CacheReader(int4_run["cache"])
    assert reader.metadata.storage.dtype == "int4"
    assert reader.array("keys").dtype == np.uint8 and reader.array("keys").shape[-1] == reader.metadata.lpm.head_dim // 2
    assert np.isfinite(int4_run["result"].test_best.auc)
    verify = CliRunner().invoke(app, ["cache", "verify", str(int4_run["cache"])])
    assert verify.exit_code == 0, verify.output
    listing = CliRunner().invoke(app, ["cache", "list", *cli_args([f"cache.root={int4_run['root'] / 'cache'}"])])
    assert listing.exit_code == 0 and "int4" in listing.output, listing.output


def test_transcode_float16_to_int4_equals_int4_of_the_float16_numbers(tmp_path: Path) -> None:
    source = run_extract(tiny_config(tmp_path), show_progress=False).path
    result = CliRunner().invoke(app, ["cache", "transcode", str(source),
                                      *cli_args(tiny_assignments(tmp_path, "cache.dtype=int4"))])
    assert result.exit_code == 0, result.output
    float16 = CacheReader(source).read(0, 24)
    (path,) = [p for p in (tmp_path / "cache").glob("*.zarr") if p != source]
    reader = CacheReader(path)
    assert reader.metadata.storage.dtype == "int4" and reader.metadata.complete
    got = reader.read(0, 24)
    for name in ("keys", "values"):
        packed, scales = encode(float16[name].astype(np.float32), "int4")
        np.testing.assert_array_equal(got[name], decode(packed, scales, "int4", reader.metadata.lpm.head_dim))


def test_features_of_new_images_are_the_cached_int4_features(int4_run: dict) -> None:
    """The frozen LPM on the test images, rounded by as_stored, gives what train-side read from the cache."""
    config = int4_run["config"]
    reader = CacheReader(int4_run["cache"])
    start, stop = reader.split_range("test")
    ids = reader.sample_ids()[start:stop]
    cached = reader.read(start, stop)
    stage_one = StageOne.of_cache(reader.metadata)
    data = int4_run["root"] / "data" / "demo"
    files = [data / sample_id for sample_id in ids]
    features = list(image_features(files, config, stage_one, frozen_selector(config, stage_one), torch.device("cpu")))
    keys = torch.cat([f.keys for f in features]).numpy()
    values = torch.cat([f.values for f in features]).numpy()
    # at most a rounding step differs where the LPM's float32 output lies on a rounding boundary
    for got, want in ((keys, cached["keys"]), (values, cached["values"])):
        assert (got != want).mean() < 1e-3
        np.testing.assert_allclose(got, want, atol=float(np.abs(want).max()) / 7)


def test_predict_equals_train_side_for_int4(int4_run: dict) -> None:
    output = int4_run["root"] / "predict.csv"
    data = int4_run["root"] / "data" / "demo"
    result = CliRunner().invoke(app, ["predict", str(data / "test"), "--run", str(int4_run["run"]),
                                      "--output", str(output), "--quiet"])
    assert result.exit_code == 0, result.output

    def probabilities(path: Path, key: str) -> dict[str, np.ndarray]:
        with open(path, newline="") as handle:
            return {row[key]: np.array([float(v) for k, v in row.items() if k.startswith("p_")])
                    for row in csv.DictReader(handle)}

    predicted = probabilities(output, "file")
    reference = probabilities(int4_run["run"] / "predictions_test_best.csv", "sample_id")
    assert len(predicted) == len(reference) == 6
    for file, p in predicted.items():
        np.testing.assert_allclose(p, reference[str(Path(file).relative_to(data))], atol=1e-5)

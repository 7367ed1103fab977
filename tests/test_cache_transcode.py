"""Re-encoding a cache without the LPM: `fpt extract` does it by itself when a store of the same
features exists in another codec or shard layout, and `fpt cache transcode` does it on request.
Each result is compared with a store extracted directly with the LPM in the same settings."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cache_testing import stored_arrays
from tiny import cli_args, demo_source, tiny_assignments, tiny_config
from typer.testing import CliRunner

import fpt.stages.extract.run as extract_module
from fpt.cache.errors import UserError
from fpt.cache.reader import read_metadata
from fpt.cache.writer import ShardWriter
from fpt.pipeline.cli import app
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_choice import find_cache

OTHER_STORAGE = ("cache.codec=blosc-lz4", "cache.shard_size=8", "cache.chunk_size=4")


def _no_lpm(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the LPM ran")

    monkeypatch.setattr(extract_module, "_extract_into", refuse)


def _assert_same_store(got: Path, want: Path) -> None:
    assert got.name == want.name
    a, b = stored_arrays(got), stored_arrays(want)
    assert a.keys() == b.keys()
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert read_metadata(got).storage == read_metadata(want).storage


def _compressor(path: Path, array: str) -> dict:
    """The compressor of an array's chunks: the codec before the crc32c that ends each chunk."""
    chunk_codecs = json.loads((path / array / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert chunk_codecs[-1]["name"] == "crc32c"
    return chunk_codecs[-2]


def test_extract_in_another_codec_reencodes_the_same_features_without_the_lpm(tmp_path: Path, monkeypatch):
    zstd = run_extract(tiny_config(tmp_path, "cache.codec=zstd"), show_progress=False)
    direct = run_extract(tiny_config(tmp_path / "direct", *OTHER_STORAGE), show_progress=False)

    _no_lpm(monkeypatch)
    result = run_extract(tiny_config(tmp_path, *OTHER_STORAGE), show_progress=False)
    assert result.transcoded_from == zstd.path and result.computed_samples == 0 and not result.reused
    assert result.path != zstd.path and zstd.path.exists()  # the source is kept
    _assert_same_store(result.path, direct.path)
    assert _compressor(result.path, "keys")["name"] == "blosc"
    assert _compressor(result.path, "keys")["configuration"]["cname"] == "lz4"
    assert _compressor(zstd.path, "keys")["name"] == "zstd"

    again = run_extract(tiny_config(tmp_path, *OTHER_STORAGE), show_progress=False)
    assert again.reused and again.path == result.path
    # both stores hold the same features and carry the same creation time; train-side takes the
    # one in the configured storage settings
    assert read_metadata(result.path).created_at == read_metadata(zstd.path).created_at
    assert find_cache(tiny_config(tmp_path, *OTHER_STORAGE), demo_source(tmp_path)) == result.path
    assert find_cache(tiny_config(tmp_path, "cache.codec=zstd"), demo_source(tmp_path)) == zstd.path


def test_an_interrupted_reencoding_continues_from_its_finished_shards(tmp_path: Path, monkeypatch):
    run_extract(tiny_config(tmp_path, "cache.codec=zstd"), show_progress=False)
    direct = run_extract(tiny_config(tmp_path / "direct", *OTHER_STORAGE), show_progress=False)
    _no_lpm(monkeypatch)
    written: list[int] = []
    original = ShardWriter.write_shard

    def fail_on_the_second_shard(self, shard, *arrays):
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(shard)
        original(self, shard, *arrays)

    monkeypatch.setattr(ShardWriter, "write_shard", fail_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_extract(tiny_config(tmp_path, *OTHER_STORAGE), show_progress=False)
    partial = tmp_path / "cache" / direct.path.name
    assert not read_metadata(partial).complete and written == [0]

    monkeypatch.setattr(ShardWriter, "write_shard", lambda self, shard, *arrays: (written.append(shard),
                                                                                    original(self, shard, *arrays)))
    result = run_extract(tiny_config(tmp_path, *OTHER_STORAGE), show_progress=False)
    assert written == [0, 1, 2]  # 24 samples in shards of 8: shard 0 was not written again
    _assert_same_store(result.path, direct.path)


def test_another_dtype_is_extracted_again_not_reencoded(tmp_path: Path):
    """float16 numbers made from a float32 store could differ from those the LPM gives."""
    run_extract(tiny_config(tmp_path, "cache.dtype=float32"), show_progress=False)
    result = run_extract(tiny_config(tmp_path, "cache.dtype=float16"), show_progress=False)
    assert result.transcoded_from is None and result.computed_samples == 24


def test_cache_transcode_command(tmp_path: Path, monkeypatch):
    zstd = run_extract(tiny_config(tmp_path, "cache.codec=zstd"), show_progress=False)
    direct = run_extract(tiny_config(tmp_path / "direct", *OTHER_STORAGE), show_progress=False)
    _no_lpm(monkeypatch)
    target = tmp_path / "converted"
    assignments = tiny_assignments(tmp_path, *OTHER_STORAGE, f"cache.root={target}")
    result = CliRunner().invoke(app, ["cache", "transcode", str(zstd.path), "--quiet", *cli_args(assignments)],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Cache written" in result.output and "blosc-lz4" in result.output and "is kept" in result.output
    _assert_same_store(target / direct.path.name, direct.path)
    # train-side finds it by its settings, as if it had been extracted there
    found = run_extract(tiny_config(tmp_path, *OTHER_STORAGE, f"cache.root={target}"), show_progress=False)
    assert found.reused and found.path == target / direct.path.name


def test_cache_transcode_refuses_an_incomplete_store(tmp_path: Path):
    built = run_extract(tiny_config(tmp_path), show_progress=False)
    group_json = built.path / "zarr.json"
    document = json.loads(group_json.read_text())
    document["attributes"]["fpt"]["complete"] = False
    group_json.write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["cache", "transcode", str(built.path), *cli_args(tiny_assignments(tmp_path))])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError) and "incomplete" in result.exception.paragraph()


def test_a_full_disk_during_cache_transcode_keeps_the_finished_shards_and_says_what_to_run(tmp_path: Path, monkeypatch):
    zstd = run_extract(tiny_config(tmp_path, "cache.codec=zstd"), show_progress=False)
    direct = run_extract(tiny_config(tmp_path / "direct", *OTHER_STORAGE), show_progress=False)
    write = ShardWriter._write

    def disk_fills_at_shard_1(self, shard, *args):
        if shard == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, shard, *args)

    monkeypatch.setattr(ShardWriter, "_write", disk_fills_at_shard_1)
    command = ["cache", "transcode", str(zstd.path), "--quiet", *cli_args(tiny_assignments(tmp_path, *OTHER_STORAGE))]
    failed = CliRunner().invoke(app, command)
    assert isinstance(failed.exception, UserError)
    message = failed.exception.paragraph()
    assert "is full" in message and "the 1 of 3 shards" in message
    assert "run the same `fpt cache transcode` command again" in message
    partial = tmp_path / "cache" / direct.path.name
    assert not read_metadata(partial).complete

    monkeypatch.setattr(ShardWriter, "_write", write)
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.output
    _assert_same_store(partial, direct.path)

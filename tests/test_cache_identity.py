"""Cache identity: same inputs reuse a store, changed settings or images make a new one, the
train side refuses contradicting caches, and several caches live side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import cli_args, demo_source, tiny_assignments, tiny_config
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.pipeline.cli import app
from fpt.stages.datasets.fingerprint import dataset_fingerprint
from fpt.stages.datasets.registry import dataset_source, resolve_dataset
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_choice import find_cache


def _shard_mtimes(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_mtime_ns for f in (path / "keys").rglob("*") if f.is_file()}


def test_same_inputs_reuse_the_cache_without_running_the_lpm(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    first = run_extract(config, show_progress=False)
    assert not first.reused and first.computed_samples == 24
    before = _shard_mtimes(first.path)
    second = run_extract(tiny_config(tmp_path), show_progress=False)
    assert second.reused and second.computed_samples == 0 and second.path == first.path
    assert _shard_mtimes(second.path) == before


def test_changed_setting_builds_a_new_cache_beside_the_old_and_a_changed_image_goes_into_it(tmp_path: Path) -> None:
    base = run_extract(tiny_config(tmp_path), show_progress=False)
    other_ratio = run_extract(tiny_config(tmp_path, "extract.token_ratio=0.5"), show_progress=False)
    assert other_ratio.path != base.path and not other_ratio.reused

    image = next((tmp_path / "data" / "demo" / "train").rglob("*.png"))
    pixels = np.asarray(Image.open(image).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    changed_image = run_extract(tiny_config(tmp_path), show_progress=False)
    assert changed_image.path == base.path and changed_image.computed_samples == 1  # only the changed file's content
    assert changed_image.label_table != base.label_table and changed_image.metadata.num_rows == 25

    stores = sorted(p.name for p in (tmp_path / "cache").glob("*.zarr"))
    assert stores == sorted(p.name for p in (base.path, other_ratio.path))

    result = CliRunner().invoke(app, ["cache", "list", *cli_args(tiny_assignments(tmp_path))], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if ".zarr" in line and line.startswith("│")]
    assert len(rows) == 2
    sources = [line for line in result.output.splitlines() if ".zarr: images from " in line]
    assert sorted(sources) == sorted(f"{name}: images from {demo_source(tmp_path)}" for name in stores)
    ratio_column = {name.split(".zarr")[0]: line for line in rows for name in stores if name.split(".zarr")[0] in line}
    assert "0.5" in ratio_column[other_ratio.path.stem] and "0.5" not in ratio_column[base.path.stem]
    for line, path in ((ratio_column[p.stem], p) for p in (base.path, other_ratio.path)):
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
        assert f"{size_mb:.1f} MB" in line and "complete" in line and "float16/blosc-lz4" in line


def test_fingerprint_hashes_content_not_paths(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    samples = resolve_dataset(config, show_progress=False).samples
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "data" / "demo", moved / "demo")
    moved_samples = resolve_dataset(tiny_config(tmp_path, f"dataset.data_root={moved}"), show_progress=False).samples
    assert [s.path for s in samples] != [s.path for s in moved_samples]
    assert dataset_fingerprint(samples) == dataset_fingerprint(moved_samples)


def test_train_side_refuses_a_cache_with_other_layers(tmp_path: Path) -> None:
    from fpt.stages.train.train_side import train_side

    built = run_extract(tiny_config(tmp_path), show_progress=False)
    other = tiny_config(tmp_path, "extract.layers=[8,9,10,11]")
    with pytest.raises(UserError) as explicit:
        train_side(other, built.path, show_progress=False)
    assert "extract.layers: cache has [6, 7, 8, 9, 10, 11], requested [8, 9, 10, 11]" in explicit.value.paragraph()
    with pytest.raises(UserError) as searched:
        find_cache(other, dataset_source(other))
    assert "fits this run" in searched.value.paragraph() and "extract.layers" in searched.value.paragraph()
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    assert find_cache(tiny_config(tmp_path), demo_source(tmp_path)) == built.path


def test_transcoded_store_is_the_store_extract_would_write(tmp_path: Path) -> None:
    from cache_testing import stored_arrays

    from fpt.cache.metadata import StorageSettings
    from fpt.cache.transcode import transcode

    reference = run_extract(tiny_config(tmp_path, "cache.dtype=float32"), show_progress=False)
    storage = StorageSettings(dtype="int8", codec="blosc-lz4", codec_level=3, shard_size=4, chunk_size=2)
    converted = transcode(reference.path, tmp_path / "converted", storage)
    direct = run_extract(tiny_config(tmp_path, "cache.dtype=int8", "cache.codec=blosc-lz4"), show_progress=False)
    assert converted.name == direct.path.name
    got, want = stored_arrays(converted), stored_arrays(direct.path)
    assert got.keys() == want.keys() and "keys_scale" in want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    again = run_extract(tiny_config(tmp_path, "cache.dtype=int8", "cache.codec=blosc-lz4",
                                    f"cache.root={tmp_path / 'converted'}"), show_progress=False)
    assert again.reused and again.path == converted

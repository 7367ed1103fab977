"""A run uses exactly the cache of the images it names: two folder projects under one dataset name
never mix, the cache records where its images came from, and every command takes --data-root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import TINY, cli_args
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.cache.reader import read_metadata
from fpt.pipeline.cli import app
from fpt.pipeline.config import load_config
from fpt.stages.core.settings import DemoConfig
from fpt.stages.datasets.demo import generate_demo
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_choice import find_cache, label_table_of
from fpt.stages.train.train_side import train_side


def _project_sets(root: Path, images: Path) -> list[str]:
    """A `folder` dataset at `images`, with every project sharing one cache root and runs folder."""
    return [*TINY, "dataset.name=folder", f"dataset.path={images}", f"cache.root={root / 'cache'}",
            f"train.runs_root={root / 'runs'}", "dataset.normalization=imagenet"]


def _config(root: Path, images: Path, *extra: str):
    return load_config(None, _project_sets(root, images) + list(extra))


def _two_projects(root: Path) -> tuple[Path, Path]:
    """Two class-per-folder projects that differ in one image's pixels."""
    first, second = root / "project_a", root / "project_b"
    generate_demo(first, DemoConfig(num_train=12, num_val=6, num_test=6, image_size=128), show_progress=False)
    shutil.copytree(first, second)
    image = sorted((second / "train").rglob("*.png"))[0]
    pixels = np.asarray(Image.open(image).convert("RGB")).copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(image)
    return first, second


def test_a_run_never_takes_another_projects_cache(tmp_path: Path) -> None:
    first, second = _two_projects(tmp_path)
    built = run_extract(_config(tmp_path, first), show_progress=False)
    assert built.metadata.sources == [str(first.resolve())]

    # the second project has not been extracted: the first project's store is not used for it
    with pytest.raises(UserError) as refused:
        find_cache(_config(tmp_path, second), second.resolve())
    message = refused.value.paragraph()
    assert f"images: cache extracted from {first.resolve()}, requested {second.resolve()}" in message
    assert f"fpt extract --dataset folder --data-root {second.resolve()}" in message
    # nor when it is named explicitly
    with pytest.raises(UserError) as explicit:
        train_side(_config(tmp_path, second), built.path, show_progress=False)
    assert "images: cache extracted from" in explicit.value.paragraph()
    assert not (tmp_path / "runs").exists()

    # extracted, the second project's images go into the same store (features are addressed by content and
    # settings), under its own label table
    other = run_extract(_config(tmp_path, second), show_progress=False)
    assert other.path == built.path and not other.reused and other.label_table != built.label_table
    assert find_cache(_config(tmp_path, first), first.resolve()) == built.path
    assert find_cache(_config(tmp_path, second), second.resolve()) == other.path
    assert label_table_of(built.path, first.resolve()) == built.label_table
    assert label_table_of(built.path, second.resolve()) == other.label_table


def test_the_same_images_elsewhere_share_the_store_and_are_listed(tmp_path: Path) -> None:
    first, _ = _two_projects(tmp_path)
    copy = tmp_path / "copy_of_a"
    shutil.copytree(first, copy)
    built = run_extract(_config(tmp_path, first), show_progress=False)
    again = run_extract(_config(tmp_path, copy), show_progress=False)
    assert again.reused and again.path == built.path and again.computed_samples == 0
    assert read_metadata(built.path).sources == [str(first.resolve()), str(copy.resolve())]
    assert find_cache(_config(tmp_path, copy), copy.resolve()) == built.path


def test_a_store_that_records_no_source_is_not_taken_unasked(tmp_path: Path) -> None:
    first, _ = _two_projects(tmp_path)
    built = run_extract(_config(tmp_path, first), show_progress=False)
    group_metadata = json.loads((built.path / "zarr.json").read_text())
    group_metadata["attributes"]["fpt"]["sources"] = []
    (built.path / "zarr.json").write_text(json.dumps(group_metadata))
    with pytest.raises(UserError) as refused:
        find_cache(_config(tmp_path, first), first.resolve())
    assert "records no source folder" in refused.value.paragraph()
    assert find_cache(_config(tmp_path, first), first.resolve(), built.path) == built.path  # asked for by path


def test_cli_train_side_takes_data_root_and_names_its_cache_and_source(tmp_path: Path) -> None:
    first, second = _two_projects(tmp_path)
    for project in (first, second):
        run_extract(_config(tmp_path, project), show_progress=False)
    runner = CliRunner()
    common = cli_args([item for item in _project_sets(tmp_path, first) if not item.startswith("dataset.path")])
    result = runner.invoke(app, ["train-side", "--dataset", "folder", "--data-root", str(second), "--quiet", *common],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    store = read_metadata(Path(record["cache"]))
    assert record["dataset_source"] == str(second.resolve()) and str(second.resolve()) in store.sources
    assert record["label_table"] == store.label_tables[str(second.resolve())]
    assert f"Training from the cache {record['cache']} (dataset folder from {second.resolve()})" in result.output

    listing = runner.invoke(app, ["cache", "list", "--set", f"cache.root={tmp_path / 'cache'}"], env={"COLUMNS": "300"})
    assert listing.exit_code == 0, listing.output
    assert str(first.resolve()) in listing.output and str(second.resolve()) in listing.output

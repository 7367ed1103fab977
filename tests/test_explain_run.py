"""`fpt explain` on one tiny demo run: from the cache, through the LPM, the report's gallery, and a run
whose cache predates token indices (format 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from cache_testing import as_legacy
from test_cli_errors import run_fpt
from tiny import TRAINING, cli_args, tiny_assignments, tiny_config, trained_tiny_run
from typer.testing import CliRunner

from fpt.cache.identity import store_key
from fpt.cache.integrity import shard_digests, verify_store
from fpt.cache.layout import store_name, write_metadata
from fpt.cache.reader import CacheReader, read_metadata
from fpt.pipeline.cli import app
from fpt.stages.datasets.images import normalized_tensor, open_rgb, resize_square
from fpt.stages.explain.explain_run import explain_cached
from fpt.stages.extract.run import run_extract
from fpt.stages.lpm.build import build_lpm
from fpt.stages.runs.explanation_record import ExplanationRecord

GRID = 4  # the tiny LPM input: 64 px in patches of 16


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_tiny_run(tmp_path_factory.mktemp("explain"))


def read_explanation(folder: Path) -> tuple[ExplanationRecord, dict[str, np.ndarray]]:
    record = ExplanationRecord.model_validate_json((folder / "explain.json").read_text())
    with np.load(folder / "maps.npz") as maps:
        return record, {name: maps[name] for name in maps.files}


def test_explain_the_test_split_from_the_cache(run: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["explain", "--run", str(run["run"]), "--split", "test", "--quiet"])
    assert result.exit_code == 0, result.output
    folder = run["run"] / "explain" / "test_best"
    record, maps = read_explanation(folder)
    reader = CacheReader(run["cache"])
    start, stop = reader.split_range("test")
    assert [entry.sample for entry in record.images] == reader.sample_ids()[start:stop]
    assert maps["attention"].shape == (6, GRID, GRID) and maps["attention_per_layer"].shape == (6, len(record.layers), GRID, GRID)
    # each layer's patch map and its prefix mass sum to 1; the image's map is their mean
    np.testing.assert_allclose(maps["attention_per_layer"].sum(axis=(2, 3)) + maps["prefix_mass"], 1, atol=1e-5)
    np.testing.assert_allclose(maps["attention"], maps["attention_per_layer"].mean(1), atol=1e-6)
    # the selection map counts the cache's own token indices
    indices = reader.read(start, stop, with_token_indices=True)["token_indices"]
    patches = indices - 1
    for sample in range(6):
        expected = np.zeros(GRID * GRID)
        kept = patches[sample][patches[sample] >= 0]
        np.add.at(expected, kept, 1)
        np.testing.assert_allclose(maps["selection"][sample].ravel(), expected / (indices.shape[1] * indices.shape[2]))
    # the probabilities are the run's own test predictions
    reference = np.loadtxt(run["run"] / "predictions_test_best.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
    np.testing.assert_allclose(maps["probabilities"], reference, atol=1e-5)
    for entry in record.images:
        assert entry.image is not None and Path(entry.image).is_file()  # drawn over the original
        with Image.open(folder / entry.picture) as picture:
            assert picture.format == "PNG" and picture.width >= 400
            assert len(np.unique(np.asarray(picture.convert("L")))) > 10


def test_new_images_through_the_lpm_give_the_cached_maps(run: dict[str, Path]) -> None:
    """The same test images, explained as new files through the frozen LPM, give the maps the cache gives:
    the stored token indices are those the LPM kept, in the stored order."""
    explain_cached(run["run"], "test", "best", show_progress=False)
    cached, cached_maps = read_explanation(run["run"] / "explain" / "test_best")
    result = CliRunner().invoke(app, ["explain", str(run["data"] / "test"), "--run", str(run["run"]), "--quiet",
                                      "--per-layer"])
    assert result.exit_code == 0, result.output
    folder = next((run["run"] / "explain").glob("images-*"))
    record, maps = read_explanation(folder)
    by_file = {str(Path(entry.sample).relative_to(run["data"])): row for row, entry in enumerate(record.images)}
    for row, entry in enumerate(cached.images):
        other = by_file[entry.sample]
        np.testing.assert_allclose(maps["attention_per_layer"][other], cached_maps["attention_per_layer"][row],
                                   atol=1e-4)
        np.testing.assert_array_equal(maps["selection"][other], cached_maps["selection"][row])
    assert all(entry.label is None for entry in record.images)
    assert maps["labels"].tolist() == [-1] * len(record.images)


def test_cached_token_indices_are_the_lpm_top_tokens(run: dict[str, Path]) -> None:
    """Against an independent computation: the importance recomputed from timm's own attention of a cached image
    (the fused path off, attention weights captured), its top-n per head are the cached indices."""
    config = tiny_config(run["root"], *TRAINING)
    reader = CacheReader(run["cache"])
    metadata = reader.metadata
    vit, _ = build_lpm(config.lpm, metadata.extraction.input_size)
    vit.eval()
    sample = reader.sample_ids()[0]
    from_cache = reader.read(0, 1, with_token_indices=True)["token_indices"][0]
    picture = resize_square(open_rgb(run["data"] / sample), metadata.extraction.input_size, metadata.extraction.resize)
    images = normalized_tensor(picture, metadata.normalization.mean, metadata.normalization.std)[None]
    captured = {}
    for layer in metadata.extraction.layers:
        vit.blocks[layer].attn.fused_attn = False
        vit.blocks[layer].attn.attn_drop.register_forward_hook(
            lambda module, inputs, output, layer=layer: captured.__setitem__(layer, output))
    with torch.no_grad():
        vit.forward_features(images)
    for position, layer in enumerate(metadata.extraction.layers):
        importance = captured[layer][0].mean(dim=1)  # (H, N): mean over queries
        top = torch.topk(importance, metadata.extraction.num_selected, dim=-1).indices.sort(-1).values
        np.testing.assert_array_equal(from_cache[position], top.numpy())


def test_finished_run_has_a_gallery_in_its_report(run: dict[str, Path]) -> None:
    record, _ = read_explanation(run["run"] / "explain" / "gallery")
    report = (run["run"] / "report.md").read_text()
    assert "## Where the model looked" in report
    assert record.images and {entry.label for entry in record.images} <= {0, 1, 2}
    for entry in record.images:
        assert f"(explain/gallery/{entry.picture})" in report
        assert (run["run"] / "explain" / "gallery" / entry.picture).is_file()
    predictions = np.loadtxt(run["run"] / "predictions_test_best.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    for label in {int(label) for label in predictions[:, 0]}:
        of_class = predictions[predictions[:, 0] == label]
        correct = int((of_class[:, 1] == label).sum())
        shown = [entry for entry in record.images if entry.label == label]
        assert sum(entry.predicted == label for entry in shown) == min(2, correct)
        assert sum(entry.predicted != label for entry in shown) == min(2, len(of_class) - correct)


def as_format_2(path: Path) -> Path:
    """A copy of the store as fpt wrote it before token indices: format 2, its key, no token_indices array."""
    return as_legacy(path, 2)


def test_a_format_2_cache_trains_predicts_and_explain_gives_the_command(tmp_path: Path) -> None:
    assignments = tiny_assignments(tmp_path, *TRAINING)
    current = run_extract(tiny_config(tmp_path, *TRAINING), show_progress=False).path
    old = as_format_2(current)
    shutil.rmtree(current)
    assert verify_store(old, read_metadata(old)).ok
    runner = CliRunner()
    trained = runner.invoke(app, ["train-side", "--dataset", "demo", "--quiet", *cli_args(assignments)])
    assert trained.exit_code == 0, trained.output
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["cache"] == str(old)
    assert not (run_dir / "explain" / "gallery").exists()
    assert "No gallery yet" in (run_dir / "report.md").read_text()
    predicted = runner.invoke(app, ["predict", str(tmp_path / "data" / "demo" / "test"), "--run", str(run_dir),
                                    "--output", str(tmp_path / "p.csv"), "--quiet"])
    assert predicted.exit_code == 0, predicted.output
    refused = run_fpt("explain", "--run", str(run_dir), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr + refused.stdout
    message = "".join(refused.stderr.split())  # the paragraph is wrapped to the terminal's width
    assert "formatversion2" in message and f"fptextract--config{run_dir / 'config.yaml'}" in message
    extracted = runner.invoke(app, ["extract", "--config", str(run_dir / "config.yaml"), "--quiet"])
    assert extracted.exit_code == 0, extracted.output
    explained = runner.invoke(app, ["explain", "--run", str(run_dir), "--gallery", "--quiet"])
    assert explained.exit_code == 0, explained.output
    assert (run_dir / "explain" / "gallery" / "explain.json").is_file()
    assert "## Where the model looked" in (run_dir / "report.md").read_text()

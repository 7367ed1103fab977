"""Validation before LPM work: dry-run report, decode policy, skipped images, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from datasets_helpers import class_tree, config_for, ddr_tree, write_image
from PIL import Image
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.cache.reader import read_metadata
from fpt.pipeline.cli import app
from fpt.stages.datasets.registry import resolve_dataset
from fpt.stages.datasets.validate import validate_dataset
from fpt.stages.extract.run import run_extract

TINY_LPM = (
    "lpm.name=vit_tiny_patch16_224", "lpm.weights=none", "extract.input_size=32", "extract.layers=[0,1]",
    "extract.device=cpu", "extract.batch_size=4", "side.input_size=16", "extract.side_store_size=16",
)


@pytest.fixture
def no_lpm(monkeypatch):
    """Any attempt to build a model with weights fails loudly: proves the code stopped before LPM work.
    Its architecture on torch's meta device (no weights, no compute), which settings are checked
    against before the image scan, is allowed."""
    real = timm.create_model

    def refuse(*args, **kwargs):
        if torch.get_default_device().type == "meta":
            return real(*args, **kwargs)
        raise AssertionError("the LPM was built")
    monkeypatch.setattr(timm, "create_model", refuse)


@pytest.fixture
def wide_console(monkeypatch):
    """Long paths on one line, so the printed report can be searched for them."""
    from rich.console import Console

    import fpt.pipeline.cli

    monkeypatch.setattr(fpt.pipeline.cli, "console", Console(width=400))


def truncate(path):
    path.write_bytes(path.read_bytes()[:60])
    return path


def test_dry_run_reports_counts_and_every_problem_without_the_lpm(tmp_path, no_lpm, wide_console):
    root = class_tree(tmp_path / "tree", ["benign", "malignant"], {"train": 3, "val": 2, "test": 1})
    broken = truncate(root / "train" / "benign" / "benign_train_0.png")
    stray = write_image(root / "test" / "loose.png")
    result = CliRunner().invoke(
        app, ["extract", "--dry-run", "--dataset", "isic2016", "--data-root", str(root), "-q",
              "--set", "extract.num_workers=0"]
    )
    assert result.exit_code == 1, result.output
    output = result.output
    assert "unlabelled_image" in output and str(stray) in output
    assert "1 image(s) cannot be decoded" in output and str(broken) in output
    assert "not ready for extraction" in output and "The LPM was not run" in output
    report = validate_dataset(config_for("isic2016", root), show_progress=False)
    assert report.class_counts == {"train": [2, 3], "val": [2, 2], "test": [1, 1]}  # decodable images
    assert [f.path for f in report.decode_failures] == [str(broken)]


def test_dry_run_on_a_good_ddr_tree_counts_the_ungradable(tmp_path, no_lpm, wide_console):
    root = ddr_tree(tmp_path / "ddr", {"train": [0, 1, 2, 3, 5, 4], "valid": [2, 5], "test": [3]})
    result = CliRunner().invoke(app, ["extract", "--dry-run", "-d", "ddr", "--data-root", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 image(s), ungradable (grade 5)" in result.output
    assert "ready for extraction" in result.output
    assert "mean (0.42374, 0.26095, 0.12840), std (0.29483, 0.20167, 0.13668)" in result.output  # published (docs/method.md)


def test_structural_errors_stop_extraction_before_the_lpm(tmp_path, no_lpm):
    root = ddr_tree(tmp_path / "ddr", {"train": [0, 1], "valid": [2], "test": [3]})
    with open(root / "DR_grading" / "test.txt", "a") as handle:
        handle.write("ghost.jpg 2\n")
    config = config_for("ddr", root, f"cache.root={tmp_path / 'cache'}", *TINY_LPM)
    with pytest.raises(UserError, match="ghost.jpg"):
        run_extract(config, show_progress=False)
    assert not (tmp_path / "cache").exists()


def test_decode_failure_is_fatal_by_default_and_names_the_file(tmp_path, no_lpm):
    root = class_tree(tmp_path / "tree", ["a", "b"])
    broken = truncate(root / "val" / "b" / "b_val_0.png")
    config = config_for("folder", root, f"cache.root={tmp_path / 'cache'}", *TINY_LPM)
    with pytest.raises(UserError) as error:
        run_extract(config, show_progress=False)
    assert str(broken) in error.value.paragraph() and "on_decode_error=skip" in error.value.paragraph()
    assert not (tmp_path / "cache").exists()


def test_skipped_images_are_listed_in_the_cache_and_have_no_slot(tmp_path):
    root = class_tree(tmp_path / "tree", ["a", "b"], {"train": 2, "val": 2, "test": 1})
    broken = truncate(root / "train" / "a" / "a_train_1.png")
    config = config_for("folder", root, f"cache.root={tmp_path / 'cache'}", "extract.on_decode_error=skip", *TINY_LPM)
    result = run_extract(config, show_progress=False)
    metadata = read_metadata(result.path)
    assert [(s.path, "cannot decode" in s.reason) for s in metadata.skipped] == [(str(broken), True)]
    assert metadata.num_samples == 9 and metadata.split_counts == {"train": 3, "val": 4, "test": 2}
    assert metadata.class_counts["train"] == [1, 2]
    import zarr

    ids = list(zarr.open_group(str(result.path), mode="r")["sample_ids"][:])
    assert "train/a/a_train_1.png" not in ids and len(set(ids)) == 9
    assert any("skipped" in note for note in result.notes)


def test_auto_normalisation_matches_a_direct_computation(tmp_path):
    root = tmp_path / "tree"
    colours = {"train/a/1.png": (255, 0, 60), "train/b/2.png": (55, 100, 60), "val/a/3.png": (0, 0, 0),
               "test/b/4.png": (9, 9, 9)}
    for name, colour in colours.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), colour).save(root / name)
    dataset = resolve_dataset(config_for("folder", root, "dataset.normalization=auto"), show_progress=False)
    train = np.array([colours["train/a/1.png"], colours["train/b/2.png"]]) / 255.0  # train split only
    assert np.allclose(dataset.mean, train.mean(0), atol=1e-6)
    assert np.allclose(dataset.std, np.maximum(train.std(0), 1e-6), atol=1e-5)


def test_fpt_main_exits_nonzero_when_the_dry_run_finds_problems(tmp_path, no_lpm, monkeypatch):
    from fpt.pipeline.cli import main

    root = class_tree(tmp_path / "tree", ["a", "b"])
    monkeypatch.setattr("sys.argv", ["fpt", "extract", "--dry-run", "-d", "folder", "--data-root", str(root), "-q"])
    main()  # a clean dataset: returns normally, exit status 0
    truncate(root / "test" / "b" / "b_test_0.png")
    with pytest.raises(SystemExit) as bad:
        main()
    assert bad.value.code == 1


# --- labels: empty, too few classes, a class never trained on, a class missing from a split ----

def dry_run(root, *args):
    return CliRunner().invoke(
        app, ["extract", "--dry-run", "--data-root", str(root), "-q", "--set", "extract.num_workers=0", *args]
    )


def test_empty_and_blank_csv_labels_are_errors_naming_their_lines(tmp_path, no_lpm, wide_console):
    for index in range(8):
        write_image(tmp_path / f"i{index}.png", index * 30)
    rows = ["i0.png,0,train", "i1.png,1,train", "i2.png,,val", "i3.png,0,val", "i4.png,1,val",
            "i5.png, ,test", "i6.png,0,test", "i7.png,1,test"]
    (tmp_path / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    report = validate_dataset(config_for("csv", tmp_path), show_progress=False)
    assert not report.ready
    assert report.class_names == ["0", "1"]  # no class named ''
    found = {p.kind: p for p in report.errors}
    assert found["empty_label"].paths == ["labels.csv:4 i2.png", "labels.csv:7 i5.png"]
    result = dry_run(tmp_path, "--dataset", "csv")
    assert result.exit_code == 1 and "not ready for extraction" in result.output
    assert "labels.csv:4 i2.png" in result.output and "labels.csv:7 i5.png" in result.output
    with pytest.raises(UserError) as error:
        resolve_dataset(config_for("csv", tmp_path), show_progress=False)
    assert "labels.csv:4 i2.png" in error.value.paragraph() and "labels.csv:7 i5.png" in error.value.paragraph()
    assert "empty label" in error.value.paragraph()


def test_a_single_class_folder_is_an_error(tmp_path, no_lpm, wide_console):
    root = class_tree(tmp_path / "tree", ["only"])
    report = validate_dataset(config_for("folder", root), show_progress=False)
    assert not report.ready
    assert [(p.kind, p.paths) for p in report.errors] == [("too_few_classes", [str(root / "train")])]
    result = dry_run(root, "--dataset", "folder")
    assert result.exit_code == 1 and "too_few_classes" in result.output and "not ready" in result.output
    with pytest.raises(UserError, match="at least two classes") as error:
        resolve_dataset(config_for("folder", root), show_progress=False)
    assert str(root / "train") in error.value.paragraph()


def test_a_csv_whose_labels_are_one_class_is_an_error(tmp_path, no_lpm):
    for index in range(3):
        write_image(tmp_path / f"i{index}.png", index * 30)
    (tmp_path / "labels.csv").write_text("i0.png,cat,train\ni1.png,cat,val\ni2.png,cat,test\n")
    report = validate_dataset(config_for("csv", tmp_path), show_progress=False)
    assert not report.ready and [p.kind for p in report.errors] == ["too_few_classes"]
    with pytest.raises(UserError, match="at least two classes") as error:
        resolve_dataset(config_for("csv", tmp_path), show_progress=False)
    assert str(tmp_path / "labels.csv") in error.value.paragraph()


def test_a_class_without_training_images_is_an_error(tmp_path, no_lpm):
    root = class_tree(tmp_path / "tree", ["a", "b"])
    write_image(root / "val" / "c" / "c_val.png", 5)  # class c only in val and test
    write_image(root / "test" / "c" / "c_test.png", 6)
    config = config_for("folder", root, "dataset.classes=[a,b,c]")
    report = validate_dataset(config, show_progress=False)
    assert not report.ready
    [problem] = report.errors
    assert problem.kind == "class_without_training_images" and "['c']" in problem.message
    assert problem.paths == [str(root / "train")]
    with pytest.raises(UserError, match=r"class\(es\) \['c'\] have no training images"):
        resolve_dataset(config, show_progress=False)
    (root / "train" / "c").mkdir()  # a class folder with nothing in it: the class is read from train/
    with pytest.raises(UserError, match=r"\['c'\] have no training images"):
        resolve_dataset(config_for("folder", root), show_progress=False)


def test_a_blank_class_folder_name_is_an_error(tmp_path, no_lpm):
    root = class_tree(tmp_path / "tree", ["a", "b", "  "])
    report = validate_dataset(config_for("folder", root), show_progress=False)
    assert not report.ready and [p.kind for p in report.errors] == ["empty_label"]
    with pytest.raises(UserError, match="empty or only whitespace"):
        resolve_dataset(config_for("folder", root), show_progress=False)


def test_a_split_missing_a_class_is_a_warning_and_a_note(tmp_path, no_lpm, wide_console):
    root = class_tree(tmp_path / "tree", ["a", "b", "c"])
    for path in (root / "test" / "c").iterdir():
        path.unlink()
    (root / "test" / "c").rmdir()
    report = validate_dataset(config_for("folder", root), show_progress=False)
    assert report.ready
    [problem] = report.problems
    assert (problem.kind, problem.severity, problem.paths) == ("class_missing_from_split", "warning", [str(root / "test")])
    assert "test split has no images of class(es) ['c']" in problem.message and "AUC" in problem.message
    result = dry_run(root, "--dataset", "folder")
    assert result.exit_code == 0 and "class_missing_from_split" in result.output
    assert "ready for extraction" in result.output and "not ready" not in result.output
    dataset = resolve_dataset(config_for("folder", root), show_progress=False)
    assert any("test split has no images of class(es) ['c']" in note for note in dataset.notes)


def test_auto_normalisation_is_taken_at_full_resolution(tmp_path):
    """One-pixel detail: a thumbnail averages it away (std near 0); the full-resolution std is 0.5."""
    root = tmp_path / "tree"
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    for name in ("train/a/1.png", "train/b/2.png", "val/a/3.png", "val/b/4.png", "test/a/5.png", "test/b/6.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([checker] * 3, axis=-1)).save(root / name)
    dataset = resolve_dataset(config_for("folder", root, "dataset.normalization=auto"), show_progress=False)
    assert np.allclose(dataset.mean, 0.5, atol=1e-6) and np.allclose(dataset.std, 0.5, atol=1e-6)


@pytest.mark.parametrize("lpm, expected_mean", [
    ("vit_small_patch14_dinov2", (0.485, 0.456, 0.406)),  # ImageNet's
    ("eva02_tiny_patch14_224", (0.48145466, 0.4578275, 0.40821073)),  # CLIP's
])
def test_lpm_normalisation_is_the_one_the_lpm_was_trained_with(tmp_path, lpm, expected_mean):
    root = class_tree(tmp_path / "tree", ["a", "b"])
    dataset = resolve_dataset(config_for("folder", root, "dataset.normalization=lpm", f"lpm.name={lpm}"),
                              show_progress=False)
    assert dataset.mean == pytest.approx(expected_mean)

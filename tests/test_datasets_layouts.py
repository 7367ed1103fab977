"""The layout readers on good and bad trees built on disk: class folders, DDR, CSV."""

from __future__ import annotations

import collections

import pytest
from datasets_helpers import class_tree, config_for, ddr_tree, write_image

from fpt.cache.errors import UserError
from fpt.stages.datasets.csv_table import read_csv_table
from fpt.stages.datasets.ddr import read_ddr
from fpt.stages.datasets.layouts import read_class_folders
from fpt.stages.datasets.registry import REGISTRY, read_layout, resolve_dataset
from fpt.stages.datasets.structure import check_structure


def kinds(result) -> dict[str, str]:
    return {problem.kind: problem.severity for problem in result.problems}


# --- registry -------------------------------------------------------------------------------

def test_registry_holds_the_papers_datasets_with_their_learning_rates_and_class_counts():
    paper = {  # docs/method.md's table: name -> (classes, learning rate)
        "messidor2": (5, 2e-4), "ddr": (5, 5e-4), "isic2016": (2, 5e-3), "isic2018": (7, 1e-4),
        "ddsm": (3, 1e-3), "cmmd": (2, 5e-5), "covid": (3, 1e-4), "chncxr": (2, 5e-4),
    }
    for name, (classes, lr) in paper.items():
        spec = REGISTRY[name]
        assert spec.num_classes == classes, name
        assert spec.default_lr == lr, name
    published = {  # docs/method.md's per-dataset normalisation: name -> (mean, std)
        "messidor2": ((0.48436, 0.22381, 0.07583), (0.29392, 0.14722, 0.06351)),
        "ddr": ((0.42374, 0.26095, 0.12840), (0.29483, 0.20167, 0.13668)),
        "isic2016": ((0.72439, 0.61872, 0.56646), (0.16385, 0.17090, 0.19106)),
        "isic2018": ((0.76356, 0.54661, 0.57075), (0.14041, 0.15191, 0.16923)),
        "ddsm": ((0.20267,) * 3, (0.22467,) * 3), "cmmd": ((0.16735,) * 3, (0.18017,) * 3),
        "covid": ((0.49834, 0.49864, 0.49895), (0.24262, 0.24259, 0.24264)),
        "chncxr": ((0.61055,) * 3, (0.25848,) * 3),
    }
    assert {name: (REGISTRY[name].mean, REGISTRY[name].std) for name in paper} == published
    assert all(REGISTRY[name].normalization == "given" for name in paper)
    assert REGISTRY["folder"].normalization == REGISTRY["csv"].normalization == "auto"
    assert {"demo", "folder", "csv"} <= set(REGISTRY)


def test_unknown_dataset_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="ddr.*isic2018"):
        read_layout(config_for("isic2019", tmp_path))


# --- class folders ----------------------------------------------------------------------------

def test_class_folders_matched_by_name_or_index_case_insensitively(tmp_path):
    root = tmp_path / "isic2016"
    write_image(root / "train" / "Benign" / "a.png")
    write_image(root / "train" / "1" / "b.png", 200)
    write_image(root / "val" / "benign" / "c.png")
    write_image(root / "test" / "MALIGNANT" / "d.png")
    spec, result = read_layout(config_for("isic2016", root))
    assert result.errors == []
    labels = {s.path.name: (s.split, s.label) for s in result.samples}
    assert labels == {"a.png": ("train", 0), "b.png": ("train", 1), "c.png": ("val", 0), "d.png": ("test", 1)}


def test_missing_root_names_the_folder_and_the_setting(tmp_path):
    with pytest.raises(UserError) as error:
        read_layout(config_for("folder", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in error.value.paragraph()
    assert "--data-root" in error.value.paragraph()


def test_missing_split_folder_is_named(tmp_path):
    root = tmp_path / "tree"
    write_image(root / "train" / "a" / "x.png")
    write_image(root / "test" / "a" / "y.png")
    with pytest.raises(UserError, match=r"no val split folder"):
        read_class_folders(root, None)


def test_empty_split_is_an_error(tmp_path):
    root = class_tree(tmp_path / "tree", ["a", "b"], {"train": 2, "val": 0, "test": 1})
    (root / "val" / "a").mkdir(parents=True)
    result = check_structure(read_class_folders(root, None))
    assert kinds(result)["empty_split"] == "error"
    with pytest.raises(UserError, match="val split"):
        resolve_dataset(config_for("folder", root), show_progress=False)


def test_image_outside_class_folders_and_unknown_class_folder_are_errors(tmp_path):
    root = class_tree(tmp_path / "tree", ["benign", "malignant"])
    stray = write_image(root / "train" / "stray.png")
    unknown = write_image(root / "val" / "7" / "z.png")  # index 7 of a 2-class dataset
    (root / "train" / "benign" / "notes.txt").write_text("x")
    result = check_structure(read_class_folders(root, ["benign", "malignant"]))
    found = {p.kind: p for p in result.problems}
    assert found["unlabelled_image"].paths == [str(stray)]
    assert found["unknown_class_folder"].paths == [str(unknown.parent)]
    assert found["not_an_image"].severity == "warning"
    with pytest.raises(UserError) as error:
        resolve_dataset(config_for("isic2016", root), show_progress=False)
    assert str(stray) in error.value.paragraph() and str(unknown.parent) in error.value.paragraph()


def test_duplicate_file_names_across_splits_and_classes_stay_distinct_samples(tmp_path):
    root = tmp_path / "tree"
    write_image(root / "train" / "a" / "same.png", 10)
    write_image(root / "train" / "b" / "same.png", 20)
    write_image(root / "val" / "a" / "same.png", 30)
    write_image(root / "test" / "b" / "same.png", 40)
    result = check_structure(read_class_folders(root, None))
    ids = [s.sample_id for s in result.samples]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert kinds(result) == {"same_name_across_splits": "warning", "same_name_across_classes": "warning",
                             "class_missing_from_split": "warning"}  # val holds no b, test no a
    dataset = resolve_dataset(config_for("folder", root), show_progress=False)
    assert len(dataset.samples) == 4
    assert any("more than one split" in note for note in dataset.notes)


# --- DDR --------------------------------------------------------------------------------------

def test_ddr_layout_leaves_ungradable_out_and_counts_it(tmp_path):
    grades = {"train": [0, 1, 2, 3, 4, 5, 5], "valid": [0, 4, 5], "test": [2, 3]}
    root = ddr_tree(tmp_path / "ddr", grades)
    result = read_ddr(root, keep_ungradable=False)
    assert result.errors == []
    assert result.excluded == {"ungradable (grade 5)": 3}
    assert collections.Counter(s.split for s in result.samples) == {"train": 5, "val": 2, "test": 2}
    assert sorted(s.label for s in result.samples if s.split == "train") == [0, 1, 2, 3, 4]
    assert result.samples[0].sample_id.startswith("train/")
    kept = read_ddr(root / "DR_grading", keep_ungradable=True)  # the DR_grading folder itself works too
    assert len(kept.class_names) == 6 and sum(s.label == 5 for s in kept.samples) == 3


def test_ddr_missing_split_names_the_missing_parts(tmp_path):
    root = ddr_tree(tmp_path / "ddr", {"train": [0], "valid": [1], "test": [2]})
    (root / "DR_grading" / "valid.txt").unlink()
    with pytest.raises(UserError, match="valid.txt"):
        read_ddr(root, keep_ungradable=False)


def test_ddr_bad_label_files(tmp_path):
    root = ddr_tree(tmp_path / "ddr", {"train": [0, 1, 2], "valid": [1], "test": [2]})
    folder = root / "DR_grading"
    with open(folder / "train.txt", "a") as handle:
        handle.write("ghost.jpg 1\ntrain_000.jpg 2\nextra.jpg 7\nnot a line at all\n")
    write_image(folder / "train" / "extra.jpg")
    write_image(folder / "test" / "unlisted.jpg")
    result = read_ddr(root, keep_ungradable=False)
    found = {p.kind: p for p in result.problems}
    assert "ghost.jpg" in found["missing_image"].paths[0]
    assert found["duplicate_label"].paths == ["train.txt:5 train_000.jpg"]
    assert found["label_out_of_range"].paths == ["train.txt:6 extra.jpg grade 7"]
    assert found["malformed_label_line"].paths == ["train.txt:7 'not a line at all'"]
    assert found["unlabelled_image"].paths == [str(folder / "test" / "unlisted.jpg")]
    with pytest.raises(UserError) as error:
        resolve_dataset(config_for("ddr", root), show_progress=False)
    message = error.value.paragraph()
    for expected in ("ghost.jpg", "unlisted.jpg", "grade 7", "--dry-run"):
        assert expected in message


# --- CSV --------------------------------------------------------------------------------------

def test_csv_with_split_column_and_named_labels(tmp_path):
    for name in ("x/a.png", "x/b.png", "y/a.png", "z.png"):
        write_image(tmp_path / name, len(name))
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nx/a.png,cat,train\nx/b.png,dog,train\ny/a.png,Cat,valid\nz.png,dog,test\n"
    )
    result = read_csv_table(tmp_path / "labels.csv", ["cat", "dog"], 0.2, 0.2, 0)
    assert result.errors == []
    got = {s.sample_id: (s.split, s.label) for s in result.samples}
    assert got == {"x/a.png": ("train", 0), "x/b.png": ("train", 1), "y/a.png": ("val", 0), "z.png": ("test", 1)}


def test_csv_without_split_is_stratified_and_seeded(tmp_path):
    rows = []
    for label, count in ((0, 40), (1, 20)):
        for index in range(count):
            name = f"img_{label}_{index}.png"
            write_image(tmp_path / name, index, size=4)
            rows.append(f"{name},{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))  # no header
    first = read_csv_table(tmp_path / "labels.csv", None, 0.25, 0.25, split_seed=3)
    again = read_csv_table(tmp_path / "labels.csv", None, 0.25, 0.25, split_seed=3)
    other = read_csv_table(tmp_path / "labels.csv", None, 0.25, 0.25, split_seed=4)
    assign = lambda r: {s.sample_id: s.split for s in r.samples}  # noqa: E731
    assert assign(first) == assign(again) and assign(first) != assign(other)
    counts = collections.Counter((s.split, s.label) for s in first.samples)
    assert counts == {("train", 0): 20, ("val", 0): 10, ("test", 0): 10,
                      ("train", 1): 10, ("val", 1): 5, ("test", 1): 5}
    assert first.class_names == ["0", "1"]


def test_csv_bad_rows(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", 30)
    (tmp_path / "t.csv").write_text("path,label,split\na.png,0,train\nmissing.png,1,val\nb.png,9,test\na.png,1,test\n")
    result = read_csv_table(tmp_path / "t.csv", ["neg", "pos"], 0.2, 0.2, 0)
    found = {p.kind: p for p in result.problems}
    assert set(found) == {"missing_image", "label_out_of_range", "duplicate_label"}
    assert "missing.png" in found["missing_image"].paths[0]
    assert "'9'" in found["label_out_of_range"].paths[0]


def test_csv_layout_through_the_registry(tmp_path):
    for index in range(6):
        write_image(tmp_path / f"i{index}.png", index * 30)
    splits = ["train", "train", "val", "val", "test", "test"]
    (tmp_path / "labels.csv").write_text(
        "".join(f"i{i}.png,{i % 2},{split}\n" for i, split in enumerate(splits))
    )
    dataset = resolve_dataset(config_for("csv", tmp_path), show_progress=False)
    assert dataset.split_counts() == {"train": 2, "val": 2, "test": 2}
    assert dataset.class_names == ["0", "1"]
    # a paper dataset may come as a CSV too, keeping its class names
    named = resolve_dataset(config_for("cmmd", tmp_path, f"dataset.csv={tmp_path / 'labels.csv'}"), show_progress=False)
    assert named.class_names == ["benign", "malignant"] and named.default_lr == 5e-5


def test_csv_header_of_any_names_and_one_file_spelled_two_ways(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png", 40)
    (tmp_path / "t.csv").write_text("image,class,fold\nimg/a.png,0,train\n./img/a.png,1,test\nimg/b.png,1,val\n")
    result = read_csv_table(tmp_path / "t.csv", None, 0.2, 0.2, 0)
    found = {p.kind: p for p in result.problems}
    assert set(found) == {"duplicate_label"}
    assert found["duplicate_label"].paths == ["t.csv:3 ./img/a.png (also line 2)"]


def test_numeric_class_folders_sort_numerically(tmp_path):
    root = tmp_path / "tree"
    for name in ("2", "10", "9"):
        for split in ("train", "val", "test"):
            write_image(root / split / name / "x.png", int(name))
    result = read_class_folders(root, None)
    assert result.class_names == ["2", "9", "10"]
    assert {s.label for s in result.samples if s.sample_id.startswith("train/10/")} == {2}
    write_image(root / "val" / "1" / "y.png")  # a class name that does not exist, not index 1
    assert check_structure(read_class_folders(root, None)).errors[0].kind == "unknown_class_folder"


def test_fixed_class_datasets_refuse_a_class_list(tmp_path):
    root = ddr_tree(tmp_path / "ddr", {"train": [0], "valid": [1], "test": [2]})
    with pytest.raises(UserError, match="fixed"):
        read_layout(config_for("ddr", root, "dataset.classes=[a,b]"))


def test_datasets_command_lists_every_dataset_and_where_it_is_looked_for(tmp_path, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    import fpt.pipeline.cli

    monkeypatch.setattr(fpt.pipeline.cli, "console", Console(width=400))
    (tmp_path / "ddr").mkdir()
    result = CliRunner().invoke(fpt.pipeline.cli.app, ["datasets", "--set", f"dataset.data_root={tmp_path}"])
    assert result.exit_code == 0, result.output
    for name, spec in REGISTRY.items():
        line = next(line for line in result.output.splitlines() if line.strip("│ ┃").startswith(name + " "))
        assert f"{spec.default_lr:g}" in line, line
    assert f"{tmp_path / 'ddr'} (found)" in result.output
    assert f"{tmp_path / 'isic2018'} (missing)" in result.output


def test_ddr_line_with_only_a_file_name_is_malformed_with_its_line(tmp_path):
    root = ddr_tree(tmp_path / "ddr", {"train": [0, 1, 2, 3, 4], "valid": [1], "test": [2]})
    folder = root / "DR_grading"
    with open(folder / "valid.txt", "a") as handle:
        handle.write("valid_001.jpg\nvalid_002.jpg   \n")
    write_image(folder / "valid" / "valid_001.jpg")
    write_image(folder / "valid" / "valid_002.jpg", 50)
    found = {p.kind: p for p in read_ddr(root, keep_ungradable=False).problems}
    assert found["malformed_label_line"].paths == ["valid.txt:2 'valid_001.jpg'", "valid.txt:3 'valid_002.jpg'"]
    with pytest.raises(UserError, match="valid.txt:2 'valid_001.jpg'"):
        resolve_dataset(config_for("ddr", root), show_progress=False)

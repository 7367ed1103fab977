"""The CSV layout: a `path,label[,split]` table, image paths relative to the CSV's folder.

Labels are class names (matched case-insensitively against dataset.classes) or class
indices. Without a split column the rows are split with a seeded, class-stratified split
(dataset.val_fraction, dataset.test_fraction, dataset.split_seed).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from fpt.cache.errors import UserError
from fpt.stages.datasets.layouts import IMAGE_SUFFIXES, SPLIT_FOLDER_NAMES, class_index, natural_order
from fpt.stages.datasets.problems import LayoutResult
from fpt.stages.datasets.samples import SPLITS, Sample, Split

SPLIT_ALIASES: dict[str, Split] = {alias: split for split, aliases in SPLIT_FOLDER_NAMES.items() for alias in aliases}
COLUMNS = ("path", "label", "split")


def read_rows(csv_path: Path) -> tuple[list[list[str]], int]:
    """Rows without the header, and the line number of the first row."""
    if not csv_path.is_file():
        raise UserError(
            f"The label table {csv_path} does not exist.",
            "Set dataset.csv to a path,label[,split] file (or put labels.csv in the dataset folder).",
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows:
        raise UserError(f"The label table {csv_path} is empty.", "Write one path,label[,split] row per image.")
    first = rows[0][0].strip() if rows[0] else ""
    names_image = Path(first).suffix.lower() in IMAGE_SUFFIXES or (csv_path.parent / first).is_file()
    if first.lower() == "path" or not first or not names_image:
        return rows[1:], 2  # a header row: the first cell is not an image file (DICOM files often have no suffix)
    return rows, 1


def labels_to_classes(raw: list[str], class_names: list[str] | None) -> list[str]:
    if class_names is not None:
        return class_names
    if raw and all(label.lstrip("-").isdigit() for label in raw):
        return [str(index) for index in range(max(max(int(label) for label in raw), 0) + 1)]
    return natural_order(raw)


def stratified_splits(labels: list[int], val_fraction: float, test_fraction: float, seed: int) -> list[Split]:
    """train/val/test per row, each class spread over the splits in the given fractions."""
    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"dataset.val_fraction + dataset.test_fraction = {val_fraction + test_fraction:g} leaves no training images.",
            "Choose fractions that add up to less than 1.",
        )
    indices = np.arange(len(labels))
    y = np.array(labels)
    try:
        rest, test = train_test_split(indices, test_size=test_fraction, stratify=y, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed
        )
    except ValueError as error:
        raise UserError(
            f"The stratified split of the label table failed: {error}.",
            "Every class needs a few images in each split: add images, change the fractions, or give a split column.",
        ) from None
    splits: list[Split] = ["train"] * len(labels)
    for index in val:
        splits[index] = "val"
    for index in test:
        splits[index] = "test"
    return splits


def read_csv_table(
    csv_path: Path, class_names: list[str] | None, val_fraction: float, test_fraction: float, split_seed: int
) -> LayoutResult:
    rows, first_line = read_rows(csv_path)
    result = LayoutResult(samples=[], class_names=[], sources={split: str(csv_path) for split in SPLITS})
    malformed = [f"line {n}: {row}" for n, row in enumerate(rows, first_line) if len(row) not in (2, 3)]
    if malformed:
        raise UserError(
            f"{len(malformed)} row(s) of {csv_path} do not have 2 or 3 columns ({'; '.join(malformed[:5])}).",
            "Write each row as path,label or path,label,split.",
        )
    has_split = any(len(row) == 3 for row in rows)
    if has_split and any(len(row) == 2 or not row[2].strip() for row in rows):
        raise UserError(f"Some rows of {csv_path} have a split and some do not.", "Give every row a split, or none.")
    unlabelled = [f"{csv_path.name}:{n} {row[0].strip()}" for n, row in enumerate(rows, first_line)
                  if not row[1].strip()]
    if unlabelled:  # their rows are left out below: an empty label must not become a class named ''
        result.add("empty_label", "error", f"{len(unlabelled)} row(s) have an empty label, so their images have no class",
                   "Write each image's class (a name or an index) in the label column, or delete those rows.",
                   unlabelled)
    names = labels_to_classes([row[1].strip() for row in rows if row[1].strip()], class_names)
    result.class_names = names
    base = csv_path.parent
    kept: list[tuple[str, Path, int, str, int]] = []
    seen: dict[Path, int] = {}
    missing, bad_label, bad_split, repeated = [], [], [], []
    for number, row in enumerate(rows, first_line):
        raw_path, raw_label = row[0].strip(), row[1].strip()
        if not raw_label:
            continue
        where = f"{csv_path.name}:{number} {raw_path}"
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        if path.resolve() in seen:  # the same file, however it is spelled
            repeated.append(f"{where} (also line {seen[path.resolve()]})")
            continue
        seen[path.resolve()] = number
        label = class_index(raw_label, names)
        split = SPLIT_ALIASES.get(row[2].strip().lower(), "") if has_split else "train"
        if not path.is_file():
            missing.append(f"{where} -> {path}")
        elif label is None:
            bad_label.append(f"{where} label {raw_label!r}")
        elif not split:
            bad_split.append(f"{where} split {row[2].strip()!r}")
        else:
            kept.append((raw_path, path, label, split, number))
    if missing:
        result.add("missing_image", "error", f"{len(missing)} row(s) name images that do not exist",
                   "Fix the paths (relative to the CSV's folder) or delete those rows.", missing)
    if bad_label:
        result.add("label_out_of_range", "error",
                   f"{len(bad_label)} row(s) have a label that is not one of the {len(names)} classes {names}",
                   "Correct the labels, or list every class in dataset.classes.", bad_label)
    if bad_split:
        result.add("unknown_split", "error", f"{len(bad_split)} row(s) have a split other than train/val/test",
                   "Use train, val (or valid) and test.", bad_split)
    if repeated:
        result.add("duplicate_label", "error", f"{len(repeated)} image(s) are listed more than once",
                   "Keep one row per image.", repeated)
    if result.errors or not kept:
        return result
    splits = [entry[3] for entry in kept]
    if not has_split:
        splits = stratified_splits([entry[2] for entry in kept], val_fraction, test_fraction, split_seed)
        result.notes.append(
            f"No split column: split {len(kept)} images by class with seed {split_seed} "
            f"(val {val_fraction:g}, test {test_fraction:g})."
        )
    for (raw_path, path, label, _, _), split in zip(kept, splits):
        sample_id = Path(os.path.normpath(raw_path)).as_posix()
        result.samples.append(Sample(sample_id=sample_id, path=path, label=label, split=split))  # type: ignore[arg-type]
    return result

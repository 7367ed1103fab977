"""DDR's published layout: DR_grading/{train,valid,test}/ images + {train,valid,test}.txt labels.

Each label file has one `<file name> <grade>` line per image; grades 0-4 are DR grades and 5
is 'ungradable', left out unless dataset.keep_ungradable is set (then it is a sixth class).
The dataset root may be the folder holding DR_grading/ or DR_grading/ itself.
"""

from __future__ import annotations

from pathlib import Path

from fpt.cache.errors import UserError
from fpt.stages.datasets.layouts import is_hidden, is_image_file, require_folder
from fpt.stages.datasets.problems import LayoutResult
from fpt.stages.datasets.samples import SPLITS, Sample, Split

DR_GRADES = ["0_no_dr", "1_mild", "2_moderate", "3_severe", "4_proliferative"]
UNGRADABLE = 5
UNGRADABLE_NAME = "5_ungradable"
DDR_SPLIT_NAMES: dict[Split, str] = {"train": "train", "val": "valid", "test": "test"}


def grading_folder(root: Path) -> Path:
    require_folder(root, "DDR dataset")
    return root / "DR_grading" if (root / "DR_grading").is_dir() else root


def read_label_file(label_file: Path, result: LayoutResult) -> list[tuple[str, int, int]]:
    """(file name, grade, line number) per well-formed line; malformed lines become problems."""
    entries: list[tuple[str, int, int]] = []
    malformed: list[str] = []
    try:
        lines = label_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"The label file {label_file} is not a text file.", "Restore DDR's original label file.") from None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            malformed.append(f"{label_file.name}:{number} {line.strip()!r}")
            continue
        entries.append((parts[0], int(parts[1]), number))
    if malformed:
        result.add(
            "malformed_label_line", "error",
            f"{len(malformed)} line(s) of {label_file} are not '<file name> <grade>'",
            "Fix or delete those lines.", malformed,
        )
    return entries


def read_ddr(root: Path, keep_ungradable: bool) -> LayoutResult:
    folder = grading_folder(root)
    class_names = DR_GRADES + ([UNGRADABLE_NAME] if keep_ungradable else [])
    sources = {split: str(folder / f"{DDR_SPLIT_NAMES[split]}.txt") for split in SPLITS}
    result = LayoutResult(samples=[], class_names=class_names, sources=sources)
    missing_parts = [
        str(folder / part)
        for split in SPLITS
        for part in (DDR_SPLIT_NAMES[split], f"{DDR_SPLIT_NAMES[split]}.txt")
        if not (folder / part).exists()
    ]
    if missing_parts:
        raise UserError(
            f"The DDR folder {folder} lacks {', '.join(missing_parts)}.",
            "Point dataset.path (or --data-root) at the folder that holds DR_grading/ as published: "
            "DR_grading/{train,valid,test}/ image folders and {train,valid,test}.txt label files.",
        )
    missing: list[str] = []
    out_of_range: list[str] = []
    repeated: list[str] = []
    unlabelled: list[str] = []
    ungradable = 0
    for split in SPLITS:
        images = folder / DDR_SPLIT_NAMES[split]
        label_file = folder / f"{DDR_SPLIT_NAMES[split]}.txt"
        listed: set[str] = set()
        for name, grade, number in read_label_file(label_file, result):
            where = f"{label_file.name}:{number} {name}"
            if name in listed:
                repeated.append(where)
                continue
            listed.add(name)
            if not (images / name).is_file():
                missing.append(f"{where} -> {images / name}")
                continue
            if not 0 <= grade <= UNGRADABLE:
                out_of_range.append(f"{where} grade {grade}")
                continue
            if grade == UNGRADABLE and not keep_ungradable:
                ungradable += 1
                continue
            sample = Sample(sample_id=f"{split}/{name}", path=images / name, label=grade, split=split)
            result.samples.append(sample)
        unlabelled += [
            str(path) for path in sorted(images.iterdir())
            if is_image_file(path) and path.name not in listed and not is_hidden(path)
        ]
    if missing:
        result.add(
            "missing_image", "error", f"{len(missing)} label line(s) name images that do not exist",
            "Restore the missing images, or delete their lines from the label file.", missing,
        )
    if out_of_range:
        result.add(
            "label_out_of_range", "error",
            f"{len(out_of_range)} label line(s) have a grade outside 0-4 (and 5 for ungradable)",
            "Correct the grades in the label file.", out_of_range,
        )
    if repeated:
        result.add(
            "duplicate_label", "error", f"{len(repeated)} image(s) are listed more than once in a label file",
            "Keep one line per image.", repeated,
        )
    if unlabelled:
        result.add(
            "unlabelled_image", "error", f"{len(unlabelled)} image(s) are in an image folder but in no label file",
            "Add a '<file name> <grade>' line for each, or move them out of the image folder.", unlabelled,
        )
    if ungradable:
        result.excluded["ungradable (grade 5)"] = ungradable
        result.notes.append(
            f"{ungradable} ungradable image(s) (grade 5) left out; --set dataset.keep_ungradable=true keeps them as a sixth class."
        )
    return result

"""The class-per-folder layout: root/{train,val,test}/<class>/<image>.

Class folders are matched to the class names by name (case-insensitive) or by index
("0", "1", ...), so `ddsm/train/benign/` and `messidor2/train/2/` both work.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fpt.cache.errors import UserError
from fpt.stages.datasets.dicom import DICOM_SUFFIXES
from fpt.stages.datasets.problems import LayoutResult
from fpt.stages.datasets.samples import SPLITS, Sample, Split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"} | DICOM_SUFFIXES
SPLIT_FOLDER_NAMES: dict[Split, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"Thumbs.db", "desktop.ini"}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path)


def find_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively) under named folders, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if is_image_file(p)))
        elif item.is_file():
            found.append(item)
        else:
            raise UserError(f"{item} does not exist.", "Give image files or folders that hold images.")
    if not found:
        raise UserError(
            f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}.",
            "Give image files or folders that hold images.",
        )
    return found


def require_folder(root: Path, what: str) -> None:
    if not root.is_dir():
        raise UserError(
            f"The {what} folder {root} does not exist.",
            "Set dataset.path (or dataset.data_root) in pipeline.yaml, or pass --data-root.",
        )


def find_split_folder(root: Path, split: Split) -> Path | None:
    for name in SPLIT_FOLDER_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def split_folders(root: Path, arrangement: str) -> dict[Split, Path]:
    folders = {split: find_split_folder(root, split) for split in SPLITS}
    missing = [split for split, folder in folders.items() if folder is None]
    if missing:
        names = "; ".join(f"{split}: one of {'/'.join(SPLIT_FOLDER_NAMES[split])}" for split in missing)
        raise UserError(
            f"The dataset folder {root} has no {', '.join(missing)} split folder(s) ({names}).",
            f"Arrange it as {arrangement}.",
        )
    return {split: folder for split, folder in folders.items() if folder is not None}


def natural_order(names: Iterable[str]) -> list[str]:
    """Sorted names; numerically when every name is a number, so "10" comes after "9"."""
    unique = sorted(set(names))
    return sorted(unique, key=int) if unique and all(name.isdigit() for name in unique) else unique


def class_index(folder_name: str, class_names: list[str]) -> int | None:
    lowered = [name.lower() for name in class_names]
    if folder_name.lower() in lowered:
        return lowered.index(folder_name.lower())
    numbered = any(name.isdigit() for name in class_names)  # then "1" is a name, never an index
    if folder_name.isdigit() and not numbered and int(folder_name) < len(class_names):
        return int(folder_name)
    return None


def read_class_folders(root: Path, class_names: list[str] | None) -> LayoutResult:
    """root/{train,val,test}/<class name>/<image>: the layout most public datasets ship in."""
    require_folder(root, "dataset")
    folders = split_folders(root, "train/, val/ and test/ folders, each with one sub-folder per class")
    if class_names is None:
        class_names = natural_order(p.name for p in folders["train"].iterdir() if p.is_dir() and not is_hidden(p))
        if not class_names:
            raise UserError(
                f"{folders['train']} has no class sub-folders.",
                "Put each class's images in its own folder, e.g. train/benign/, train/malignant/.",
            )
    result = LayoutResult(
        samples=[], class_names=list(class_names), sources={split: str(folder) for split, folder in folders.items()}
    )
    unknown: list[str] = []
    unlabelled: list[str] = []
    ignored: list[str] = []
    for split in SPLITS:
        folder = folders[split]
        for entry in sorted(folder.iterdir()):
            if is_hidden(entry):
                continue
            if entry.is_file():
                (unlabelled if is_image_file(entry) else ignored).append(str(entry))
                continue
            label = class_index(entry.name, class_names)
            if label is None:
                unknown.append(str(entry))
                continue
            for path in sorted(entry.rglob("*")):
                if any(part.startswith(".") for part in path.relative_to(entry).parts) or is_hidden(path):
                    continue
                if is_image_file(path):
                    sample_id = f"{split}/{entry.name}/{path.relative_to(entry).as_posix()}"
                    result.samples.append(Sample(sample_id=sample_id, path=path, label=label, split=split))
                elif path.is_file():
                    ignored.append(str(path))
    if unknown:
        result.add(
            "unknown_class_folder", "error",
            f"{len(unknown)} folder(s) are not among the classes {class_names}",
            "Rename or remove those folders, or list every class in dataset.classes.", unknown,
        )
    if unlabelled:
        result.add(
            "unlabelled_image", "error",
            f"{len(unlabelled)} image(s) lie directly in a split folder, outside any class folder, so they have no label",
            "Move each image into the folder of its class, or out of the dataset.", unlabelled,
        )
    if ignored:
        result.add(
            "not_an_image", "warning",
            f"{len(ignored)} file(s) are not images fpt reads ({', '.join(sorted(IMAGE_SUFFIXES))}) and are ignored",
            "Convert them (e.g. to PNG) if they belong to the dataset.", ignored,
        )
    return result

"""Reading a dataset's files into labelled samples, one function per on-disk layout."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from stages.datasets.samples import SPLITS, Sample, Split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SPLIT_FOLDER_NAMES: dict[Split, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_split_folder(root: Path, split: Split) -> Path | None:
    for name in SPLIT_FOLDER_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def read_class_folders(root: Path, class_names: list[str] | None) -> tuple[list[Sample], list[str]]:
    """root/{train,val,test}/<class name>/<image>: the layout most public datasets ship in."""
    if not root.is_dir():
        raise UserError(
            f"The dataset folder {root} does not exist.",
            "Set dataset.path (or dataset.data_root) in pipeline.yaml, or pass --data-root.",
        )
    folders = {split: find_split_folder(root, split) for split in SPLITS}
    missing = [split for split, folder in folders.items() if folder is None]
    if missing:
        raise UserError(
            f"The dataset folder {root} has no {', '.join(missing)} split folder(s).",
            "Arrange it as train/, val/ and test/ folders, each with one sub-folder per class.",
        )
    if class_names is None:
        class_names = sorted(p.name for p in folders["train"].iterdir() if p.is_dir())  # type: ignore[union-attr]
        if not class_names:
            raise UserError(f"{folders['train']} has no class sub-folders.", "Put each class's images in its own folder.")
    samples: list[Sample] = []
    for split in SPLITS:
        folder = folders[split]
        assert folder is not None
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in class_names)
        if unknown:
            raise UserError(
                f"{folder} has class folder(s) {unknown} that are not among the classes {class_names}.",
                "Rename or remove them, or list every class in dataset.classes.",
            )
        for label, name in enumerate(class_names):
            class_folder = folder / name
            if not class_folder.is_dir():
                continue
            for path in sorted(class_folder.rglob("*")):
                if is_image_file(path):
                    sample_id = f"{split}/{name}/{path.relative_to(class_folder).as_posix()}"
                    samples.append(Sample(sample_id=sample_id, path=path, label=label, split=split))
    return samples, class_names

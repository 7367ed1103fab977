"""Build each kind of bad dataset input in a temporary folder and print what fpt says about it.

For each case: the message `fpt extract` stops with (before any LPM work), as `main()` prints
it. Run from the repository root:  python bench/dataset_bad_cases.py
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpt.cache.errors import UserError  # noqa: E402
from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.datasets import images  # noqa: E402
from fpt.stages.datasets.registry import resolve_dataset  # noqa: E402


def image(path: Path, value: int = 100, size: int = 16, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def tree(root: Path) -> Path:
    for n, split in enumerate(("train", "val", "test")):
        for c, name in enumerate(("benign", "malignant")):
            image(root / split / name / f"{split}_{name}.png", 10 * n + c)
    return root


def ddr(root: Path, extra: str = "") -> Path:
    folder = root / "DR_grading"
    for split in ("train", "valid", "test"):
        image(folder / split / f"{split}_1.jpg")
        image(folder / split / f"{split}_2.jpg", 3)
        (folder / f"{split}.txt").write_text(f"{split}_1.jpg 0\n{split}_2.jpg 5\n")
    if extra:
        with open(folder / "train.txt", "a") as handle:
            handle.write(extra)
    return root


def case_missing_root(tmp: Path) -> tuple[str, Path, list[str]]:
    return "folder", tmp / "no_such_folder", []


def case_missing_split(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    (root / "val" / "benign" / "val_benign.png").unlink()
    (root / "val" / "malignant" / "val_malignant.png").unlink()
    (root / "val" / "benign").rmdir()
    (root / "val" / "malignant").rmdir()
    (root / "val").rmdir()
    return "isic2016", root, []


def case_ddr_missing_label_file(tmp: Path) -> tuple[str, Path, list[str]]:
    root = ddr(tmp / "ddr")
    (root / "DR_grading" / "test.txt").unlink()
    return "ddr", root, []


def case_label_names_missing_image(tmp: Path) -> tuple[str, Path, list[str]]:
    return "ddr", ddr(tmp / "ddr", "IMG_0001.jpg 2\n"), []


def case_image_without_label(tmp: Path) -> tuple[str, Path, list[str]]:
    root = ddr(tmp / "ddr")
    image(root / "DR_grading" / "valid" / "unlisted.jpg")
    return "ddr", root, []


def case_image_outside_class_folder(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    image(root / "train" / "loose.png")
    return "isic2016", root, []


def case_label_out_of_range(tmp: Path) -> tuple[str, Path, list[str]]:
    image(tmp / "ddr" / "DR_grading" / "train" / "train_3.jpg")
    return "ddr", ddr(tmp / "ddr", "train_3.jpg 7\n"), []


def case_class_folder_out_of_range(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    image(root / "test" / "2" / "x.png")
    return "isic2016", root, []


def case_csv_label_out_of_range(tmp: Path) -> tuple[str, Path, list[str]]:
    for name in ("a.png", "b.png", "c.png"):
        image(tmp / name)
    (tmp / "labels.csv").write_text("path,label,split\na.png,benign,train\nb.png,malignant,val\nc.png,cancer,test\n")
    return "cmmd", tmp, [f"dataset.csv={tmp / 'labels.csv'}"]


def case_empty_split(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    return "isic2016", root, []


def case_truncated_image(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    path = root / "train" / "benign" / "train_benign.png"
    path.write_bytes(path.read_bytes()[:100])
    (root / "val" / "malignant" / "val_malignant.png").write_text("this is not a PNG")
    return "isic2016", root, []


def case_truncated_image_skipped(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    image(root / "train" / "benign" / "second.png", 7)
    path = root / "train" / "benign" / "train_benign.png"
    path.write_bytes(path.read_bytes()[:100])
    return "isic2016", root, ["extract.on_decode_error=skip"]


def case_too_large(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    images.MAX_DECODED_PIXELS = 100 * 100  # stands in for a 200-Mpx TIFF, without writing one
    image(root / "train" / "benign" / "scan.tif", size=400)
    return "isic2016", root, []


def case_duplicate_names(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    image(root / "train" / "benign" / "same.png", 1)
    image(root / "train" / "malignant" / "same.png", 2)
    image(root / "test" / "benign" / "same.png", 3)
    return "isic2016", root, []


def case_modes(tmp: Path) -> tuple[str, Path, list[str]]:
    root = tree(tmp / "t")
    for mode in ("L", "RGBA", "P", "LA", "CMYK", "1"):
        image(root / "train" / "benign" / f"mode_{mode}.{'jpg' if mode == 'CMYK' else 'png'}", mode=mode)
    Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(root / "train/benign/g16.png")
    return "isic2016", root, []


CASES: list[Callable[[Path], tuple[str, Path, list[str]]]] = [
    case_missing_root, case_missing_split, case_ddr_missing_label_file, case_label_names_missing_image,
    case_image_without_label, case_image_outside_class_folder, case_label_out_of_range,
    case_class_folder_out_of_range, case_csv_label_out_of_range, case_empty_split, case_truncated_image,
    case_truncated_image_skipped, case_too_large, case_duplicate_names, case_modes,
]


def main() -> None:
    for case in CASES:
        limit = images.MAX_DECODED_PIXELS
        with tempfile.TemporaryDirectory() as temp:
            name, root, extra = case(Path(temp))
            config = load_config(None, [f"dataset.path={root}", *extra], name)
            print(f"## {case.__name__.removeprefix('case_')} (dataset {name})")
            try:
                dataset = resolve_dataset(config, show_progress=False)
                print(f"accepted: {len(dataset.samples)} images {dataset.split_counts()}")
                for note in dataset.notes:
                    print(f"note: {note}")
            except UserError as error:
                print(f"Error: {error.paragraph()}")
        images.MAX_DECODED_PIXELS = limit
        print()


if __name__ == "__main__":
    main()

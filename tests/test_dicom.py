"""DICOM inputs: files written here with pydicom decode to the image the DICOM grayscale pipeline defines
(checked against the standard's formulas written out below, not against pydicom), go through folder and
CSV datasets into `fpt extract` and `fpt train-side`, and fail with messages that say what to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid,
)
from tiny import cli_args, tiny_assignments
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.pipeline.cli import app
from fpt.pipeline.config import load_config
from fpt.stages.datasets.csv_table import read_csv_table
from fpt.stages.datasets.dicom import is_dicom
from fpt.stages.datasets.images import ImageDecodeError, open_rgb
from fpt.stages.datasets.layouts import find_images, is_image_file
from fpt.stages.datasets.registry import resolve_dataset


def write_dicom(path: Path, pixels: np.ndarray, interpretation: str, bits_stored: int, **elements) -> Path:
    """A single-frame mammogram file (PS3.10, explicit VR little endian) holding `pixels`, with `elements` set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "MG"
    dataset.set_pixel_data(pixels, interpretation, bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def linear_window(x: np.ndarray, center: float, width: float, y_min: float = 0.0, y_max: float = 255.0) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the LINEAR VOI function: if x <= c - 0.5 - (w-1)/2 then y = y_min; else if
    x > c - 0.5 + (w-1)/2 then y = y_max; else y = ((x - (c - 0.5)) / (w-1) + 0.5) * (y_max - y_min) + y_min."""
    x = x.astype(np.float64)
    ramp = ((x - (center - 0.5)) / (width - 1) + 0.5) * (y_max - y_min) + y_min
    below, above = x <= center - 0.5 - (width - 1) / 2, x > center - 0.5 + (width - 1) / 2
    return np.where(below, y_min, np.where(above, y_max, ramp))


def eight_bits(y: np.ndarray) -> np.ndarray:
    return np.floor(y + 0.5).astype(np.int64)


def grey_of(path: Path) -> np.ndarray:
    """The decoded image's one grey channel, after checking its three channels are equal."""
    rgb = np.asarray(open_rgb(path)).astype(np.int64)
    assert rgb.shape[2] == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def assert_close(decoded: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a rounding tie (one grey level), and exactly equal almost everywhere."""
    difference = np.abs(decoded - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99, (decoded, expected)


RAMP_12_BIT = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit stored value once


# --- decoding -----------------------------------------------------------------------------------

def test_monochrome2_with_rescale_takes_the_first_of_two_windows(tmp_path):
    path = write_dicom(tmp_path / "mg.dcm", RAMP_12_BIT, "MONOCHROME2", 12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=[1000, 40], WindowWidth=[2000, 400])
    modality_values = RAMP_12_BIT * 2.0 - 1024  # PS3.3 C.11.1.1.2: slope * stored + intercept
    expected = eight_bits(linear_window(modality_values, 1000, 2000))
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) > 200  # clipped at both ends
    assert_close(grey_of(path), expected)


def test_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "cr.dcm", RAMP_12_BIT, "MONOCHROME1", 12, WindowCenter=2048, WindowWidth=1024)
    expected = 255 - eight_bits(linear_window(RAMP_12_BIT, 2048, 1024))
    decoded = grey_of(path)
    assert_close(decoded, expected)
    assert decoded[0, 0] == 255 and decoded[-1, -1] == 0  # the lowest stored value is white


def test_without_windowing_the_values_full_range_is_used(tmp_path):
    stored = (np.linspace(100, 3000, 48 * 40).reshape(48, 40)).astype(np.uint16)
    path = write_dicom(tmp_path / "dx.dcm", stored, "MONOCHROME2", 12)
    expected = eight_bits((stored - 100.0) / (3000.0 - 100.0) * 255.0)
    decoded = grey_of(path)
    assert decoded.shape == (48, 40)
    assert_close(decoded, expected)


def test_a_voi_lut_maps_the_values_onto_its_own_range(tmp_path):
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    table = (np.sqrt(np.arange(200) / 199.0) * 4000).astype(np.uint16)  # 200 entries from stored value 20 on
    voi = Dataset()
    voi.LUTDescriptor = [200, 20, 16]
    voi.add_new("LUTData", "US", table.tolist())  # US rather than OW: one of the two VRs the standard allows
    path = write_dicom(tmp_path / "lut.dcm", stored, "MONOCHROME2", 8, VOILUTSequence=[voi],
                       WindowCenter=128, WindowWidth=10)  # the LUT wins over the window (PS3.4 N.2.1.1)
    looked_up = table[np.clip(stored.astype(np.int64) - 20, 0, 199)]  # PS3.3 C.11.2.1.1: clamp to the first/last entry
    expected = eight_bits((looked_up - table.min()) / float(table.max() - table.min()) * 255.0)
    assert_close(grey_of(path), expected)


def test_8_bit_rgb_is_taken_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "photo.dcm", pixels, "RGB", 8)
    assert np.array_equal(np.asarray(open_rgb(path)), pixels)


def test_a_dicom_file_is_known_by_its_content_and_found_by_its_suffix(tmp_path):
    pixels = RAMP_12_BIT[:8, :8]
    plain = write_dicom(tmp_path / "scans" / "1.2.840.9999", pixels, "MONOCHROME2", 12)  # PACS exports: no suffix
    named = write_dicom(tmp_path / "scans" / "b.DICOM", pixels, "MONOCHROME2", 12)
    assert is_dicom(plain) and open_rgb(plain).size == (8, 8)
    assert is_image_file(named) and is_image_file(tmp_path / "scans" / "b.DICOM")
    assert find_images([tmp_path / "scans"]) == [named]  # folders are searched by suffix
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 200)
    with pytest.raises(ImageDecodeError, match="without the 'DICM' marker at byte 128"):
        open_rgb(fake)


def test_multi_frame_files_are_refused_with_the_reason(tmp_path):
    frames = np.stack([RAMP_12_BIT[:8, :8]] * 3)
    path = write_dicom(tmp_path / "dbt.dcm", frames, "MONOCHROME2", 12)
    with pytest.raises(ImageDecodeError, match="multi-frame DICOM \\(3 frames.*save the frame"):
        open_rgb(path)


# --- errors: no pydicom, no decoder -------------------------------------------------------------

def test_missing_pydicom_says_what_to_install(tmp_path, monkeypatch):
    root = dicom_class_tree(tmp_path / "tree")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(UserError) as error:
        open_rgb(next(root.rglob("*.dcm")))
    assert 'pip install "fpt[dicom]"' in error.value.paragraph() and "pydicom" in error.value.paragraph()
    # the command line, in a process where pydicom cannot be imported: one paragraph, even with damaged files skipped
    blocked = ("import runpy, sys; sys.modules['pydicom'] = None; sys.argv[0] = 'fpt'; "
               "runpy.run_module('fpt.pipeline.cli', run_name='__main__')")
    sets = cli_args(tiny_assignments(tmp_path, f"dataset.path={root}", "extract.on_decode_error=skip"))
    result = subprocess.run([sys.executable, "-c", blocked, "extract", "--dataset", "folder", *sets], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 2, result.stderr
    assert 'pip install "fpt[dicom]"' in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not list((tmp_path / "cache").glob("*/zarr.json"))  # stopped before any extraction


def test_pydicom_2_is_refused_with_the_upgrade(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "old.dcm", RAMP_12_BIT[:8, :8], "MONOCHROME2", 12)
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(UserError, match=r"pydicom 3 or later; pydicom 2\.4\.4 is installed.*--upgrade"):
        open_rgb(path)


def test_a_compression_without_a_decoder_names_the_plugins(tmp_path, monkeypatch):
    # as on a machine without the JPEG-LS plugins, whatever this one has installed
    monkeypatch.setattr(type(get_decoder(JPEGLSLossless)), "is_available", property(lambda decoder: False))
    path = write_dicom(tmp_path / "jls.dcm", RAMP_12_BIT[:8, :8], "MONOCHROME2", 12)
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 30 + b"\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError) as error:
        open_rgb(path)
    reason = error.value.reason
    assert "compressed as JPEG-LS Lossless" in reason and "pip install" in reason and "pylibjpeg" in reason
    assert "\n" not in reason


# --- through extract and train-side --------------------------------------------------------------

def mammogram(index: int, label: int) -> np.ndarray:
    """A 12-bit 48 x 48 image whose class shows as a bright square."""
    rng = np.random.default_rng(index)
    pixels = rng.integers(200, 1800, (48, 48)).astype(np.uint16)
    if label:
        pixels[16:32, 16:32] = 3800
    return pixels


def write_case(path: Path, index: int, label: int) -> Path:
    """Every fourth file each of: windowed with rescale, MONOCHROME1, no window, 8-bit RGB."""
    pixels = mammogram(index, label)
    kind = index % 4
    if kind == 0:
        return write_dicom(path, pixels, "MONOCHROME2", 12, RescaleSlope=1, RescaleIntercept=-100,
                           WindowCenter=1900, WindowWidth=3800)
    if kind == 1:
        return write_dicom(path, 4095 - pixels, "MONOCHROME1", 12, WindowCenter=2048, WindowWidth=4096)
    if kind == 2:
        return write_dicom(path, pixels, "MONOCHROME2", 12)
    return write_dicom(path, np.repeat((pixels >> 4).astype(np.uint8)[:, :, None], 3, axis=2), "RGB", 8)


def dicom_class_tree(root: Path) -> Path:
    index = 0
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for label, name in enumerate(("benign", "malignant")):
            for _ in range(count):
                write_case(root / split / name / f"{index:03d}.dcm", index, label)
                index += 1
    return root


def extract_and_train(tmp_path: Path, dataset: str, *settings: str) -> dict:
    sets = cli_args(tiny_assignments(tmp_path, *settings, "extract.side_store_size=40", "side.input_size=32"))
    runner = CliRunner()
    extracted = runner.invoke(app, ["extract", "--dataset", dataset, "--quiet", *sets], env={"COLUMNS": "300"})
    assert extracted.exit_code == 0, extracted.output
    trained = runner.invoke(app, ["train-side", "--from-cache", "--dataset", dataset, "--quiet", *sets],
                            env={"COLUMNS": "300"})
    assert trained.exit_code == 0, trained.output
    run_dir = next((tmp_path / "runs").iterdir())
    return json.loads((run_dir / "final_metrics.json").read_text())


def test_folder_of_dicom_files_extracts_and_trains(tmp_path):
    root = dicom_class_tree(tmp_path / "mammo")
    dataset = resolve_dataset(load_config(None, tiny_assignments(tmp_path, f"dataset.path={root}"), "folder"),
                              show_progress=False)
    assert len(dataset.samples) == 16 and dataset.skipped == []
    assert dataset.mean is not None and 0.05 < dataset.mean[0] < 0.95  # `auto` statistics from the decoded DICOM pixels
    metrics = extract_and_train(tmp_path, "folder", f"dataset.path={root}")
    assert "accuracy" in metrics["test_best"]


def test_csv_of_dicom_files_without_suffixes_extracts_and_trains(tmp_path):
    root = tmp_path / "xray"
    rows = []
    for index in range(20):
        label = index % 2
        write_case(root / "scans" / f"1.2.826.0.{index}", index, label)
        rows.append(f"scans/1.2.826.0.{index},{('normal', 'effusion')[label]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")  # no header: the first row names a file
    assert len(read_csv_table(root / "labels.csv", None, 0.2, 0.2, 0).samples) == 20  # the first row is not a header
    metrics = extract_and_train(tmp_path, "csv", f"dataset.path={root}", "dataset.val_fraction=0.2",
                                "dataset.test_fraction=0.2")
    assert "accuracy" in metrics["test_best"]
    run_dir = next((tmp_path / "runs").iterdir())
    predictions = (run_dir / "predictions_test_best.csv").read_text().splitlines()
    assert len(predictions) == 1 + 4  # every row kept, the first one too

"""Reading a DICOM file (mammograms, radiographs) as the 8-bit RGB picture the rest of fpt uses.

A DICOM file is recognised by its content, the `DICM` marker at byte 128 (PS3.10 7.1), whatever it
is called; folders are searched for the suffixes in DICOM_SUFFIXES. pydicom (>= 3.0, the optional
extra `fpt[dicom]`) decodes the pixel data; this module turns the stored values into what a viewer
shows, in the order of the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1.1):

1. the modality LUT: Rescale Slope and Intercept, or a Modality LUT Sequence;
2. the VOI: the VOI LUT Sequence's first LUT when there is one, else the first Window Center/Width
   (several windows are alternative views, the first is the one the modality suggests first), with
   the window function the file names (LINEAR by default, PS3.3 C.11.2.1.2); without either, the
   full range of the image's own values (its minimum to its maximum);
3. MONOCHROME1 (white is the lowest value) is inverted; its Presentation LUT Shape, INVERSE, states
   that same inversion and is not applied a second time;
4. the result is scaled to 0..255 and repeated in three channels.

Colour files (RGB and the YBR_* interpretations, which pydicom 3 returns as RGB) are used as decoded,
a 16-bit one scaled from its Bits Stored. Multi-frame files (tomosynthesis, cine loops) are refused:
no single frame stands for the image, so the user picks one and saves it as its own file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fpt.cache.errors import UserError

if TYPE_CHECKING:
    from pydicom import Dataset

DICOM_SUFFIXES = {".dcm", ".dicom"}
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128  # after the 128-byte preamble
INSTALL_EXTRA = 'pip install "fpt[dicom]"'
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")


class UnreadableDicom(Exception):
    """A DICOM file whose image fpt cannot use; the message is the reason."""


def is_dicom(path: Path) -> bool:
    """Whether the file is a DICOM file (PS3.10), by the `DICM` marker after its preamble."""
    try:
        with open(path, "rb") as handle:
            return handle.read(DICOM_MAGIC_OFFSET + 4)[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC
    except OSError:
        return False


def require_pydicom(path: Path) -> None:
    """A UserError naming the extra to install when pydicom (>= 3), the optional dependency that reads DICOM, is
    missing or too old.

    Missing pydicom is a setup problem, never a property of one file, so it is not an UnreadableDicom
    (which `extract.on_decode_error=skip` would turn into every DICOM file silently left out)."""
    try:
        import pydicom  # optional: the extra fpt[dicom]
    except ImportError:
        raise UserError(
            f"{path} is a DICOM file, and reading DICOM needs pydicom, which is not installed.",
            f"Install fpt's DICOM extra ({INSTALL_EXTRA}) and run again.",
        ) from None
    if int(pydicom.__version__.split(".")[0]) < 3:
        raise UserError(
            f"{path} is a DICOM file, and reading DICOM needs pydicom 3 or later; pydicom {pydicom.__version__} "
            "is installed.",
            f"Upgrade it ({INSTALL_EXTRA} --upgrade) and run again.",
        )


def read_dicom(path: Path) -> Dataset:
    """The file's pydicom Dataset (header and still-encoded pixel data), checked to hold one image fpt can decode."""
    require_pydicom(path)
    from pydicom import dcmread

    try:
        dataset = dcmread(path)
    except Exception as error:  # a damaged file can make the parser fail in many ways; all mean the same
        raise UnreadableDicom(f"cannot read DICOM file ({error})") from None
    if "PixelData" not in dataset:
        kind = dataset.get("Modality", "") or "DICOM"
        raise UnreadableDicom(f"the {kind} file holds no image (no Pixel Data element: a report or a document?)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnreadableDicom(
            f"multi-frame DICOM ({frames} frames: tomosynthesis, a cine loop or a stack), and fpt classifies single "
            "images; save the frame that stands for the image as its own file"
        )
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if interpretation not in GREY + COLOUR:
        raise UnreadableDicom(
            f"Photometric Interpretation {interpretation or '(missing)'} is not one fpt reads "
            f"({', '.join(GREY + COLOUR)}); convert the file to one of them or to PNG"
        )
    check_decoder(dataset)
    return dataset


def check_decoder(dataset: Dataset) -> None:
    """An UnreadableDicom naming the packages to install when the file's compression has no decoder here."""
    from pydicom.pixels import get_decoder

    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return  # pydicom reads it as implicit little endian, which needs no plugin
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnreadableDicom(f"pydicom has no decoder for its transfer syntax {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise UnreadableDicom(
            f"its pixel data is compressed as {syntax.name} ({syntax}), and no decoder for it is installed: "
            f"install one of the plugins pydicom lists for it ({options}), e.g. pip install pylibjpeg "
            "pylibjpeg-libjpeg pylibjpeg-openjpeg, or convert the file to uncompressed DICOM or PNG"
        )


def decoded_pixels(dataset: Dataset) -> np.ndarray:
    """The stored values as pydicom decodes them: (rows, columns) for grey, (rows, columns, 3) RGB for colour."""
    try:
        return dataset.pixel_array
    except Exception as error:  # truncated data, inconsistent attributes, a plugin's own errors
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableDicom(f"cannot decode its pixel data ({first_line})") from None


def to_eight_bits(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` from low (black) to high (white) as uint8; a flat image (high <= low) is black."""
    values = values.astype(np.float64)
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def has_voi_lut(dataset: Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def grey_values(dataset: Dataset, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The presentation values of a grey image and the (black, white) values of their range: steps 1 and 2."""
    from pydicom.pixels import processing

    values = processing.apply_modality_lut(stored, dataset)
    if has_voi_lut(dataset):
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        descriptor = dataset.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        table = processing.apply_voi(np.arange(first, first + entries), dataset)
        return processing.apply_voi(values, dataset), float(table.min()), float(table.max())
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        try:
            windowed = processing.apply_windowing(values, dataset, 0)
            # pydicom's output range (y_min, y_max): what the window gives far below and far above it
            low, high = processing.apply_windowing(np.array([-np.inf, np.inf]), dataset, 0)
        except ValueError as error:
            raise UnreadableDicom(f"its window cannot be applied ({error})") from None
        return windowed, float(low), float(high)
    return values, float(values.min()), float(values.max())


def dicom_rgb(dataset: Dataset) -> np.ndarray:
    """The image of a Dataset from read_dicom as (rows, columns, 3) uint8 RGB."""
    stored = decoded_pixels(dataset)
    interpretation = str(dataset.PhotometricInterpretation)
    if interpretation in COLOUR:
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise UnreadableDicom(f"a {interpretation} image has 3 samples per pixel, this one's shape is {stored.shape}")
        if stored.dtype == np.uint8:
            return np.ascontiguousarray(stored)
        return to_eight_bits(stored, 0.0, float(2 ** int(dataset.BitsStored) - 1))
    if stored.ndim != 2:
        raise UnreadableDicom(f"a {interpretation} image should have 1 sample per pixel, it has shape {stored.shape}")
    values, low, high = grey_values(dataset, stored)
    grey = to_eight_bits(values, low, high)
    if interpretation == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2)

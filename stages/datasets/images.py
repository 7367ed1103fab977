"""Decoding one image file and turning it into the LPM input and the stored side image.

Size policy: PIL's decompression-bomb check looks at the size in the file header, which
would refuse a huge JPEG that `draft` decodes at 1/2, 1/4 or 1/8 scale anyway. fpt turns
that check off and applies its own limit to the size actually decoded (after draft):
MAX_DECODED_PIXELS, PIL's own hard limit (2 x 89.5 Mpx, about 540 MB as RGB). Larger images
fail with an ImageDecodeError (fatal or skipped, as extract.on_decode_error says).

A DICOM file (known by its content, whatever its name) is read by dicom.py into the same 8-bit RGB
image; a missing pydicom raises a UserError, since it is a setup problem and not the file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from fpt.stages.datasets.dicom import DICOM_SUFFIXES, UnreadableDicom, dicom_rgb, is_dicom, read_dicom

# extract.resize: how the LPM input and the stored side image are resized. PIL's filters widen with
# the scale when shrinking, so both are antialiased; bilinear is the published preprocessing (docs/method.md).
RESIZE_FILTERS = {"pil-bilinear": Image.Resampling.BILINEAR, "pil-bicubic": Image.Resampling.BICUBIC}
MAX_DECODED_PIXELS = 2 * 89_478_485
ORIENTATION_TAG = 0x0112
Image.MAX_IMAGE_PIXELS = None  # replaced by the check on the decoded size in open_rgb
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


class ImageDecodeError(Exception):
    """An image file could not be decoded; carries the path and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def integer_full_scale(array: np.ndarray) -> float:
    """The white level of single-channel integer data: 8-, 12- or 16-bit, judged by its maximum.

    Medical 16-bit files often hold 12-bit data (0..4095); scaling those by 65535 would leave
    16 grey levels after the cast to 8 bits. Data that fits 8 bits stays as it is.
    """
    peak = float(array.max()) if array.size else 0.0
    for full_scale in (255.0, 4095.0, 65535.0):
        if peak <= full_scale:
            return full_scale
    return peak


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, I;16, I, F, RGBA, LA, P, PA, CMYK, YCbCr...) to 8-bit RGB.

    Integer grey images (I;16*, I) are scaled from 0..white level to 0..255 (see
    integer_full_scale; negative values clip to black); float images (F) are taken as 0..1
    when they lie in it, otherwise stretched from their min to their max. Transparent pixels
    are composited onto black, the usual background of medical photographs.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image).astype(np.float64)
        if image.mode == "F" and not (array.min() >= 0 and array.max() <= 1):
            low, high = float(array.min()), float(array.max())
        elif image.mode == "F":
            low, high = 0.0, 1.0
        else:
            low, high = 0.0, integer_full_scale(array)
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def is_jpeg(path: Path) -> bool:
    """Whether the file is a JPEG, by its first bytes (the SOI marker), whatever its name says."""
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def lpm_draft_size(input_size: int, jpeg_draft: int | None) -> int | None:
    """The size `open_rgb` may decode a JPEG down to for an LPM input of `input_size` (extract.jpeg_draft)."""
    return input_size * jpeg_draft if jpeg_draft else None


def check_decoded_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_DECODED_PIXELS:
        raise ImageDecodeError(
            path,
            f"image is {width} x {height} = {width * height:,} pixels, more than the "
            f"{MAX_DECODED_PIXELS:,} fpt decodes; save a downscaled copy "
            "(or a JPEG, which is decoded at reduced scale)",
        )


def open_dicom_rgb(path: Path) -> Image.Image:
    """A DICOM file's image as 8-bit RGB (dicom.py: modality LUT, VOI window or LUT, MONOCHROME1 inverted)."""
    try:
        dataset = read_dicom(path)
        check_decoded_size(path, int(dataset.Columns), int(dataset.Rows))
        return Image.fromarray(dicom_rgb(dataset), mode="RGB")
    except UnreadableDicom as error:
        raise ImageDecodeError(path, str(error)) from None


def open_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB; `draft_size` lets a JPEG decode at the largest reduced scale
    that keeps it at least draft_size pixels on each side. A DICOM file is always decoded whole; without
    pydicom it raises a UserError that says what to install."""
    if is_dicom(path):
        return open_dicom_rgb(path)
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            check_decoded_size(path, *image.size)
            image.load()
            if image.getexif().get(ORIENTATION_TAG, 1) != 1:
                return to_rgb(ImageOps.exif_transpose(image))
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise ImageDecodeError(
                path, "named as a DICOM file but without the 'DICM' marker at byte 128 that a DICOM file "
                "(PS3.10) carries; re-export it from the PACS or viewer as a DICOM Part 10 file",
            ) from None
        raise ImageDecodeError(path, f"cannot decode image ({error})") from None


def resize_square(image: Image.Image, size: int, method: str = "pil-bilinear") -> Image.Image:
    """`image` resized to size x size (the aspect is not kept, as published) with `method` (RESIZE_FILTERS)."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), RESIZE_FILTERS[method])


def normalized_tensor(
    image: Image.Image, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """HWC uint8 RGB -> CHW float32 normalised with the dataset's mean and std."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (array - mean_t) / std_t


def side_image(image: Image.Image, stored_size: int, method: str = "pil-bilinear") -> np.ndarray:
    """The side network's image as stored in the cache: stored_size x stored_size x 3 uint8."""
    return np.asarray(resize_square(image, stored_size, method), dtype=np.uint8).copy()

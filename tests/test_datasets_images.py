"""Image decoding: every PIL mode to correct 8-bit RGB, broken files, and very large images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fpt.stages.datasets import images
from fpt.stages.datasets.images import ImageDecodeError, open_rgb, to_rgb


def rgb(image: Image.Image) -> np.ndarray:
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    return np.asarray(converted).astype(int)


def grey_as_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(values).astype(int)[..., None], 3, axis=-1)


def test_grayscale_becomes_three_equal_channels():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(rgb(Image.fromarray(values)), grey_as_rgb(values))


def test_sixteen_bit_uses_the_full_range(tmp_path):
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "g16.png")
    decoded = open_rgb(tmp_path / "g16.png")
    assert np.abs(np.asarray(decoded).astype(int) - grey_as_rgb(values / 257.0)).max() <= 1
    assert np.asarray(decoded).max() == 255


def test_twelve_bit_data_in_sixteen_bit_files_keeps_its_contrast(tmp_path):
    values = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "g12.png")
    decoded = np.asarray(open_rgb(tmp_path / "g12.png")).astype(int)
    assert np.abs(decoded - grey_as_rgb(values.astype(float) * 255 / 4095)).max() <= 1
    assert len(np.unique(decoded)) == 64  # 64 grey levels survive, not 4


def test_rgba_is_composited_on_black():
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., :3] = (200, 100, 50)
    pixels[..., 3] = np.array([0, 85, 170, 255])[None, :]
    expected = np.array([200, 100, 50])[None, None, :] * (pixels[..., 3:4] / 255.0)
    assert np.abs(rgb(Image.fromarray(pixels, "RGBA")) - expected).max() <= 1


def test_palette_images_use_their_palette_and_transparency():
    palette = [10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6)
    indices = np.array([[0, 1], [1, 0]], np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    assert np.array_equal(rgb(image)[0, 0], [10, 20, 30]) and np.array_equal(rgb(image)[0, 1], [200, 150, 100])
    image.info["transparency"] = 1
    assert np.array_equal(rgb(image)[0, 1], [0, 0, 0]) and np.array_equal(rgb(image)[0, 0], [10, 20, 30])


def test_grey_alpha_and_bilevel():
    la = Image.fromarray(np.dstack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 255, np.uint8)]), "LA")
    assert np.array_equal(rgb(la), np.full((2, 2, 3), 200))
    bilevel = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    assert np.array_equal(rgb(bilevel)[..., 0], [[0, 255], [255, 0]])


def test_truncated_and_unreadable_files_raise_decode_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpeg = tmp_path / "good.jpg"
    Image.open(good).save(jpeg, quality=95)
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    text = tmp_path / "text.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, truncated_jpeg, text, empty):
        with pytest.raises(ImageDecodeError) as error:
            open_rgb(path, draft_size=32)
        assert error.value.path == path and "cannot decode" in error.value.reason
    with pytest.raises(ImageDecodeError, match="file not found"):
        open_rgb(tmp_path / "absent.png")


def test_huge_jpeg_beyond_pils_bomb_limit_decodes_at_reduced_scale(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (14000, 13000), 90).save(path, quality=30)  # 182 Mpx: PIL's default check refuses it
    decoded = open_rgb(path, draft_size=64)
    assert decoded.size == (1750, 1625)  # decoded at 1/8 scale, about 8.5 MB instead of 546 MB
    assert np.asarray(decoded)[::100, ::100].min() >= 88


def test_images_over_the_decoded_pixel_limit_are_refused_unless_draft_brings_them_under(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 100 * 100)
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "big.png")
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "big.jpg")
    with pytest.raises(ImageDecodeError, match="200 x 200"):
        open_rgb(tmp_path / "big.png", draft_size=32)
    with pytest.raises(ImageDecodeError, match="200 x 200"):
        open_rgb(tmp_path / "big.jpg")  # no draft asked for: full size
    assert open_rgb(tmp_path / "big.jpg", draft_size=32).size == (50, 50)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    image.save(tmp_path / "rotated.png", exif=exif)
    decoded = open_rgb(tmp_path / "rotated.png")
    assert decoded.size == (2, 4)
    assert np.asarray(decoded)[0, 1].tolist() == [255, 255, 255]

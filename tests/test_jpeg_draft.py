"""extract.jpeg_draft: a JPEG is decoded at reduced scale only as far as leaves the LPM input within the
JPEG's own compression noise, and the margin is part of the key of stores whose images are JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tiny import TINY

from fpt.cache.reader import read_metadata
from fpt.pipeline.config import load_config
from fpt.stages.core.settings import DemoConfig
from fpt.stages.datasets.demo import generate_demo, render_image
from fpt.stages.datasets.samples import Sample
from fpt.stages.extract.run import ExtractionImages, run_extract

INPUT = 256


def _lpm_input_levels(path: Path, jpeg_draft: int | None) -> np.ndarray:
    """fpt's LPM input for the file, in 8-bit levels (mean 0, std 1/255 undo the normalisation)."""
    sample = [Sample(sample_id=path.name, path=path, label=0, split="train")]
    _, tensor, _, error = ExtractionImages(sample, [0], INPUT, 40, (0.0, 0.0, 0.0), (1 / 255,) * 3, "pil-bilinear",
                                           jpeg_draft)[0]
    assert not error
    return tensor.permute(1, 2, 0).numpy().astype(np.float64)


def _reference_levels(path: Path) -> np.ndarray:
    """Every pixel decoded by PIL, then the published antialiased bilinear resize."""
    image = Image.open(path).convert("RGB").resize((INPUT, INPUT), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64)


def test_the_draft_margin_keeps_the_lpm_input_within_the_jpegs_own_noise(tmp_path: Path) -> None:
    pixels = render_image(1, 1024, np.random.default_rng(5))  # fine lesions and striations, as a fundus photo
    lossless, jpeg = tmp_path / "fundus.png", tmp_path / "fundus.jpg"
    Image.fromarray(pixels).save(lossless)
    Image.fromarray(pixels).save(jpeg, quality=95)
    full = _reference_levels(jpeg)
    own_noise = np.abs(full - _reference_levels(lossless))  # what the JPEG compression itself changed

    assert np.allclose(_lpm_input_levels(jpeg, 0), full, atol=1e-3)  # 0: every pixel decoded
    drafted = np.abs(_lpm_input_levels(jpeg, 2) - full)
    assert drafted.max() > 0  # decoded at reduced scale (1/2: 512 px, twice the input)
    assert drafted.mean() <= 1.5 * own_noise.mean()
    assert np.percentile(drafted, 99.9) <= 2 * np.percentile(own_noise, 99.9)
    # a margin of 1 decodes straight to the input size: several times the JPEG's own change
    assert np.abs(_lpm_input_levels(jpeg, 1) - full).mean() > 2 * own_noise.mean()


def _as_jpegs(png_tree: Path, jpeg_tree: Path) -> None:
    for png in png_tree.rglob("*.png"):
        target = jpeg_tree / png.relative_to(png_tree).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(target, quality=95)


def test_the_margin_splits_stores_of_jpegs_only(tmp_path: Path) -> None:
    pngs, jpegs = tmp_path / "pngs", tmp_path / "jpegs"
    generate_demo(pngs, DemoConfig(num_train=12, num_val=6, num_test=6, image_size=128), show_progress=False)
    _as_jpegs(pngs, jpegs)

    def extract(images: Path, *extra: str):
        sets = [*TINY, "dataset.name=folder", f"dataset.path={images}", f"cache.root={tmp_path / 'cache'}",
                "dataset.normalization=imagenet", *extra]
        return run_extract(load_config(None, sets), show_progress=False)

    png_default, png_other = extract(pngs), extract(pngs, "extract.jpeg_draft=0")
    assert png_other.reused and png_other.path == png_default.path  # no JPEG: nothing to decode differently
    assert png_default.metadata.extraction.jpeg_draft is None
    assert "jpeg_draft" not in (png_default.path / "zarr.json").read_text()

    jpeg_default, jpeg_full = extract(jpegs), extract(jpegs, "extract.jpeg_draft=0")
    assert not jpeg_full.reused and jpeg_full.path != jpeg_default.path
    assert read_metadata(jpeg_default.path).extraction.jpeg_draft == 2
    assert read_metadata(jpeg_full.path).extraction.jpeg_draft == 0

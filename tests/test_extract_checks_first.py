"""Settings the LPM cannot serve, and a cache root that cannot be written, are refused before the
image scan (which decodes every image: minutes on DDR)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import tiny_config

import fpt.stages.extract.run
from fpt.cache.errors import UserError
from fpt.stages.extract.run import run_extract


@pytest.fixture
def no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def scan(*args, **kwargs):
        raise AssertionError("the image scan ran before the settings were checked")

    monkeypatch.setattr(fpt.stages.extract.run, "resolve_dataset", scan)


@pytest.mark.parametrize("setting, expected", [
    ("extract.layers=[6,20]", "extract.layers asks for layer 20 but vit_tiny_patch16_224 has 12 blocks"),
    ("extract.input_size=72", "extract.input_size 72 is not a multiple of the LPM's patch size 16"),
    ("side.reduction=5", "side.reduction 5 does not divide the LPM width 192"),
    ("side.reduction=3", "the side width 64 (LPM width 192 / side.reduction 3) is not divisible by the LPM's 3 heads"),
    ("side.prompt_reduction=4", "side.prompt_reduction other than 1 needs side.prompt_projection=true"),
    ("side.input_size=40", "side.input_size 40 is not a multiple of the LPM's patch size 16"),
])
def test_settings_the_lpm_cannot_serve_are_refused_before_the_scan(tmp_path: Path, no_scan: None, setting: str,
                                                                   expected: str) -> None:
    with pytest.raises(UserError) as refused:
        run_extract(tiny_config(tmp_path, setting), show_progress=False)
    assert expected in refused.value.paragraph()
    assert not (tmp_path / "cache").exists()


def test_a_cache_root_that_cannot_be_written_is_refused_before_the_scan(tmp_path: Path, no_scan: None) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache root's parent should be")
    with pytest.raises(UserError) as refused:
        run_extract(tiny_config(tmp_path, f"cache.root={blocker / 'cache'}"), show_progress=False)
    message = refused.value.paragraph()
    assert f"The folder {blocker / 'cache'} (cache.root) cannot be written (in {blocker})" in message
    assert "Set cache.root to a folder you can write to" in message


def test_a_gpu_asked_for_on_a_machine_without_one_is_refused_before_the_scan(tmp_path: Path, no_scan: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(UserError) as refused:
        run_extract(tiny_config(tmp_path, "extract.device=cuda"), show_progress=False)
    assert "no CUDA GPU is available" in refused.value.paragraph()


def test_the_lpm_input_is_resized_as_published_and_the_method_is_part_of_the_key(tmp_path: Path) -> None:
    """PIL's antialiased bilinear resize by default (docs/method.md); bicubic on request, in another store."""
    import numpy as np
    from PIL import Image

    from fpt.stages.datasets.samples import Sample
    from fpt.stages.extract.run import ExtractionImages

    rng = np.random.default_rng(0)
    path = tmp_path / "image.png"
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path)
    sample = [Sample(sample_id="image.png", path=path, label=0, split="train")]
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    for method, pil_filter in (("pil-bilinear", Image.Resampling.BILINEAR), ("pil-bicubic", Image.Resampling.BICUBIC)):
        _, lpm_input, side, _ = ExtractionImages(sample, [0], 64, 40, zero, one, method, None)[0]
        expected = np.asarray(Image.open(path).convert("RGB").resize((64, 64), pil_filter), dtype=np.float32) / 255
        assert np.allclose(lpm_input.permute(1, 2, 0).numpy(), expected, atol=1e-6), method
        assert side.shape == (40, 40, 3)
    bilinear = run_extract(tiny_config(tmp_path), show_progress=False)
    bicubic = run_extract(tiny_config(tmp_path, "extract.resize=pil-bicubic"), show_progress=False)
    assert bilinear.metadata.extraction.resize == "pil-bilinear" and bicubic.metadata.extraction.resize == "pil-bicubic"
    assert bilinear.path != bicubic.path

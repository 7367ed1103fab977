"""Both stages on a small demo: train-side never touches the LPM or the images, and learns."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
import timm
from tiny import LARGER, REPO, tiny_assignments

from fpt.pipeline.config import load_config
from fpt.stages.extract.run import run_extract
from fpt.stages.train.train_side import train_side


def forbid(*args, **kwargs):
    raise AssertionError("stage two must not build a timm model or open an image file")


def test_extract_then_train_from_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = load_config(REPO / "pipeline.yaml", tiny_assignments(tmp_path, *LARGER) + ["train.epochs=8", "train.lr=2e-3",
                         "side.fusion_dropout=0.0", "train.augment.crop_scale=[1.0,1.0]"], dataset="demo")
    extracted = run_extract(config, show_progress=False)
    meta = extracted.metadata
    assert meta.complete and meta.num_samples == 48
    assert meta.split_counts == {"train": 24, "val": 12, "test": 12}
    # 64 px / patch 16 -> 16 patches + CLS = 17 tokens; floor(17 * 0.2) = 3 kept per head
    assert meta.feature_shape == (6, 3, 3, 64)
    assert meta.lpm.weights_identity == "random:0"

    monkeypatch.setattr(timm, "create_model", forbid)
    monkeypatch.setattr(PIL.Image, "open", forbid)
    result = train_side(config, show_progress=False)

    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 8
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.05
    for name in ("config.yaml", "run.json", "final_metrics.json", "checkpoints/best.safetensors",
                 "checkpoints/last.safetensors", "predictions_test_best.csv"):
        assert (result.run_dir / name).is_file(), name
    final = json.loads((result.run_dir / "final_metrics.json").read_text())
    assert set(final["test_best"]) >= {"accuracy", "macro_f1", "auc", "precision", "recall", "kappa"}
    assert len((result.run_dir / "predictions_test_best.csv").read_text().splitlines()) == 1 + 12


def test_second_extract_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = load_config(REPO / "pipeline.yaml", tiny_assignments(tmp_path, *LARGER), dataset="demo")
    first = run_extract(config, show_progress=False)
    assert not first.reused and first.computed_samples == 48
    second = run_extract(config, show_progress=False)
    assert second.reused and second.computed_samples == 0 and second.path == first.path

"""A training run's folder: resolved config, per-epoch metrics, final metrics, checkpoints.

    <runs_root>/<run name>/
        config.yaml              the resolved configuration of the run (`--config` it to repeat the run)
        run.json                 the cache it trained from, the model spec, the device and torch threads
        metrics.jsonl            one JSON line per epoch
        final_metrics.json       test metrics of the best-validation and the final model, with 95 % intervals
        predictions_<split>_<which>.csv  per-sample class probabilities
        checkpoints/best.safetensors, checkpoints/last.safetensors
Every file is written to a temporary name and renamed (stages/core/files.py), so a crash never leaves
half a file.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from fpt.stages.core.files import atomic_write_text, replacing
from fpt.stages.core.settings import PipelineConfig, config_to_yaml


def new_run_dir(config: PipelineConfig, tag: str) -> Path:
    name = config.train.run_name or f"{config.dataset.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-{tag}"
    path = config.train.runs_root / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = config.train.runs_root / f"{name}-{suffix}"
    (path / "checkpoints").mkdir(parents=True)
    return path


def write_config(run_dir: Path, config: PipelineConfig) -> None:
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))


def save_checkpoint(path: Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    save_tensors(path, model.state_dict(), metadata)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(path)))


def write_predictions(path: Path, sample_ids: list[str], labels: np.ndarray, probabilities: np.ndarray,
                      class_names: list[str]) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label", "predicted", *[f"p_{name}" for name in class_names]])
        for sample_id, label, probs in zip(sample_ids, labels, probabilities):
            writer.writerow([sample_id, int(label), int(probs.argmax()), *[f"{p:.6f}" for p in probs]])


class SplitPredictions(BaseModel):
    """One predictions CSV: the sample ids, true labels and class probabilities of a split."""

    split: str
    which: str
    class_names: list[str]
    labels: list[int]
    probabilities: list[list[float]]
    sample_ids: list[str] = []


def read_predictions(path: Path) -> SplitPredictions:
    """predictions_<split>_<which>.csv (sample_id, label, predicted, p_<class>...)."""
    _, split, which = path.stem.split("_", 2)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    class_names = [name[2:] for name in header[3:]]
    return SplitPredictions(
        split=split, which=which, class_names=class_names, sample_ids=[row[0] for row in body],
        labels=[int(row[1]) for row in body],
        probabilities=[[float(x) for x in row[3:]] for row in body],
    )

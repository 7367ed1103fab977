"""Opening a finished training run: what it trained from, and its model at a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ValidationError

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata, Normalization
from fpt.cache.reader import read_metadata
from fpt.stages.core.settings import PipelineConfig, run_settings
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.runs.run_folder import load_checkpoint

Checkpoint = Literal["best", "last"]


class RunRecord(BaseModel):
    """run.json: written by train-side when the run starts."""

    cache: Path
    cache_key: str
    dataset: str | None = None  # the dataset's name and where its images came from (None where not recorded)
    dataset_source: str | None = None
    label_table: str | None = None  # the sha256 of the label table it trained on (a store of format 4)
    model_spec: ModelSpec
    class_names: list[str]
    normalization: Normalization
    learnable_params: int | None = None
    lr: float | None = None
    device: str | None = None  # this and the next two: None where run.json does not record them
    torch_threads: int | None = None
    torch_version: str | None = None
    precision: Literal["fp32", "bf16"] | None = None  # training forward's arithmetic; None where not recorded: fp32


def read_run(run_dir: Path) -> RunRecord:
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a training run folder (it has no run.json).",
            "Give the folder that `fpt train-side` printed at its end (under train.runs_root).",
        )
    try:
        return RunRecord.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as error:
        raise UserError(f"The run record {path} is damaged ({error}).", "Train the run again.") from None


def run_config(run_dir: Path, assignments: list[str] | None = None) -> PipelineConfig:
    """The run's own resolved configuration, with optional --set overrides on top."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"The run folder {run_dir} has no config.yaml.", "Train the run again with `fpt train-side`.")
    # the file's own values, as they are: a resolved configuration already holds its dataset's overrides
    return run_settings(path, assignments)


def run_cache_metadata(run: RunRecord, cache_override: Path | None = None) -> tuple[Path, CacheMetadata]:
    """The cache the run trained from, checked to be the same cache (same key)."""
    path = cache_override if cache_override is not None else run.cache
    if not path.exists():
        raise UserError(
            f"The cache this run was trained from, {path}, no longer exists.",
            "Pass --cache with the path of the same cache if it was moved, or run `fpt extract` with the "
            "run's settings again (the same settings give the same cache key).",
        )
    metadata = read_metadata(path, run.label_table)
    if metadata.cache_key != run.cache_key:
        raise UserError(
            f"The cache at {path} has key {metadata.cache_key[:16]} but the run was trained from a cache with key "
            f"{run.cache_key[:16]}.",
            "Give the cache the run was trained from (its key is in run.json).",
        )
    return path, metadata


def checkpoint_path(run_dir: Path, which: Checkpoint) -> Path:
    path = run_dir / "checkpoints" / f"{which}.safetensors"
    if not path.is_file():
        raise UserError(
            f"The run {run_dir} has no {which} checkpoint ({path}); its training did not finish.",
            "Use --checkpoint best if that one exists, or train the run again.",
        )
    return path


def load_run_model(run_dir: Path, run: RunRecord, which: Checkpoint, device: torch.device) -> FPTPlus:
    model = FPTPlus(run.model_spec)
    load_checkpoint(checkpoint_path(run_dir, which), model)
    return model.to(device).eval()

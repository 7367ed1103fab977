"""`fpt predict`: classify new images with a trained run, or with a model export alone.

The images go through the frozen LPM the run's cache was made with, checked by identity, with the
cache's extraction settings (stages/extract/frozen_lpm.py), so a test image gives the probabilities
train-side computed from the cache.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from fpt.cache.errors import UserError
from fpt.cache.metadata import LPMIdentity
from fpt.cache.progress import open_progress
from fpt.stages.core.devices import resolve_device
from fpt.stages.core.files import replacing, writable_folder
from fpt.stages.core.settings import LPMConfig, PipelineConfig
from fpt.stages.datasets.layouts import find_images
from fpt.stages.extract.frozen_lpm import StageOne, frozen_selector, image_features
from fpt.stages.model.fpt_model import FPTPlus
from fpt.stages.model.side_input import eval_images
from fpt.stages.runs.export import load_exported
from fpt.stages.runs.trained_run import Checkpoint, load_run_model, read_run, run_cache_metadata, run_config


class Prediction(BaseModel):
    file: str
    predicted: str
    predicted_index: int
    probabilities: list[float]


@torch.no_grad()
def predict_images(
    run_dir: Path, inputs: list[Path], checkpoint: Checkpoint = "best", assignments: list[str] | None = None,
    cache: Path | None = None, show_progress: bool = True,
) -> list[Prediction]:
    """Classify images with a run's model; the run's cache gives the LPM's identity and extraction settings."""
    run = read_run(run_dir)
    config = run_config(run_dir, assignments)
    _, metadata = run_cache_metadata(run, cache)
    files = find_images(inputs)
    device = resolve_device(config.extract.device)
    model = load_run_model(run_dir, run, checkpoint, device)
    return _predict(files, config, StageOne.of_cache(metadata), model, run.class_names, device, show_progress)


@torch.no_grad()
def predict_with_export(export: Path, inputs: list[Path], config: PipelineConfig,
                        show_progress: bool = True) -> tuple[list[Prediction], list[str]]:
    """Classify images with an exported model alone: neither its run folder nor its cache is needed, as the
    export records the classes, the normalisation, the extraction settings and the LPM's identity. The LPM
    is built from `config.lpm` as the export's identity says (its weights file, when it came from one, is
    `lpm.weights`) and checked against it. Returns the predictions and the class names."""
    model = load_exported(export)
    manifest = model.manifest
    stage_one = StageOne(lpm=manifest.lpm, extraction=manifest.extraction, normalization=manifest.normalization,
                         storage_dtype=manifest.storage_dtype)  # type: ignore[arg-type]
    config = config.model_copy(update={"lpm": lpm_settings_for(config.lpm, manifest.lpm, export)})
    files = find_images(inputs)
    device = resolve_device(config.extract.device)
    predictions = _predict(files, config, stage_one, model.to(device), manifest.class_names, device, show_progress)
    return predictions, manifest.class_names


def lpm_settings_for(settings: LPMConfig, identity: LPMIdentity, export: Path) -> LPMConfig:
    """The LPM settings that build the LPM of `identity`: its name, and its random seed or its weights'
    origin; a weights file is the one `settings.weights` names (checked by hash when it is built)."""
    if identity.weights_source == "none":
        seed = int(identity.weights_identity.removeprefix("random:"))
        return settings.model_copy(update={"name": identity.name, "weights": "none", "init_seed": seed})
    if identity.weights_source == "hub":
        return settings.model_copy(update={"name": identity.name, "weights": "hub"})
    if settings.weights in ("hub", "none"):
        raise UserError(
            f"The model exported in {export} was trained on features of {identity.name} with weights from a file "
            f"(sha256 {identity.weights_identity.removeprefix('sha256:')[:16]}...), and no weights file is set.",
            "Give that file: --set lpm.weights=/path/to/the/weights (it is checked against the recorded hash).",
        )
    return settings.model_copy(update={"name": identity.name})


def _predict(files: list[Path], config: PipelineConfig, stage_one: StageOne, model: FPTPlus, class_names: list[str],
             device: torch.device, show_progress: bool) -> list[Prediction]:
    selector = frozen_selector(config, stage_one).to(device) if model.spec.use_prompts else None
    model = model.to(device).eval()
    results: list[Prediction] = []
    with open_progress(show_progress) as progress, torch.inference_mode():
        task = progress.add_task("Predicting", total=len(files))
        for batch in image_features(files, config, stage_one, selector, device):
            side = eval_images(batch.side_images, model.spec.side_input_size, stage_one.normalization.mean,
                               stage_one.normalization.std).to(device)
            probabilities = model(side, batch.keys, batch.values).float().softmax(-1).cpu().numpy()
            for index, probs in zip(batch.positions, probabilities):
                best = int(np.argmax(probs))
                results.append(Prediction(file=str(files[index]), predicted=class_names[best],
                                          predicted_index=best, probabilities=[float(p) for p in probs]))
            progress.update(task, advance=len(batch.positions))
    return results


def write_prediction_csv(path: Path, predictions: list[Prediction], class_names: list[str]) -> None:
    writable_folder(path.parent, "--output").mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted", "predicted_index", *[f"p_{name}" for name in class_names]])
        for item in predictions:
            writer.writerow([item.file, item.predicted, item.predicted_index,
                             *[f"{p:.6f}" for p in item.probabilities]])

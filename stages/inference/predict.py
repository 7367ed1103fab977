"""`fpt predict`: classify new images with a trained run.

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

from fpt.cache.progress import open_progress
from fpt.stages.core.devices import resolve_device
from fpt.stages.core.files import replacing, writable_folder
from fpt.stages.datasets.layouts import find_images
from fpt.stages.extract.frozen_lpm import frozen_selector, image_features
from fpt.stages.model.side_input import eval_images
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
    run = read_run(run_dir)
    config = run_config(run_dir, assignments)
    _, metadata = run_cache_metadata(run, cache)
    files = find_images(inputs)
    device = resolve_device(config.extract.device)
    use_features = run.model_spec.use_prompts
    selector = frozen_selector(config, metadata).to(device) if use_features else None
    model = load_run_model(run_dir, run, checkpoint, device)
    results: list[Prediction] = []
    with open_progress(show_progress) as progress, torch.inference_mode():
        task = progress.add_task("Predicting", total=len(files))
        for batch in image_features(files, config, metadata, selector, device):
            side = eval_images(batch.side_images, run.model_spec.side_input_size, metadata.normalization.mean,
                               metadata.normalization.std).to(device)
            probabilities = model(side, batch.keys, batch.values).float().softmax(-1).cpu().numpy()
            for index, probs in zip(batch.positions, probabilities):
                best = int(np.argmax(probs))
                results.append(Prediction(file=str(files[index]), predicted=run.class_names[best],
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

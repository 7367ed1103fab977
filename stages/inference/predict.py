"""`fpt predict`: classify new images with a trained run.

The frozen LPM is rebuilt from the run's configuration and must have the very identity the
cache records (name, architecture and weights hash or random seed); the extraction settings
(input size, layers, token ratio, importance, side image size, normalisation) are taken from
the cache's metadata, not from the configuration, and the images go through stage one's own
code (ExtractionImages, TokenSelectingLPM). Keys and values are rounded to the cache's
storage dtype, so a test image gives the probabilities train-side computed from the cache.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata, LPMIdentity
from fpt.cache.progress import open_progress
from fpt.stages.core.files import replacing, writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.layouts import is_image_file
from fpt.stages.datasets.samples import Sample
from fpt.stages.extract.run import ExtractionImages, decode_workers, resolve_device
from fpt.stages.lpm.build import build_lpm
from fpt.stages.lpm.token_selection import TokenSelectingLPM
from fpt.stages.runs.trained_run import Checkpoint, load_run_model, read_run, run_cache_metadata, run_config
from fpt.stages.train.augment import eval_images

IDENTITY_FIELDS = ("name", "weights_identity", "embed_dim", "num_heads", "head_dim", "patch_size", "depth",
                   "num_prefix_tokens", "num_params")


class Prediction(BaseModel):
    file: str
    predicted: str
    predicted_index: int
    probabilities: list[float]


def find_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively) under named folders, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if is_image_file(p)))
        elif item.is_file():
            found.append(item)
        else:
            raise UserError(f"{item} does not exist.", "Give image files or folders that hold images.")
    if not found:
        raise UserError(
            f"No image files (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .webp) in {', '.join(map(str, inputs))}.",
            "Give image files or folders that hold images.",
        )
    return found


def frozen_selector(config: PipelineConfig, metadata: CacheMetadata) -> TokenSelectingLPM:
    """The LPM the cache was made with, checked by identity, wrapped for token selection."""
    settings = metadata.extraction
    vit, identity = build_lpm(config.lpm, settings.input_size)
    recorded = metadata.lpm
    differences = [
        f"{name}: cache has {getattr(recorded, name)}, now {getattr(identity, name)}"
        for name in IDENTITY_FIELDS if getattr(recorded, name) != getattr(identity, name)
    ]
    if differences:
        raise UserError(
            "The LPM built from the run's settings is not the one that made its cache (" + "; ".join(differences)
            + "), so its features would not match what the side network was trained on.",
            _same_lpm_hint(recorded),
        )
    return TokenSelectingLPM(vit, settings.layers, settings.token_ratio, settings.importance, config.extract.query_chunk,
                             settings.precision)


def _same_lpm_hint(recorded: LPMIdentity) -> str:
    if recorded.weights_source == "none":
        seed = recorded.weights_identity.removeprefix("random:")
        return f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=none --set lpm.init_seed={seed}."
    if recorded.weights_source == "file":
        return (f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=<the weights file "
                f"whose sha256 is {recorded.weights_identity.removeprefix('sha256:')[:16]}...>.")
    return (f"Use the extraction's settings: --set lpm.name={recorded.name} --set lpm.weights=hub, with the same "
            "hub weights downloaded (their hash is recorded in the cache).")


def as_stored(features: torch.Tensor, metadata: CacheMetadata) -> torch.Tensor:
    """Round features as the cache stores them, back in float32."""
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(metadata.storage.dtype)
    return features.to(dtype).float() if dtype is not None else features.float()


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
    settings, norm = metadata.extraction, metadata.normalization
    samples = [Sample(sample_id=str(path), path=path, label=-1, split="test") for path in files]
    # decoded and resized as the run's cache was; JPEGs as extract.jpeg_draft says if its images held none
    draft = settings.jpeg_draft if settings.jpeg_draft is not None else config.extract.jpeg_draft
    images = ExtractionImages(samples, list(range(len(samples))), settings.input_size, settings.side_store_size,
                              norm.mean, norm.std, settings.resize, draft)
    loader = DataLoader(images, batch_size=config.extract.batch_size, shuffle=False,
                        num_workers=decode_workers(config.extract.num_workers, device))
    results: list[Prediction] = []
    with open_progress(show_progress) as progress, torch.inference_mode():
        task = progress.add_task("Predicting", total=len(files))
        for indices, lpm_inputs, side_images, errors in loader:
            failures = [(files[int(i)], e) for i, e in zip(indices, errors) if e]
            if failures:
                raise UserError(f"The image {failures[0][0]} cannot be read: {failures[0][1]}.",
                                "Remove or replace it and run again; nothing was written yet.")
            keys = values = None
            if selector is not None:
                keys, values, _ = selector(lpm_inputs.to(device))
                keys, values = as_stored(keys, metadata), as_stored(values, metadata)
            side = eval_images(side_images.numpy(), run.model_spec.side_input_size, norm.mean, norm.std).to(device)
            probabilities = model(side, keys, values).float().softmax(-1).cpu().numpy()
            for index, probs in zip(indices.tolist(), probabilities):
                best = int(np.argmax(probs))
                results.append(Prediction(file=str(files[index]), predicted=run.class_names[best],
                                          predicted_index=best, probabilities=[float(p) for p in probs]))
            progress.update(task, advance=len(indices))
    return results


def write_prediction_csv(path: Path, predictions: list[Prediction], class_names: list[str]) -> None:
    writable_folder(path.parent, "--output").mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted", "predicted_index", *[f"p_{name}" for name in class_names]])
        for item in predictions:
            writer.writerow([item.file, item.predicted, item.predicted_index,
                             *[f"{p:.6f}" for p in item.probabilities]])

"""`fpt explain`: heatmaps of where a trained run's fusion prompts looked, per image.

From the cache (no LPM) for images the run's cache holds, or through the frozen LPM, as `fpt predict`
runs it, for new images. Each explanation is a folder under <run>/explain/ (see
stages/runs/explanation_record.py for its files); it is written to a temporary folder and moved into
place at the end, so an interrupted explanation leaves nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fpt.cache.errors import UserError
from fpt.cache.identity import features_key
from fpt.cache.layout import TOKEN_INDICES, store_name
from fpt.cache.metadata import CacheMetadata
from fpt.cache.progress import open_progress
from fpt.cache.reader import CacheReader, read_metadata
from fpt.stages.core.devices import resolve_device
from fpt.stages.core.files import write_json
from fpt.stages.datasets.folds import split_samples
from fpt.stages.datasets.layouts import find_images
from fpt.stages.datasets.samples import SPLITS
from fpt.stages.explain.attention_maps import AGGREGATION, Explanation, explain_batch
from fpt.stages.explain.overlays import display_image, draw_explanation
from fpt.stages.explain.patch_maps import TokenGrid
from fpt.stages.extract.frozen_lpm import StageOne, frozen_selector, image_features
from fpt.stages.model.fpt_model import FPTPlus
from fpt.stages.model.side_input import eval_images
from fpt.stages.runs.explanation_record import EXPLAIN_FOLDER, MAPS_FILE, RECORD_FILE, ExplainedImage, ExplanationRecord
from fpt.stages.runs.trained_run import Checkpoint, RunRecord, load_run_model, read_run, run_cache_metadata, run_config


@dataclass
class _Batch:
    samples: list[str]
    labels: list[int | None]
    images: list[Path | None]  # the file to draw on, where it can be found
    side_images: np.ndarray
    keys: torch.Tensor
    values: torch.Tensor
    token_indices: torch.Tensor


@dataclass
class _Collected:
    entries: list[ExplainedImage] = field(default_factory=list)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, name: str, value: np.ndarray) -> None:
        self.arrays.setdefault(name, []).append(value)


def picture_name(sample: str, taken: set[str]) -> str:
    """A PNG name for a sample id or file path: its path parts joined, unique within the folder."""
    stem = "__".join(part for part in Path(sample).with_suffix("").parts if part not in ("/", ".."))[-120:] or "image"
    name, count = f"{stem}.png", 1
    while name in taken:
        count += 1
        name = f"{stem}-{count}.png"
    taken.add(name)
    return name


def cache_with_token_indices(run_dir: Path, run: RunRecord, cache: Path | None) -> tuple[Path, CacheMetadata]:
    """The run's cache, or, where that store predates token indices (format 2), the store of the same
    features that `fpt extract` writes with them beside it; refused with the command when there is none."""
    path, metadata = run_cache_metadata(run, cache)
    if metadata.has_token_indices:
        return path, metadata
    successor = path.parent / store_name(metadata.dataset, features_key(
        metadata.dataset, metadata.lpm, metadata.extraction, metadata.normalization, metadata.storage))
    if successor.exists() and read_metadata(successor).complete:
        return successor, read_metadata(successor)
    raise UserError(
        f"The cache {path} this run trained from has format version {metadata.format_version}, which does not record "
        "where each kept token came from in the image, so its attention cannot be put back on the image.",
        f"Run `fpt extract --config {run_dir / 'config.yaml'}` (from the folder the run was started in): it runs the "
        "LPM once more and writes a store of the same features with token indices beside the old one, at "
        f"{successor}; this run keeps working with either. Then run this command again.",
    )


def _explanation_layout(metadata: CacheMetadata) -> TokenGrid:
    return TokenGrid.of(metadata.extraction.num_tokens, metadata.lpm.num_prefix_tokens)


def _cached_batches(reader: CacheReader, indices: list[int], batch_size: int, source: Path | None,
                    device: torch.device) -> Iterator[_Batch]:
    """The chosen samples of the cache, read a shard at a time (in storage order), in batches."""
    ids = reader.sample_ids()
    shard_size = reader.metadata.storage.shard_size
    by_shard: dict[int, list[int]] = {}
    for index in sorted(indices):
        by_shard.setdefault(index // shard_size, []).append(index)
    pending: list[tuple[int, dict[str, np.ndarray]]] = []
    for rows in by_shard.values():
        start, stop = rows[0], rows[-1] + 1
        data = reader.read(start, stop, with_token_indices=True)
        pending.extend((index, {name: value[index - start] for name, value in data.items()}) for index in rows)
        while len(pending) >= batch_size:
            chunk, pending = pending[:batch_size], pending[batch_size:]
            yield _batch_of(chunk, ids, source, device)
    if pending:
        yield _batch_of(pending, ids, source, device)


def _batch_of(chunk: list[tuple[int, dict[str, np.ndarray]]], ids: list[str], source: Path | None,
              device: torch.device) -> _Batch:
    stacked = {name: np.stack([row[name] for _, row in chunk]) for name in chunk[0][1]}
    return _Batch(
        samples=[ids[index] for index, _ in chunk],
        labels=[int(label) for label in stacked["labels"]],
        images=[_original(source, ids[index]) for index, _ in chunk],
        side_images=stacked["side_images"],
        keys=torch.from_numpy(stacked["keys"]).float().to(device),
        values=torch.from_numpy(stacked["values"]).float().to(device),
        token_indices=torch.from_numpy(stacked[TOKEN_INDICES]).to(device),
    )


def _original(source: Path | None, sample_id: str) -> Path | None:
    """The image file a cached sample came from, where it is still there (a dataset folder, or a CSV's folder)."""
    if source is None:
        return None
    folder = source if source.is_dir() else source.parent
    path = folder / sample_id
    return path if path.is_file() else None


def _explain_into(folder: Path, run_dir: Path, run: RunRecord, checkpoint: Checkpoint, metadata: CacheMetadata,
                  model: FPTPlus, batches: Iterator[_Batch], total: int, per_layer: bool, show_progress: bool,
                  source: str, split: str | None) -> ExplanationRecord:
    """Explain every batch into `folder` (written next to it and moved into place when complete)."""
    layout = _explanation_layout(metadata)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    collected, taken = _Collected(), set()
    spec, norm = run.model_spec, metadata.normalization
    began = time.perf_counter()
    with open_progress(show_progress) as progress:
        task = progress.add_task("Explaining", total=total)
        for batch in batches:
            side = eval_images(batch.side_images, spec.side_input_size, norm.mean, norm.std).to(batch.keys.device)
            explained = explain_batch(model, side, batch.keys, batch.values, batch.token_indices, layout)
            for row, sample in enumerate(batch.samples):
                entry = _picture(staging, row, sample, batch, explained, run.class_names, metadata, per_layer, taken)
                collected.entries.append(entry)
            collected.add("attention", explained.attention.numpy())
            collected.add("attention_per_layer", explained.layer_maps.numpy())
            collected.add("prefix_mass", explained.prefix_mass.numpy())
            collected.add("selection", explained.selection.numpy())
            collected.add("probabilities", explained.probabilities.numpy())
            collected.add("labels", np.array([-1 if label is None else label for label in batch.labels]))
            progress.update(task, advance=len(batch.samples))
    record = ExplanationRecord(
        run=str(run_dir), checkpoint=checkpoint, source=source, split=split,  # type: ignore[arg-type]
        class_names=run.class_names, layers=metadata.extraction.layers, grid=layout.grid,
        patch_size=metadata.lpm.patch_size, input_size=metadata.extraction.input_size,
        num_prefix_tokens=layout.num_prefix, aggregation=AGGREGATION, images=collected.entries,
        seconds_per_image=(time.perf_counter() - began) / max(len(collected.entries), 1),
    )
    np.savez_compressed(staging / MAPS_FILE, samples=np.array([e.sample for e in collected.entries]),
                        **{name: np.concatenate(parts) for name, parts in collected.arrays.items()})
    write_json(staging / RECORD_FILE, record.model_dump(mode="json"))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return record


def _picture(folder: Path, row: int, sample: str, batch: _Batch, explained: Explanation, class_names: list[str],
             metadata: CacheMetadata, per_layer: bool, taken: set[str]) -> ExplainedImage:
    probabilities = explained.probabilities[row].tolist()
    predicted = int(np.argmax(probabilities))
    label = batch.labels[row]
    name = picture_name(sample, taken)
    truth = "" if label is None else f"; true {class_names[label]}" + (" (correct)" if label == predicted else " (wrong)")
    prefix = float(explained.prefix_mass[row].mean())
    draw_explanation(
        folder / name, display_image(batch.images[row], batch.side_images[row]), explained.attention[row].numpy(),
        explained.selection[row].numpy(),
        f"{Path(sample).name}: predicted {class_names[predicted]} ({probabilities[predicted]:.2f}){truth}", prefix,
        explained.layer_maps[row].numpy() if per_layer else None, metadata.extraction.layers)
    return ExplainedImage(sample=sample, label=label, predicted=predicted, probabilities=probabilities,
                          prefix_mass=prefix, picture=name,
                          image=str(batch.images[row]) if batch.images[row] is not None else None)


def _require_prompts(run: RunRecord, run_dir: Path) -> None:
    if not run.model_spec.use_prompts:
        raise UserError(f"The run {run_dir} was trained without prompts (side.use_prompts: false): its model never "
                        "looks at the LPM's tokens, so there is no attention to show.",
                        "Explain a run trained with prompts (the default).")


def explain_cached(run_dir: Path, split: str = "test", checkpoint: Checkpoint = "best",
                   samples: list[str] | None = None, limit: int | None = None, cache: Path | None = None,
                   assignments: list[str] | None = None, per_layer: bool = False, name: str | None = None,
                   show_progress: bool = True, originals: bool = True) -> tuple[Path, ExplanationRecord]:
    """Explain images of the run's cache, from the cache alone: a split's as the run saw it (a fold's own
    training or validation part for a fold of a cross-validation; its first `limit` in storage order),
    or the named `samples` (sample ids). Written to <run>/explain/<name> (default <split>_<checkpoint>).
    `originals`: draw over the original files where they are still at the run's dataset folder; otherwise,
    and always without it, over the cache's side images (train-side's gallery: stage two opens no image)."""
    if split not in SPLITS:
        raise UserError(f"There is no split called {split!r}.", f"Use one of {', '.join(SPLITS)}.")
    run = read_run(run_dir)
    _require_prompts(run, run_dir)
    config = run_config(run_dir, assignments)
    path, metadata = cache_with_token_indices(run_dir, run, cache)
    reader = CacheReader(path, metadata.label_table or None)
    ids = reader.sample_ids()
    if samples is not None:
        position = {sample: index for index, sample in enumerate(ids)}
        missing = [sample for sample in samples if sample not in position]
        if missing:
            raise UserError(f"The run's cache holds no image {missing[0]!r} ({len(missing)} named image(s) missing).",
                            "Name images by their sample id (the first column of the run's predictions_*.csv).")
        indices = [position[sample] for sample in samples]
    else:  # a fold of a cross-validation calls its own parts of train + val its train and val splits
        chosen = split_samples(reader, config.train, split)
        in_split = range(*reader.split_range(chosen)) if isinstance(chosen, str) else chosen.tolist()
        indices = list(in_split)[:limit]
    device = resolve_device(config.train.device)
    model = load_run_model(run_dir, run, checkpoint, device)
    source = Path(run.dataset_source) if run.dataset_source and originals else None
    batches = _cached_batches(reader, indices, config.train.batch_size, source, device)
    folder = run_dir / EXPLAIN_FOLDER / (name or f"{split}_{checkpoint}")
    with torch.inference_mode():
        record = _explain_into(folder, run_dir, run, checkpoint, reader.metadata, model, batches, len(indices),
                               per_layer, show_progress, "cache", None if samples is not None else split)
    return folder, record


def explain_images(run_dir: Path, inputs: list[Path], checkpoint: Checkpoint = "best", cache: Path | None = None,
                   assignments: list[str] | None = None, per_layer: bool = False, show_progress: bool = True
                   ) -> tuple[Path, ExplanationRecord]:
    """Explain new images through the run's frozen LPM (checked against its cache, as `fpt predict` does).
    Written to <run>/explain/images-<time>."""
    run = read_run(run_dir)
    _require_prompts(run, run_dir)
    config = run_config(run_dir, assignments)
    _, metadata = run_cache_metadata(run, cache)
    files = find_images(inputs)
    device = resolve_device(config.extract.device)
    stage_one = StageOne.of_cache(metadata)
    selector = frozen_selector(config, stage_one).to(device)
    model = load_run_model(run_dir, run, checkpoint, device)

    def batches() -> Iterator[_Batch]:
        for batch in image_features(files, config, stage_one, selector, device):
            assert batch.keys is not None and batch.values is not None and batch.token_indices is not None
            yield _Batch(samples=[str(files[i]) for i in batch.positions], labels=[None] * len(batch.positions),
                         images=[files[i] for i in batch.positions], side_images=batch.side_images,
                         keys=batch.keys, values=batch.values, token_indices=batch.token_indices)

    folder = run_dir / EXPLAIN_FOLDER / f"images-{dt.datetime.now():%Y%m%d-%H%M%S}"
    with torch.inference_mode():
        record = _explain_into(folder, run_dir, run, checkpoint, metadata, model, batches(), len(files), per_layer,
                               show_progress, "images", None)
    return folder, record

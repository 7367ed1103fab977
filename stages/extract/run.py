"""Stage one: run the frozen LPM once over every image and fill the cache.

Images are decoded by DataLoader workers, the LPM runs in batches under inference_mode, and
results are written a whole shard at a time. A store with the same key that was interrupted
is resumed from its unfinished shards; a complete one is reused without running the LPM.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fpt import __version__
from fpt.cache.errors import UserError
from fpt.cache.identity import store_key
from fpt.cache.integrity import mark_for_rewrite, verify_store
from fpt.cache.layout import SPLIT_CODES, create_store, record_source, store_name, token_index_dtype
from fpt.cache.metadata import CacheMetadata, LPMIdentity, Normalization, SkippedImage
from fpt.cache.progress import open_progress
from fpt.cache.reader import CacheReader, read_metadata
from fpt.cache.storage_order import SHUFFLED_SPLITS, in_store_order, storage_order
from fpt.cache.store_lock import store_lock
from fpt.cache.transcode import equivalent_store, transcode
from fpt.cache.writer import ShardWriter
from fpt.stages.core.devices import decode_workers, resolve_device
from fpt.stages.core.errors import StopRequested
from fpt.stages.core.files import writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.fingerprint import dataset_fingerprint
from fpt.stages.datasets.images import (
    ImageDecodeError, is_jpeg, lpm_draft_size, normalized_tensor, open_rgb, resize_square, side_image,
)
from fpt.stages.datasets.registry import dataset_source, normalization_source, resolve_dataset
from fpt.stages.datasets.samples import SPLITS, ResolvedDataset, Sample
from fpt.stages.extract.settings_check import check_before_scan, extraction_settings, storage_settings
from fpt.stages.lpm.build import build_lpm
from fpt.stages.lpm.token_selection import TokenSelectingLPM


class ExtractionImages(Dataset):
    """Decodes one image into (index, LPM input, stored side image, error message)."""

    def __init__(self, samples: list[Sample], indices: list[int], input_size: int, side_size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], resize: str,
                 jpeg_draft: int | None) -> None:
        self.samples = samples
        self.indices = indices
        self.input_size = input_size
        self.side_size = side_size
        self.mean = mean
        self.std = std
        self.resize = resize
        self.draft_size = lpm_draft_size(input_size, jpeg_draft)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor, np.ndarray, str]:
        index = self.indices[position]
        try:
            image = open_rgb(self.samples[index].path, draft_size=self.draft_size)
        except (ImageDecodeError, UserError) as error:  # UserError (no pydicom) as a message: it crosses worker processes
            reason = error.reason if isinstance(error, ImageDecodeError) else error.paragraph()
            blank = torch.zeros(3, self.input_size, self.input_size)
            return index, blank, np.zeros((self.side_size, self.side_size, 3), np.uint8), reason
        lpm_input = normalized_tensor(resize_square(image, self.input_size, self.resize), self.mean, self.std)
        return index, lpm_input, side_image(image, self.side_size, self.resize), ""


@dataclass
class ExtractResult:
    path: Path
    metadata: CacheMetadata
    reused: bool
    computed_samples: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    transcoded_from: Path | None = None  # written from this store of the same features, without the LPM


def build_metadata(config: PipelineConfig, dataset: ResolvedDataset, lpm: LPMIdentity, fingerprint: str) -> CacheMetadata:
    settings = extraction_settings(config, lpm)
    if any(is_jpeg(sample.path) for sample in dataset.samples):  # the draft margin matters only for JPEGs
        settings = settings.model_copy(update={"jpeg_draft": config.extract.jpeg_draft})
    assert dataset.mean is not None and dataset.std is not None
    normalization = Normalization(mean=dataset.mean, std=dataset.std, source=normalization_source(config))
    storage = storage_settings(config.cache)
    key = store_key(dataset.name, fingerprint, lpm, settings, normalization, storage)
    ranges: dict[str, tuple[int, int]] = {}
    start = 0
    for split, count in dataset.split_counts().items():
        ranges[split] = (start, start + count)
        start += count
    return CacheMetadata(
        fpt_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cache_key=key,
        dataset=dataset.name,
        dataset_fingerprint=fingerprint,
        class_names=dataset.class_names,
        default_lr=dataset.default_lr,
        num_samples=len(dataset.samples),
        split_ranges=ranges,
        class_counts={split: dataset.class_counts(split) for split in SPLITS},
        lpm=lpm,
        extraction=settings,
        normalization=normalization,
        storage=storage,
        skipped=[SkippedImage(path=path, reason=reason) for path, reason in dataset.skipped],
        shuffled_splits=list(SHUFFLED_SPLITS),
    )


def _in_store_order(dataset: ResolvedDataset, path: Path) -> ResolvedDataset:
    """The dataset with its samples in the order the store at `path` holds them."""
    return replace(dataset, samples=in_store_order(dataset.samples, CacheReader(path, require_complete=False).sample_ids()))


# Extracts the given pending shards of the store at the path somewhere else (on dask workers:
# pipeline/distributed_extract.py) and returns the images computed.
ShardRunner = Callable[[PipelineConfig, Path, list[int], bool], int]


def run_extract(config: PipelineConfig, show_progress: bool = True, run_shards: ShardRunner | None = None) -> ExtractResult:
    """Reuse, repair, re-encode, resume or create the store of this configuration; its pending shards
    are extracted here, or by `run_shards` when given."""
    began = time.perf_counter()
    # what needs only the settings and the LPM's shape, before the image scan (minutes on DDR)
    check_before_scan(config)
    device = resolve_device(config.extract.device)
    writable_folder(config.cache.root, "cache.root")
    dataset = resolve_dataset(config, show_progress=show_progress)
    empty = [split for split, count in dataset.split_counts().items() if count == 0]
    if empty:
        raise UserError(
            f"The {', '.join(empty)} split(s) of dataset {dataset.name} at {dataset.root} hold no images.",
            "Every split needs at least one labelled image.",
        )
    fingerprint = dataset_fingerprint(dataset.samples)
    vit, lpm = build_lpm(config.lpm, config.extract.input_size, dataset.notes)
    metadata = build_metadata(config, dataset, lpm, fingerprint)
    path = config.cache.root / store_name(dataset.name, metadata.cache_key)
    source = dataset_source(config)
    config.cache.root.mkdir(parents=True, exist_ok=True)
    with store_lock(path):
        result = _fill_store(config, dataset, vit, metadata, path, device, show_progress, run_shards)
        result.metadata = record_source(path, result.metadata, source)
    result.seconds = time.perf_counter() - began
    return result


def _fill_store(config: PipelineConfig, dataset: ResolvedDataset, vit: torch.nn.Module, metadata: CacheMetadata,
                path: Path, device: torch.device, show_progress: bool, run_shards: ShardRunner | None) -> ExtractResult:
    """Reuse, repair, re-encode, resume or create the store at `path`; the caller holds its lock."""
    notes = list(dataset.notes)
    existing = read_metadata(path) if path.exists() else None
    if existing is not None and existing.cache_key != metadata.cache_key:
        raise UserError(f"{path} holds a cache with another key.", "Move it away and run again.")
    if existing is not None and existing.complete:
        damaged = verify_store(path, existing).damaged
        if not damaged:
            return ExtractResult(path, existing, True, 0, 0.0, notes)
        # the shards whose files no longer match their checksums are extracted again, the rest is kept
        existing = mark_for_rewrite(path, existing, [d.shard for d in damaged])
        notes.append(f"{len(damaged)} damaged shard(s) of {path.name} ({', '.join(str(d.shard) for d in damaged)}) "
                     "no longer matched their checksums and were extracted again.")
    equivalent = equivalent_store(config.cache.root, metadata)
    if equivalent is not None:  # the same features in another codec or shard layout: no need for the LPM
        transcode(equivalent, config.cache.root, metadata.storage, show_progress=show_progress)
        return ExtractResult(path, read_metadata(path), False, 0, 0.0, notes, equivalent)
    if metadata.extraction.precision == "fp16" and device.type == "cpu":
        notes.append("extract.precision=fp16 ran on the CPU, which has no fp16 arithmetic: torch emulates it, several "
                     "times slower than fp32 (bench/README.md). bf16 is the 16-bit choice on a CPU.")
    if existing is not None:
        metadata = existing
        dataset = _in_store_order(dataset, path)
    else:
        dataset = replace(dataset, samples=storage_order(dataset.samples))
        labels = np.array([s.label for s in dataset.samples])
        splits = np.array([SPLIT_CODES[s.split] for s in dataset.samples])
        create_store(path, metadata, labels, splits, [s.sample_id for s in dataset.samples])

    writer = ShardWriter(path, metadata)
    pending = [shard for shard in range(metadata.num_shards) if shard not in writer.completed_shards()]
    indices = [i for shard in pending for i in range(*metadata.shard_range(shard))]
    if run_shards is None:
        computed = _extract_into(config, dataset, vit, writer, pending, indices, device, show_progress)
    else:
        computed = run_shards(config, path, pending, show_progress)
    final = writer.finish()
    return ExtractResult(path, final, False, computed, 0.0, notes)


def extract_shards(config: PipelineConfig, path: Path, shards: list[int], show_progress: bool = False,
                   should_stop: Callable[[], bool] | None = None) -> int:
    """Extract these whole shards into the existing store at `path`; returns the images computed.
    `should_stop` is asked before each batch; True raises `StopRequested` once a started shard
    write is finished (flagged shards stay).

    Used by each dask worker for its own shards. The dataset and LPM are rebuilt here and must
    give the store's cache key, so a worker with other data or weights cannot write into it.
    """
    dataset = resolve_dataset(config, show_progress=False)
    metadata = read_metadata(path)
    vit, lpm = build_lpm(config.lpm, config.extract.input_size)
    expected = build_metadata(config, dataset, lpm, dataset_fingerprint(dataset.samples))
    if expected.cache_key != metadata.cache_key:
        raise UserError(
            f"This worker's dataset or LPM weights give another cache key than the store {path}.",
            "Give every dask worker the same dataset files and LPM weights at the same paths.",
        )
    dataset = _in_store_order(dataset, path)
    writer = ShardWriter(path, metadata)
    done = writer.completed_shards()
    todo = [shard for shard in shards if shard not in done]
    indices = [i for shard in todo for i in range(*metadata.shard_range(shard))]
    device = resolve_device(config.extract.device)
    return _extract_into(config, dataset, vit, writer, todo, indices, device, show_progress, should_stop)


def _extract_into(
    config: PipelineConfig, dataset: ResolvedDataset, vit: torch.nn.Module, writer: ShardWriter,
    pending: list[int], indices: list[int], device: torch.device, show_progress: bool,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    metadata = writer.metadata
    extract = config.extract
    selector = TokenSelectingLPM(vit, metadata.extraction.layers, extract.token_ratio, extract.importance,
                                 extract.query_chunk, metadata.extraction.precision).to(device)
    assert dataset.mean is not None and dataset.std is not None
    images = ExtractionImages(dataset.samples, indices, extract.input_size, extract.side_store_size,
                              metadata.normalization.mean, metadata.normalization.std, metadata.extraction.resize,
                              metadata.extraction.jpeg_draft)
    loader = DataLoader(
        images, batch_size=extract.batch_size, shuffle=False, num_workers=decode_workers(extract.num_workers, device),
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    shard_of = {i: i // metadata.storage.shard_size for i in indices}
    buffers: dict[int, dict[int, tuple[np.ndarray, ...]]] = {s: {} for s in pending}
    index_dtype = token_index_dtype(metadata.extraction.num_tokens)
    done = 0
    started = time.perf_counter()
    # One shard write (zarr compression) may run in a thread while the next batch is computed. If the
    # loop raises, concurrent.futures still finishes a started write at exit, so no shard is left torn.
    write_pool = ThreadPoolExecutor(max_workers=1) if extract.overlap_writes else None
    in_flight: Future | None = None
    with open_progress(show_progress, fields=("rate",)) as progress:
        task = progress.add_task("Extracting", total=len(indices), rate="")
        with torch.inference_mode():
            for batch_indices, lpm_inputs, side_images, errors in loader:
                if should_stop is not None and should_stop():
                    if in_flight is not None:
                        in_flight.result()  # a shard being written is finished and flagged, never left torn
                    raise StopRequested(f"asked to stop after {done} image(s)")
                failures = [(int(i), e) for i, e in zip(batch_indices, errors) if e]
                if failures:
                    index, reason = failures[0]
                    raise UserError(
                        f"The image {dataset.samples[index].path} cannot be read: {reason}. "
                        f"{len(failures)} image(s) of this batch failed.",
                        "Replace or remove the file(s); shards already written are kept and reused on the next run.",
                    )
                keys, values, token_indices = selector(lpm_inputs.to(device, non_blocking=True))
                keys, values = keys.float().cpu().numpy(), values.float().cpu().numpy()
                token_indices = token_indices.cpu().numpy().astype(index_dtype)
                side = side_images.numpy()
                for row, index in enumerate(batch_indices.tolist()):
                    shard = shard_of[index]
                    buffers[shard][index] = (keys[row], values[row], side[row], token_indices[row])
                    start, stop = metadata.shard_range(shard)
                    if len(buffers[shard]) == stop - start:
                        rows = [buffers[shard][i] for i in range(start, stop)]
                        arrays = [np.stack(parts) for parts in zip(*rows)]
                        del buffers[shard]
                        if in_flight is not None:
                            in_flight.result()
                        if write_pool is None:
                            writer.write_shard(shard, *arrays)
                        else:
                            in_flight = write_pool.submit(writer.write_shard, shard, *arrays)
                done += len(batch_indices)
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=len(batch_indices), rate=f"{rate:.1f} img/s")
    if write_pool is not None:
        write_pool.shutdown(wait=True)
    if in_flight is not None:
        in_flight.result()
    return done


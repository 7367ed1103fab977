"""Stage one: run the frozen LPM once over every image content the store lacks, and fill the cache.

The store of a configuration holds rows of image contents (the sha256 of each file's bytes) under
its LPM and settings; the dataset's labels and splits go into a label table beside them
(cache/label_table.py). An extraction hashes every file, appends rows for the contents the store
does not hold yet (a new image, a changed file: from the next shard boundary, cache/layout.allot_rows)
and runs the LPM on those only, once per content (two files of the same bytes share a row); then it
writes the dataset's label table. Relabelling or re-splitting therefore runs no LPM at all.
Images are decoded by DataLoader workers, the LPM runs in batches under inference_mode, and
results are written a whole shard at a time. An interrupted extraction is resumed from its
unfinished shards.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from fpt import __version__
from fpt.cache.errors import UserError
from fpt.cache.identity import features_key, store_key
from fpt.cache.integrity import mark_for_rewrite, verify_store
from fpt.cache.label_table import LabelTable, TableSample, table_view, write_table
from fpt.cache.layout import allot_rows, create_content_store, record_source, store_name, token_index_dtype
from fpt.cache.metadata import CacheMetadata, LPMIdentity, Normalization, SkippedImage, StoreMetadata
from fpt.cache.progress import open_progress
from fpt.cache.reader import read_store_metadata
from fpt.cache.storage_order import SHUFFLED_SPLITS, storage_order
from fpt.cache.store_lock import store_lock
from fpt.cache.transcode import equivalent_store, same_rows, transcode
from fpt.cache.upgrade import upgrade_store
from fpt.cache.writer import ShardWriter
from fpt.stages.core.devices import decode_workers, resolve_device
from fpt.stages.core.errors import StopRequested
from fpt.stages.core.files import writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.fingerprint import content_hashes, dataset_fingerprint
from fpt.stages.datasets.images import (
    ImageDecodeError, is_jpeg, lpm_draft_size, normalized_tensor, open_rgb, resize_square, side_image,
)
from fpt.stages.datasets.registry import dataset_source, normalization_source, resolve_dataset
from fpt.stages.datasets.samples import ResolvedDataset, Sample
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
    metadata: CacheMetadata  # the store seen through the label table this extraction wrote
    reused: bool  # nothing was computed or re-encoded: every image's features were in the store
    computed_samples: int  # images the LPM ran on
    seconds: float
    notes: list[str] = field(default_factory=list)
    transcoded_from: Path | None = None  # written from this store of the same features, without the LPM
    label_table: str = ""  # the sha256 of the dataset's label table


def build_store_metadata(config: PipelineConfig, dataset: ResolvedDataset, lpm: LPMIdentity) -> StoreMetadata:
    """The metadata of the store of this configuration's features (no rows yet)."""
    settings = extraction_settings(config, lpm)
    if any(is_jpeg(sample.path) for sample in dataset.samples):  # the draft margin matters only for JPEGs
        settings = settings.model_copy(update={"jpeg_draft": config.extract.jpeg_draft})
    assert dataset.mean is not None and dataset.std is not None
    normalization = Normalization(mean=dataset.mean, std=dataset.std, source=normalization_source(config))
    storage = storage_settings(config.cache)
    return StoreMetadata(
        fpt_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cache_key=features_key(dataset.name, lpm, settings, normalization, storage),
        dataset=dataset.name, lpm=lpm, extraction=settings, normalization=normalization, storage=storage, num_rows=0,
    )


def label_table(dataset: ResolvedDataset, hashes: list[str]) -> LabelTable:
    """The dataset's label table: every sample with its content, in storage order."""
    content = {sample.sample_id: digest for sample, digest in zip(dataset.samples, hashes)}
    return LabelTable(
        dataset=dataset.name, class_names=dataset.class_names, default_lr=dataset.default_lr,
        samples=[TableSample(id=s.sample_id, content=content[s.sample_id], label=s.label, split=s.split)
                 for s in storage_order(dataset.samples)],
        shuffled_splits=list(SHUFFLED_SPLITS),
        skipped=[SkippedImage(path=path, reason=reason) for path, reason in dataset.skipped],
    )


def format_3_store(config: PipelineConfig, dataset: ResolvedDataset, hashes: list[str], store: StoreMetadata) -> Path:
    """Where a store of format 3 of this dataset scan (the same images, labels and splits) in these settings
    would be: one `fpt extract` can upgrade without the LPM (cache/upgrade.py)."""
    key = store_key(dataset.name, dataset_fingerprint(dataset.samples, hashes=hashes), store.lpm, store.extraction,
                    store.normalization, store.storage, 3)
    return config.cache.root / store_name(dataset.name, key)


def first_sample_of(hashes: list[str]) -> dict[str, int]:
    """Each content's first sample (index into the dataset's samples): the file its features come from."""
    first: dict[str, int] = {}
    for index, digest in enumerate(hashes):
        first.setdefault(digest, index)
    return first


def rows_to_compute(path: Path, metadata: StoreMetadata, shards: list[int], sample_of: dict[str, int]) -> dict[int, int]:
    """row -> dataset sample, for the rows of these shards whose content is among the dataset's images.
    Rows of a content no longer there (an interrupted extraction's, whose file has since gone) are
    emptied (content "") and written as zeros."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    contents = group["contents"][: metadata.num_rows].tolist()
    rows: dict[int, int] = {}
    for shard in shards:
        for row in range(*metadata.shard_range(shard)):
            content = str(contents[row])
            if content in sample_of:
                rows[row] = sample_of[content]
            elif content:
                group["contents"][row] = ""
    return rows


# Extracts the given pending shards of the store at the path somewhere else (on dask workers:
# pipeline/distributed_extract.py) and returns the images computed.
ShardRunner = Callable[[PipelineConfig, Path, list[int], bool], int]


def run_extract(config: PipelineConfig, show_progress: bool = True, run_shards: ShardRunner | None = None) -> ExtractResult:
    """Reuse, repair, re-encode, resume or create the store of this configuration, extract the images it
    lacks (here, or by `run_shards` when given) and write the dataset's label table."""
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
    hashes = content_hashes(dataset.samples)
    vit, lpm = build_lpm(config.lpm, config.extract.input_size, dataset.notes)
    metadata = build_store_metadata(config, dataset, lpm)
    table = label_table(dataset, hashes)
    path = config.cache.root / store_name(dataset.name, metadata.cache_key)
    source = dataset_source(config)
    config.cache.root.mkdir(parents=True, exist_ok=True)
    with store_lock(path):
        result = _fill_store(config, dataset, hashes, table.contents(), vit, metadata, path, device, show_progress,
                             run_shards)
        digest = write_table(path, table)
        result.metadata = table_view(record_source(path, read_store_metadata(path), source, digest), table)
        result.label_table = digest
    result.seconds = time.perf_counter() - began
    return result


def _fill_store(config: PipelineConfig, dataset: ResolvedDataset, hashes: list[str], order: list[str],
                vit: torch.nn.Module, metadata: StoreMetadata, path: Path, device: torch.device, show_progress: bool,
                run_shards: ShardRunner | None) -> ExtractResult:
    """Reuse, repair, re-encode or create the store at `path`, and extract every content of the dataset it
    lacks, appended in `order` (the label table's: a fresh store is then laid out as compaction lays it);
    the caller holds its lock."""
    notes = list(dataset.notes)
    existing = read_store_metadata(path) if path.exists() else None
    if existing is not None and existing.cache_key != metadata.cache_key:
        raise UserError(f"{path} holds a cache with another key.", "Move it away and run again.")
    transcoded_from = None
    changed = False
    legacy = format_3_store(config, dataset, hashes, metadata)
    if existing is None and legacy.exists() and read_store_metadata(legacy).complete:
        # this very dataset scan in a format-3 store: its shard files copied, no LPM
        upgrade_store(legacy, path, metadata, {s.sample_id: h for s, h in zip(dataset.samples, hashes)})
        existing, transcoded_from = read_store_metadata(path), legacy
        notes.append(f"{legacy.name} (format 3, this dataset's images, labels and splits) was copied into the "
                     f"format-4 store {path.name} without the LPM; the old store is kept (delete it when its runs are done).")
    if existing is None or not existing.complete:
        # the same features in another codec or shard layout: re-encoded (or its interrupted re-encoding
        # continued) without the LPM; the images the dataset adds to them are extracted below
        transcoded_from = equivalent_store(config.cache.root, metadata)
        if transcoded_from is not None and same_rows(transcoded_from, path):
            transcode(transcoded_from, config.cache.root, metadata.storage, show_progress=show_progress)
        else:
            transcoded_from = None
            if existing is None:
                create_content_store(path, metadata)
        existing = read_store_metadata(path)
    elif existing.complete:
        damaged = verify_store(path, existing).damaged
        if damaged:  # the shards whose files no longer match their checksums are extracted again, the rest is kept
            existing = mark_for_rewrite(path, existing, [d.shard for d in damaged])
            changed = True
            notes.append(f"{len(damaged)} damaged shard(s) of {path.name} ({', '.join(str(d.shard) for d in damaged)}) "
                         "no longer matched their checksums and were extracted again.")
    if existing.normalization != metadata.normalization:
        notes.append(f"dataset.normalization auto: the train split's mean/std now differ from those the store {path.name} "
                     "was first extracted with; the store's are kept for every image, so that all its features share "
                     "one normalisation (another dataset.normalization gives another store).")
    metadata = existing
    writer = ShardWriter(path, metadata)
    sample_of = first_sample_of(hashes)
    # held, or in a shard an interrupted extraction left unwritten (written below)
    known = {str(c) for c in writer.group["contents"][: metadata.num_rows]} - {""}
    new = [c for c in order if c not in known]
    if new:
        metadata = allot_rows(path, metadata, new, [dataset.samples[sample_of[c]].sample_id for c in new])
        writer = ShardWriter(path, metadata)
        changed = True
    pending = [shard for shard in range(metadata.num_shards) if shard not in writer.completed_shards()]
    if metadata.extraction.precision == "fp16" and device.type == "cpu" and pending:
        notes.append("extract.precision=fp16 ran on the CPU, which has no fp16 arithmetic: torch emulates it, several "
                     "times slower than fp32 (bench/README.md). bf16 is the 16-bit choice on a CPU.")
    rows = rows_to_compute(path, metadata, pending, sample_of)
    if not pending:
        computed = 0
    elif run_shards is None:
        computed = _extract_into(config, dataset, vit, writer, pending, rows, device, show_progress)
    else:
        computed = run_shards(config, path, pending, show_progress)
    final = writer.finish()
    reused = not changed and not pending and transcoded_from is None
    return ExtractResult(path, table_view(final, None), reused, computed, 0.0, notes, transcoded_from)


def extract_shards(config: PipelineConfig, path: Path, shards: list[int], show_progress: bool = False,
                   should_stop: Callable[[], bool] | None = None) -> int:
    """Extract these whole shards into the existing store at `path`; returns the images computed.
    `should_stop` is asked before each batch; True raises `StopRequested` once a started shard
    write is finished (flagged shards stay).

    Used by each dask worker for its own shards. The dataset and LPM are rebuilt here and must
    give the store's cache key, so a worker with other weights or settings cannot write into it; each
    row's image is found by its content among the worker's files.
    """
    dataset = resolve_dataset(config, show_progress=False)
    metadata = read_store_metadata(path)
    vit, lpm = build_lpm(config.lpm, config.extract.input_size)
    if build_store_metadata(config, dataset, lpm).cache_key != metadata.cache_key:
        raise UserError(
            f"This worker's dataset or LPM weights give another cache key than the store {path}.",
            "Give every dask worker the same dataset files and LPM weights at the same paths.",
        )
    writer = ShardWriter(path, metadata)
    done = writer.completed_shards()
    todo = [shard for shard in shards if shard not in done]
    sample_of = first_sample_of(content_hashes(dataset.samples))
    group = writer.group
    rows = {row: sample_of[str(group["contents"][row])] for shard in todo for row in range(*metadata.shard_range(shard))
            if str(group["contents"][row]) in sample_of}
    device = resolve_device(config.extract.device)
    return _extract_into(config, dataset, vit, writer, todo, rows, device, show_progress, should_stop)


def _extract_into(
    config: PipelineConfig, dataset: ResolvedDataset, vit: torch.nn.Module, writer: ShardWriter,
    pending: list[int], rows: dict[int, int], device: torch.device, show_progress: bool,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Write the pending shards: the LPM's features of each row in `rows` (row -> dataset sample), zeros in
    the other rows of those shards (rows of no content). Returns the images the LPM ran on."""
    metadata = writer.metadata
    extract = config.extract
    index_dtype = token_index_dtype(metadata.extraction.num_tokens)
    blank = (np.zeros(metadata.feature_shape, np.float32), np.zeros(metadata.feature_shape, np.float32),
             np.zeros((metadata.extraction.side_store_size,) * 2 + (3,), np.uint8), np.zeros(metadata.feature_shape[:-1], index_dtype))
    buffers: dict[int, dict[int, tuple[np.ndarray, ...]]] = {s: {} for s in pending}
    needed = {s: sum(1 for row in range(*metadata.shard_range(s)) if row in rows) for s in pending}

    def shard_arrays(shard: int) -> list[np.ndarray]:
        start, stop = metadata.shard_range(shard)
        computed = buffers.pop(shard)
        return [np.stack(parts) for parts in zip(*(computed.get(row, blank) for row in range(start, stop)))]

    for shard in [s for s in pending if needed[s] == 0]:  # no image to run: rows of no content
        writer.write_shard(shard, *shard_arrays(shard))
    order = sorted(rows)
    if not order:
        return 0
    selector = TokenSelectingLPM(vit, metadata.extraction.layers, extract.token_ratio, extract.importance,
                                 extract.query_chunk, metadata.extraction.precision).to(device)
    images = ExtractionImages(dataset.samples, [rows[row] for row in order], extract.input_size, extract.side_store_size,
                              metadata.normalization.mean, metadata.normalization.std, metadata.extraction.resize,
                              metadata.extraction.jpeg_draft)
    loader = DataLoader(
        images, batch_size=extract.batch_size, shuffle=False, num_workers=decode_workers(extract.num_workers, device),
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    shard_size = metadata.storage.shard_size
    done = 0
    started = time.perf_counter()
    # One shard write (zarr compression) may run in a thread while the next batch is computed. If the
    # loop raises, concurrent.futures still finishes a started write at exit, so no shard is left torn.
    write_pool = ThreadPoolExecutor(max_workers=1) if extract.overlap_writes else None
    in_flight: Future | None = None
    with open_progress(show_progress, fields=("rate",)) as progress:
        task = progress.add_task("Extracting", total=len(order), rate="")
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
                for position in range(len(batch_indices)):
                    row = order[done + position]
                    shard = row // shard_size
                    buffers[shard][row] = (keys[position], values[position], side[position], token_indices[position])
                    if len(buffers[shard]) == needed[shard]:
                        arrays = shard_arrays(shard)
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

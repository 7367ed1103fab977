"""Choosing the cache a training run may use: one extracted from the run's images with its settings."""

from __future__ import annotations

from pathlib import Path

from fpt.cache.catalog import list_caches
from fpt.cache.label_table import read_table
from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata
from fpt.cache.reader import read_metadata, read_store_metadata
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.registry import read_layout
from fpt.stages.extract.settings_check import storage_settings


def contradictions(config: PipelineConfig, metadata: CacheMetadata, source: Path) -> list[str]:
    """Settings of the requested run that this cache cannot serve; `source` is the run's dataset folder
    or CSV (absolute), which must be one the cache was extracted from, where the cache records any."""
    problems = []
    wanted = config.extract
    have = metadata.extraction
    if metadata.dataset != config.dataset.name:
        problems.append(f"dataset: cache has {metadata.dataset}, requested {config.dataset.name}")
    if metadata.sources and str(source) not in metadata.sources:
        problems.append(f"images: cache extracted from {' and '.join(metadata.sources)}, requested {source}")
    if metadata.lpm.name != config.lpm.name:
        problems.append(f"lpm.name: cache has {metadata.lpm.name}, requested {config.lpm.name}")
    layers = wanted.resolved_layers(metadata.lpm.depth)
    if have.layers != layers:
        problems.append(f"extract.layers: cache has {have.layers}, requested {layers}")
    if have.token_ratio != wanted.token_ratio:
        problems.append(f"extract.token_ratio: cache has {have.token_ratio}, requested {wanted.token_ratio}")
    if have.importance != wanted.importance:
        problems.append(f"extract.importance: cache has {have.importance}, requested {wanted.importance}")
    if have.jpeg_draft is not None and have.jpeg_draft != wanted.jpeg_draft:
        problems.append(f"extract.jpeg_draft: cache has {have.jpeg_draft}, requested {wanted.jpeg_draft}")
    if have.precision != wanted.precision:
        problems.append(f"extract.precision: cache has {have.precision}, requested {wanted.precision}")
    if have.input_size != wanted.input_size:
        problems.append(f"extract.input_size: cache has {have.input_size}, requested {wanted.input_size}")
    if have.side_store_size < config.side.input_size:
        problems.append(
            f"side.input_size {config.side.input_size} is larger than the cached side images ({have.side_store_size})"
        )
    return problems


def find_cache(config: PipelineConfig, source: Path, explicit: Path | None = None) -> Path:
    """The cache to train from: the explicit one if given, else, among the complete stores extracted from
    the run's dataset `source` (its folder or CSV, absolute) with the run's settings, the one in the
    configured storage settings, else the newest. A store that records no source is never chosen
    unasked: it could hold another project's images under the same dataset name."""
    if explicit is not None:
        metadata = read_metadata(explicit)
        if not metadata.complete:
            raise UserError(
                f"The cache {explicit} is incomplete: its extraction was interrupted.",
                "Run `fpt extract` with the same settings again to finish it.",
            )
        problems = contradictions(config, metadata, source)
        if problems:
            moved = any(problem.startswith("images:") for problem in problems)
            raise UserError(
                f"The cache {explicit} was built with other settings than this run asks for: " + "; ".join(problems) + ".",
                "Train with settings that match the cache, or run `fpt extract` with the new settings first"
                + (f" (if the images moved, `{extract_command_for(config.dataset.name, source)}` adds their folder to "
                   "the cache without running the LPM when they are the same images)." if moved else "."),
            )
        check_labels_current(config, explicit, source)
        return explicit
    extract_command = extract_command_for(config.dataset.name, source)
    candidates = [(p, m) for p, m, _ in list_caches(config.cache.root) if m is not None and m.dataset == config.dataset.name]
    usable = [(p, m) for p, m in candidates
              if m.complete and str(source) in m.sources and not contradictions(config, m, source)]
    if usable:
        # Stores of the same features in several storage settings (`fpt cache transcode`) are all
        # usable; the one in the configured settings wins, then the newest.
        configured = storage_settings(config.cache)
        chosen = max(usable, key=lambda item: (item[1].storage == configured, item[1].created_at))[0]
        check_labels_current(config, chosen, source)
        return chosen
    if candidates:
        details = "; ".join(f"{p.name}: {_unusable_because(config, m, source)}" for p, m in candidates)
        raise UserError(
            f"No cache under {config.cache.root} for dataset {config.dataset.name} from {source} fits this run ({details}).",
            f"Run `{extract_command}` with the same settings first (or pass --cache PATH to train from a store "
            "you know holds these images).",
        )
    raise UserError(
        f"There is no cache for dataset {config.dataset.name} under {config.cache.root}.",
        f"Run `{extract_command}` first (or pass --cache PATH).",
    )


def label_table_of(cache: Path, source: Path | str) -> str | None:
    """The label table a run of the dataset at `source` trains on: the one its last `fpt extract` wrote
    into the store, else the store's latest (a store named with --cache for another folder); None for a
    store of format 2 or 3, whose labels are inside."""
    store = read_store_metadata(cache)
    if not store.by_content:
        return None
    return store.label_tables.get(str(source)) or store.latest_table or None


def extract_command_for(dataset: str, source: Path | str) -> str:
    """The `fpt extract` command line for a dataset at `source` (a folder, or a CSV label table)."""
    where = f"--set dataset.csv={source}" if Path(source).suffix.lower() == ".csv" else f"--data-root {source}"
    return f"fpt extract --dataset {dataset} {where}"


def _unusable_because(config: PipelineConfig, metadata: CacheMetadata, source: Path) -> str:
    if not metadata.complete:
        return "incomplete"
    if not metadata.sources:
        return "records no source folder (running `fpt extract` on the same images records it)"
    return ", ".join(contradictions(config, metadata, source))


def check_labels_current(config: PipelineConfig, cache: Path, source: Path) -> None:
    """Refuse to start a run on a label table the dataset no longer matches: the images, labels and splits
    read from the dataset now against those of the table its last `fpt extract` wrote into the store (the
    table a new run trains on). Reading the dataset's layout costs no image decoding and no hashing, so a
    file whose bytes changed under the same name is found by `fpt extract`, not here."""
    store = read_store_metadata(cache)
    digest = store.label_tables.get(str(source)) if store.by_content else None
    if digest is None:  # a store of format 2 or 3 (labels inside), or named with --cache for another folder
        return
    table = read_table(cache, digest)
    _, layout = read_layout(config, show_progress=False)
    skipped = {image.path for image in table.skipped}
    now = {sample.sample_id: (layout.class_names[sample.label], sample.split) for sample in layout.samples
           if sample.sample_id not in skipped and str(sample.path) not in skipped}
    then = {sample.id: (table.class_names[sample.label], sample.split) for sample in table.samples}
    added = len(now.keys() - then.keys())
    removed = len(then.keys() - now.keys())
    common = now.keys() & then.keys()
    relabelled = sum(now[i][0] != then[i][0] for i in common)
    moved = sum(now[i][1] != then[i][1] for i in common)
    if not (added or removed or relabelled or moved):
        return
    changes = [f"{count} {what}" for count, what in ((relabelled, "relabelled"), (moved, "moved to another split"),
                                                      (added, "added"), (removed, "removed")) if count]
    raise UserError(
        f"The images or labels of dataset {config.dataset.name} at {source} have changed since `fpt extract` last "
        f"wrote the cache's label table ({', '.join(changes)}); training now would use the old labels.",
        f"Run `{extract_command_for(config.dataset.name, source)}` first: it runs the LPM only on added or changed "
        "images (none for relabelled or re-split ones) and writes the new label table; then train again.",
    )

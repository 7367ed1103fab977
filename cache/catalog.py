"""Finding caches on disk: listing them and choosing the one a training run may use."""

from __future__ import annotations

from pathlib import Path

from cache.metadata import CacheMetadata, StorageSettings
from cache.reader import read_metadata
from pipeline.config import PipelineConfig
from pipeline.errors import UserError


def folder_bytes(path: Path) -> int:
    """Bytes on disk of every file under path (a store, or one of its arrays); 0 if it is missing."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def list_caches(root: Path) -> list[tuple[Path, CacheMetadata | None, str]]:
    """Every *.zarr under root with its metadata (None and the reason if unreadable)."""
    found = []
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*.zarr")):
        try:
            found.append((path, read_metadata(path), ""))
        except UserError as error:
            found.append((path, None, error.paragraph()))
    return found


def contradictions(config: PipelineConfig, metadata: CacheMetadata) -> list[str]:
    """Settings of the requested run that this cache cannot serve."""
    problems = []
    wanted = config.extract
    have = metadata.extraction
    if metadata.dataset != config.dataset.name:
        problems.append(f"dataset: cache has {metadata.dataset}, requested {config.dataset.name}")
    if metadata.lpm.name != config.lpm.name:
        problems.append(f"lpm.name: cache has {metadata.lpm.name}, requested {config.lpm.name}")
    if have.layers != wanted.layers:
        problems.append(f"extract.layers: cache has {have.layers}, requested {wanted.layers}")
    if have.token_ratio != wanted.token_ratio:
        problems.append(f"extract.token_ratio: cache has {have.token_ratio}, requested {wanted.token_ratio}")
    if have.importance != wanted.importance:
        problems.append(f"extract.importance: cache has {have.importance}, requested {wanted.importance}")
    if have.input_size != wanted.input_size:
        problems.append(f"extract.input_size: cache has {have.input_size}, requested {wanted.input_size}")
    if have.side_store_size < config.side.input_size:
        problems.append(
            f"side.input_size {config.side.input_size} is larger than the cached side images ({have.side_store_size})"
        )
    if metadata.lpm.embed_dim % config.side.reduction:
        problems.append(f"side.reduction {config.side.reduction} does not divide the LPM width {metadata.lpm.embed_dim}")
    return problems


def find_cache(config: PipelineConfig, explicit: Path | None = None) -> Path:
    """The cache to train from: the explicit one if given, else the compatible one in the configured
    storage settings, else the newest compatible one."""
    if explicit is not None:
        metadata = read_metadata(explicit)
        if not metadata.complete:
            raise UserError(
                f"The cache {explicit} is incomplete: its extraction was interrupted.",
                "Run `fpt extract` with the same settings again to finish it.",
            )
        problems = contradictions(config, metadata)
        if problems:
            raise UserError(
                f"The cache {explicit} was built with other settings than this run asks for: " + "; ".join(problems) + ".",
                "Train with settings that match the cache, or run `fpt extract` with the new settings first.",
            )
        return explicit
    candidates = [(p, m) for p, m, _ in list_caches(config.cache.root) if m is not None and m.dataset == config.dataset.name]
    usable = [(p, m) for p, m in candidates if m.complete and not contradictions(config, m)]
    if usable:
        # Stores of the same features in several storage settings (`fpt cache transcode`) are all
        # usable; the one in the configured settings wins, then the newest.
        configured = StorageSettings.of(config.cache)
        return max(usable, key=lambda item: (item[1].storage == configured, item[1].created_at))[0]
    if candidates:
        details = "; ".join(
            f"{p.name}: " + ("incomplete" if not m.complete else ", ".join(contradictions(config, m)))
            for p, m in candidates
        )
        raise UserError(
            f"No cache under {config.cache.root} for dataset {config.dataset.name} fits the requested settings ({details}).",
            f"Run `fpt extract --dataset {config.dataset.name}` with the same settings first.",
        )
    raise UserError(
        f"There is no cache for dataset {config.dataset.name} under {config.cache.root}.",
        f"Run `fpt extract --dataset {config.dataset.name}` first (or pass --cache PATH).",
    )

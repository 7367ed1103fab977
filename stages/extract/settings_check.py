"""Settings checked against the LPM's shape before any image is read.

Extraction scans and decodes every image before the LPM runs (minutes on DDR), so a setting the
LPM cannot serve (a layer it does not have, an input size that is not a multiple of its patch, a
side network or prompt width that does not divide its width) is refused first, from the
configuration and the LPM's architecture alone (`lpm_architecture`: no weights are loaded).
Stage two checks the same side settings against the cache's LPM before it builds a model.
"""

from __future__ import annotations

from fpt.cache.errors import UserError
from fpt.cache.metadata import ExtractionSettings, LPMIdentity, StorageSettings
from fpt.stages.core.settings import CacheConfig, PipelineConfig, SideConfig
from fpt.stages.lpm.build import lpm_architecture
from fpt.stages.lpm.token_selection import num_selected


def extraction_settings(config: PipelineConfig, lpm: LPMIdentity) -> ExtractionSettings:
    """What stage one writes with this configuration and LPM; a UserError for a setting the LPM cannot serve."""
    extract = config.extract
    if extract.input_size % lpm.patch_size:
        raise UserError(
            f"extract.input_size {extract.input_size} is not a multiple of the LPM's patch size {lpm.patch_size}.",
            f"Use e.g. {max(1, extract.input_size // lpm.patch_size) * lpm.patch_size}.",
        )
    layers = extract.resolved_layers(lpm.depth)
    if max(layers) >= lpm.depth:
        raise UserError(
            f"extract.layers asks for layer {max(layers)} but {lpm.name} has {lpm.depth} blocks (0..{lpm.depth - 1}).",
            "Choose layers inside that range, or extract.layers=last_half (the last half of the blocks).",
        )
    if extract.importance == "class_token" and not lpm.class_token:
        raise UserError(
            f"extract.importance is class_token, but {lpm.name} has no class token (it pools its patch tokens), "
            "so there is no class query to rank the tokens by.",
            "Use extract.importance=global, or an LPM with a class token.",
        )
    tokens = lpm.num_prefix_tokens + (extract.input_size // lpm.patch_size) ** 2
    return ExtractionSettings(
        input_size=extract.input_size,
        layers=layers,
        token_ratio=extract.token_ratio,
        importance=extract.importance,
        num_tokens=tokens,
        num_selected=num_selected(tokens, extract.token_ratio),
        side_store_size=extract.side_store_size,
        resize=extract.resize,
        precision=extract.precision,
    )


def storage_settings(cache: CacheConfig) -> StorageSettings:
    """The storage settings of a store built with this `cache:` configuration."""
    return StorageSettings(dtype=cache.dtype, codec=cache.codec, codec_level=cache.codec_level,
                           shard_size=cache.shard_size, chunk_size=cache.chunk_size)


def side_problems(side: SideConfig, lpm_dim: int, num_heads: int, patch_size: int) -> list[str]:
    """Side-network and prompt settings that cannot be built on an LPM of this width, heads and patch."""
    problems = []
    if lpm_dim % side.reduction:
        problems.append(f"side.reduction {side.reduction} does not divide the LPM width {lpm_dim}")
    elif (lpm_dim // side.reduction) % num_heads:
        problems.append(f"the side width {lpm_dim // side.reduction} (LPM width {lpm_dim} / side.reduction "
                        f"{side.reduction}) is not divisible by the LPM's {num_heads} heads")
    if side.input_size % patch_size:
        problems.append(f"side.input_size {side.input_size} is not a multiple of the LPM's patch size {patch_size}")
    if side.use_prompts:
        if lpm_dim % side.prompt_reduction:
            problems.append(f"side.prompt_reduction {side.prompt_reduction} does not divide the LPM width {lpm_dim}")
        elif side.prompt_reduction != 1:
            prompt_width, side_width = lpm_dim // side.prompt_reduction, lpm_dim // max(side.reduction, 1)
            if not side.prompt_projection:
                problems.append("side.prompt_reduction other than 1 needs side.prompt_projection=true "
                                "(the prompts must be projected to the LPM width to attend to its keys)")
            elif prompt_width != side_width:
                problems.append(f"a reduced prompt width ({prompt_width}) must equal the side width ({side_width}), "
                                "as the prompts are added to the side tokens after the projection")
    return problems


def raise_side_problems(problems: list[str], lpm_name: str) -> None:
    if problems:
        raise UserError(f"The side network's settings do not fit the LPM {lpm_name}: " + "; ".join(problems) + ".",
                        "Change these settings (pipeline.yaml or --set) and run again.")


def check_before_scan(config: PipelineConfig) -> LPMIdentity:
    """Every check that needs only the configuration and the LPM's shape; the shape, for later checks."""
    lpm = lpm_architecture(config.lpm, config.extract.input_size)
    extraction_settings(config, lpm)
    raise_side_problems(side_problems(config.side, lpm.embed_dim, lpm.num_heads, lpm.patch_size), lpm.name)
    return lpm

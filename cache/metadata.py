"""The cache's metadata: pydantic models stored in the zarr group's attributes under `fpt`.

A format-4 store's attributes are a `StoreMetadata`: what its rows of features are (LPM, settings,
storage) and which label tables it holds. What a reader sees is a `CacheMetadata`: the store's
metadata together with one label table's facts (classes, splits and their ranges, counts).
Stores of formats 2 and 3 keep a whole `CacheMetadata` in their attributes (their labels are arrays).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

# 4: rows addressed by image content, labels and splits in label tables beside them;
# 3: token_indices (where each kept key/value came from); 2: shard_sha256 checksums
FORMAT_VERSION = 4
READABLE_FORMAT_VERSIONS = (2, 3, 4)  # a version-2 store trains and predicts; it lacks only token_indices
CONTENT_FORMAT_VERSION = 4  # from this version on, labels live in label tables, not in the store's arrays
ATTRIBUTE_KEY = "fpt"


class LPMIdentity(BaseModel):
    """What the cache records about the LPM that produced it."""

    name: str
    weights_source: str  # "hub", "file" or "none"
    weights_identity: str  # "sha256:<hex>" or "random:<seed>"
    embed_dim: int
    num_heads: int
    head_dim: int
    patch_size: int
    depth: int
    num_prefix_tokens: int
    num_params: int
    class_token: bool = True  # token 0 is a class token (global-pool models have none)


class ExtractionSettings(BaseModel):
    """Every setting that changes what stage one writes."""

    input_size: int
    layers: list[int]
    token_ratio: float
    importance: Literal["global", "class_token"]
    num_tokens: int  # N = prefix tokens + (S/P)^2
    num_selected: int  # n = floor(N * token_ratio)
    side_store_size: int
    resize: str = "pil-bicubic"
    # The draft margin JPEGs were decoded with (extract.jpeg_draft); None, and left out of the dump, when
    # no image is a JPEG, so the setting does not split the stores of PNG or TIFF datasets.
    jpeg_draft: int | None = Field(default=None, exclude_if=lambda value: value is None)
    # Left out of the dump at fp32, so an fp32 store's metadata and key are those of a store whose
    # settings never named a precision: the setting only adds a distinction where it makes one.
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", exclude_if=lambda value: value == "fp32")


class Normalization(BaseModel):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: Literal["dataset", "auto", "imagenet", "lpm"]


class StorageSettings(BaseModel):
    dtype: Literal["float16", "bfloat16", "float32", "int8", "int4"]
    codec: str
    codec_level: int
    shard_size: int
    chunk_size: int


class SkippedImage(BaseModel):
    path: str
    reason: str


class StoreMetadata(BaseModel):
    """What a store's rows are: the features of image contents under one LPM and its settings.

    Rows are the sample axis of every per-sample array (`num_rows` of them, `storage.shard_size` a
    shard). In a format-4 store each row holds one image content (`contents`); in formats 2 and 3
    each row is one sample of the dataset the store was extracted from (num_rows = num_samples)."""

    format_version: int = FORMAT_VERSION
    fpt_version: str
    created_at: str
    cache_key: str
    dataset: str
    lpm: LPMIdentity
    extraction: ExtractionSettings
    normalization: Normalization
    storage: StorageSettings
    num_rows: int
    complete: bool = False
    # where the images came from: the absolute path of each dataset folder (or CSV label table) whose
    # extraction gave this store. Not part of the key: two folders of the same images share one store,
    # and each is listed. Training takes a store only for a listed source.
    sources: list[str] = Field(default_factory=list)
    # format 4: each source's label table (the sha256 its file is named by), as its last extraction wrote it
    label_tables: dict[str, str] = Field(default_factory=dict)
    latest_table: str = ""  # format 4: the table the last extraction wrote, read when no source is named

    @property
    def has_token_indices(self) -> bool:
        """Whether the store records the LPM token index of each kept key and value (format 3 on)."""
        return self.format_version >= 3

    @property
    def by_content(self) -> bool:
        """Whether rows are image contents with labels in label tables (format 4 on)."""
        return self.format_version >= CONTENT_FORMAT_VERSION

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """(L, H, n, Dh) of one sample's keys (and values)."""
        return (
            len(self.extraction.layers),
            self.lpm.num_heads,
            self.extraction.num_selected,
            self.lpm.head_dim,
        )

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.storage.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[start, stop) rows of shard `shard`."""
        start = shard * self.storage.shard_size
        return start, min(start + self.storage.shard_size, self.num_rows)


class CacheMetadata(StoreMetadata):
    """A store seen through one label table: the samples a reader indexes (0 .. num_samples - 1,
    split-ordered) with their classes and splits. Formats 2 and 3 store this model whole."""

    dataset_fingerprint: str  # format 4: the label table's sha256
    class_names: list[str]
    default_lr: float
    num_samples: int
    split_ranges: dict[str, tuple[int, int]]  # [start, stop) of each split; samples are split-ordered
    class_counts: dict[str, list[int]]
    skipped: list[SkippedImage] = Field(default_factory=list)
    # splits stored in one seeded random order (cache/storage_order.py); stores written before
    # this field existed are sorted by sample id throughout
    shuffled_splits: list[str] = Field(default_factory=list)
    label_table: str = ""  # format 4: the sha256 of the label table seen; "" in formats 2 and 3

    @model_validator(mode="before")
    @classmethod
    def _rows_are_samples(cls, data: Any) -> Any:
        """Formats 2 and 3 record no num_rows: a row is a sample."""
        if isinstance(data, dict) and "num_rows" not in data and "num_samples" in data:
            data = {**data, "num_rows": data["num_samples"]}
        return data

    @property
    def split_counts(self) -> dict[str, int]:
        return {split: stop - start for split, (start, stop) in self.split_ranges.items()}

    def store_part(self) -> StoreMetadata:
        """The store's own metadata, without the label table's facts (format 4)."""
        return StoreMetadata.model_validate(self.model_dump(include=set(StoreMetadata.model_fields)))

"""Every setting of the pipeline as pydantic models, and how a mapping of settings becomes one.

The defaults here are the paper's (docs/method.md); `pipeline.yaml` repeats them so users can see
and edit them. Order of precedence: model defaults < the configuration files < their
`overrides.<dataset>` section < command-line `--set key.path=value` options. Which files are
read is the command line's choice (pipeline/config.py); a run folder's resolved config.yaml is
read here, as it is.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fpt.cache.errors import UserError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(StrictModel):
    name: str = "demo"
    data_root: Path = Path("data")
    path: Path | None = Field(
        default=None, description="Folder of this dataset; default <data_root>/<name>."
    )
    csv: Path | None = Field(default=None, description="For the `csv` layout: path,label[,split] file.")
    classes: list[str] | None = Field(default=None, description="Class names for `folder`/`csv`.")
    normalization: Literal["dataset", "auto", "imagenet", "lpm"] = Field(
        default="dataset",
        description="dataset: the paper's published values for its datasets (auto for others); auto: computed "
                    "from the train split at full resolution; imagenet; lpm: timm's mean/std of the LPM.",
    )
    keep_ungradable: bool = False
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0

    def root(self) -> Path:
        return self.path if self.path is not None else self.data_root / self.name


class DemoConfig(StrictModel):
    """The built-in synthetic dataset: fundus-like discs whose class is the lesion density."""

    num_train: int = Field(default=240, ge=4)
    num_val: int = Field(default=80, ge=2)
    num_test: int = Field(default=120, ge=2)
    image_size: int = Field(default=512, ge=128)
    num_classes: int = Field(default=3, ge=2, le=5)
    seed: int = 0


class LPMConfig(StrictModel):
    name: str = "vit_base_patch16_384.orig_in21k_ft_in1k"
    weights: str = Field(
        default="hub",
        description="'hub' (timm/Hugging Face weights of `name`), 'none' (random init, "
        "explicit), or a path to a local .safetensors/.pth/.bin file.",
    )
    init_seed: int = 0
    checkpoint_key: str = Field(
        default="auto",
        description="Where a weights file keeps the encoder's state dict: auto (the file itself, or under "
                    "model, state_dict, teacher, ...), or a key such as model or teacher.",
    )


class ExtractConfig(StrictModel):
    input_size: int = Field(default=512, ge=32)
    layers: list[int] | Literal["last_half"] = Field(
        default="last_half",
        description="The LPM blocks whose attention is used: last_half (the paper's choice: 6..11 of 12 blocks, "
                    "12..23 of ViT-L's 24) or a list of block indices.",
    )
    token_ratio: float = Field(default=0.2, gt=0, le=1)
    importance: Literal["global", "class_token"] = "global"
    batch_size: int = Field(default=8, ge=1)
    num_workers: int | Literal["auto"] = Field(
        default="auto",
        description="DataLoader processes decoding images. auto: none on the CPU (the LPM needs every core and "
                    "decoding is a few % of it; workers made extraction slower, bench/README.md), "
                    "cores - 1 (at most 8) on a GPU.",
    )
    device: str = "auto"
    side_store_size: int = Field(
        default=144, description="Side images are stored at this size (uint8) for crop/flip."
    )
    resize: Literal["pil-bilinear", "pil-bicubic"] = Field(
        default="pil-bilinear",
        description="How images are resized to the LPM input and the stored side size: PIL's antialiased "
                    "bilinear (the published preprocessing) or bicubic.",
    )
    jpeg_draft: int = Field(
        default=2, ge=0,
        description="A JPEG is decoded at the largest reduced scale (1/2, 1/4, 1/8, in the DCT domain: faster) that "
                    "keeps it at least this many times the LPM input on each side, then resized as usual; 0 decodes "
                    "every pixel. At 2 the LPM input changes about as much as the JPEG compression itself changes it; "
                    "at 1, four to six times as much (bench/README.md).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="Arithmetic of the LPM's forward pass: fp32, or bf16/fp16 autocast (matrix products in 16 bits, "
                    "norms and softmax in fp32). bf16 is faster on GPUs and on CPUs with AVX512-BF16 or AMX; "
                    "fp16 is for GPUs only (emulated, several times slower, on a CPU). Part of the cache key; "
                    "bench/README.md gives the share of selected tokens it changes.",
    )
    query_chunk: int = Field(
        default=128, ge=1, description="Queries per block when scoring tokens (bounds memory; 128 was fastest on CPU)."
    )
    on_decode_error: Literal["fatal", "skip"] = "fatal"
    overlap_writes: bool = Field(
        default=True, description="Compress and write a shard in a thread while the next batch is computed."
    )

    @field_validator("layers")
    @classmethod
    def _layers_sorted_unique(cls, layers: list[int] | str) -> list[int] | str:
        if isinstance(layers, str):
            return layers
        if not layers:
            raise ValueError("give at least one layer, or last_half")
        if any(layer < 0 for layer in layers):
            raise ValueError("layer indices must be >= 0")
        if len(set(layers)) != len(layers):
            raise ValueError("layer indices must be unique")
        return sorted(layers)

    def resolved_layers(self, depth: int) -> list[int]:
        """The chosen block indices for an LPM of `depth` blocks."""
        return list(range(depth // 2, depth)) if self.layers == "last_half" else list(self.layers)


class CacheConfig(StrictModel):
    root: Path = Path("outputs/cache")
    dtype: Literal["float16", "bfloat16", "float32", "int8", "int4"] = "float16"
    codec: Literal["zstd", "blosc-zstd", "blosc-lz4", "gzip", "none"] = "blosc-lz4"
    codec_level: int = Field(default=3, ge=0, le=22)
    shard_size: int = Field(default=32, ge=1, description="Samples per shard file.")
    chunk_size: int = Field(default=4, ge=1, description="Samples per chunk inside a shard.")

    @model_validator(mode="after")
    def _shard_multiple_of_chunk(self) -> "CacheConfig":
        if self.shard_size % self.chunk_size:
            raise ValueError("shard_size must be a multiple of chunk_size")
        return self


class SideConfig(StrictModel):
    input_size: int = Field(default=128, ge=16)
    reduction: int = Field(default=8, ge=1, description="Side width d = D / reduction.")
    num_prompts: int = Field(default=16, ge=1)
    prompt_reduction: int = Field(default=1, ge=1, description="Prompt width Dp = D / this.")
    prompt_norm: bool = True
    prompt_projection: bool = False
    use_prompts: bool = Field(default=True, description="False: the side network alone.")
    fusion_dropout: float = Field(default=0.5, ge=0, lt=1)
    mlp_ratio: float = Field(default=4.0, gt=0)


class AugmentConfig(StrictModel):
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.7, 1.3)
    hflip: float = Field(default=0.5, ge=0, le=1)
    brightness: float = Field(default=0.2, ge=0)
    contrast: float = Field(default=0.2, ge=0)


class TrainConfig(StrictModel):
    lr: float | None = Field(default=None, gt=0, description="None: the dataset's default.")
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=16, ge=1)
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 0
    device: str = "auto"
    runs_root: Path = Path("outputs/runs")
    run_name: str | None = None
    in_memory: bool = Field(
        default=False,
        description="Shuffle the whole training split at once instead of within a buffer of shards (holds the split "
                    "in memory: where train.resident puts it, else in RAM). Another order than streaming's.",
    )
    resident: Literal["auto", "off", "ram", "device"] = Field(
        default="auto",
        description="Where the training and validation samples are served from after one read of the store. off: "
                    "streamed from the store every epoch; ram: loaded once into RAM, as stored; device: loaded once "
                    "onto the training GPU (keys and values; side images stay in RAM); auto: the GPU when the copy fits "
                    "in 50 % of its free memory, else RAM when it fits in 50 % of the available RAM (this process's "
                    "share of it, by its share of the cores), else streaming. The batches and results are the same "
                    "bits whichever is used (stages/train/resident.py).",
    )
    prefetch: bool | Literal["auto"] = Field(
        default="auto",
        description="Read the next batch, and augment its side images, in a background thread while a step runs "
                    "(the same batches and draws either way). auto: on a GPU only (on the CPU the thread competes "
                    "with the step for the cores; bench/README.md).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Arithmetic of the training step's forward pass (side network, fusion modules, loss): fp32, or "
                    "bf16 autocast (matrix products in bf16; norms, softmax and the loss in fp32; weights, gradients and "
                    "AdamW in fp32, no loss scaling). auto: bf16 on a GPU, fp32 on a CPU. Evaluation and the "
                    "predictions written run in fp32 either way. The resolved value is in run.json.",
    )
    shuffle_buffer_shards: int = Field(
        default=4, ge=1,
        description="Training shuffles within a buffer of this many shards of samples, filled from shards in random order "
                    "(the train split is stored in random order; a store written sorted is read by chunks).",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    class_weights: Literal["none", "balanced"] = Field(
        default="none",
        description="Weights of the training cross-entropy. balanced: n_samples / (n_classes * count_c) from the "
                    "training samples' class counts (sklearn's compute_class_weight('balanced')); none: the recipe's "
                    "plain cross-entropy.",
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        default="shuffle",
        description="How an epoch's training samples are drawn. shuffle: each once, in a shuffled order; balanced: as "
                    "many draws as training samples, with replacement, each with a probability inversely proportional "
                    "to its class's count (every class drawn equally often on average).",
    )
    folds: int = Field(
        default=1, ge=1,
        description="1: train on the dataset's train split, validate on its val split. k > 1: k-fold cross-validation, "
                    "k models on stratified re-splits of train + val (the test split untouched).",
    )
    fold_seed: int = Field(default=0, description="Seed of the stratified k-fold split of train + val.")
    fold: int | None = Field(
        default=None, ge=1,
        description="Set by train-side when train.folds > 1: the fold this run is (1..folds), which it validates on.",
    )
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Trackers every run writes to besides train.log: tensorboard (<run>/tensorboard), mlflow "
                    "(the fpt[mlflow] extra).",
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI. None: MLFLOW_TRACKING_URI, else sqlite:///<runs_root>/mlflow.db.")
    mlflow_experiment: str | None = Field(default=None, description="MLflow experiment. None: the dataset's name.")
    mlflow_parent_run: str | None = Field(
        default=None, description="Set by `fpt sweep`: its trials become children of the sweep's MLflow run.")

    @field_validator("resident", mode="before")
    @classmethod
    def _off_as_yaml_reads_it(cls, value: Any) -> Any:
        """YAML reads a bare `off` (in a file or a --set) as false."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _fold_of_folds(self) -> "TrainConfig":
        if self.fold is not None and self.fold > self.folds:
            raise ValueError(f"train.fold ({self.fold}) must be at most train.folds ({self.folds})")
        return self


class SweepRange(StrictModel):
    """A continuous or integer range for random search."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "SweepRange":
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SweepConfig(StrictModel):
    """Hyperparameter search over train-side settings (`fpt sweep --from-cache`)."""

    name: str | None = Field(default=None, description="Folder under train.runs_root; default sweep-<dataset>.")
    method: str = Field(default="grid", description="grid | random (fpt's own) | an Optuna sampler: tpe, cmaes, qmc, gp, ...")
    num_trials: int = Field(default=8, ge=1, description="Random search and Optuna samplers: trials to run.")
    seed: int = Field(default=0, description="Random search and Optuna samplers: the seed.")
    metric: Literal["auc", "kappa", "accuracy", "macro_f1", "loss"] = Field(
        default="auc", description="The validation score trials are ranked and pruned by (loss: lower is better).")
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = Field(
        default="none", description="Optuna's pruner, stopping unpromising trials after an epoch (Optuna samplers only).")
    sampler_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the Optuna sampler.")
    pruner_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the Optuna pruner.")
    parameters: dict[str, list[Any] | SweepRange] = Field(
        default_factory=dict,
        description="Dotted setting (as in --set) -> list of values, or {low, high, log, integer} (random only).",
    )
    pack_size: int = Field(default=16, ge=1, description="Most trials trained side by side on one read of each batch.")


class PipelineConfig(StrictModel):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    lpm: LPMConfig = Field(default_factory=LPMConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    side: SideConfig = Field(default_factory=SideConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-dataset settings applied when dataset.name matches.",
    )

    @model_validator(mode="after")
    def _side_fits_store(self) -> "PipelineConfig":
        if self.extract.side_store_size < self.side.input_size:
            raise ValueError(
                f"extract.side_store_size ({self.extract.side_store_size}) must be >= "
                f"side.input_size ({self.side.input_size})"
            )
        return self


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (['train', 'lr'], 1e-4). Values are read as YAML scalars/lists."""
    if "=" not in text:
        raise UserError(
            f"The option --set {text!r} has no '='.",
            "Write it as --set section.field=value, e.g. --set train.lr=1e-4.",
        )
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise UserError(f"The option --set {text!r} names no field.", "Write --set train.lr=1e-4.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def set_in(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(
            f"The configuration file {path} does not exist.",
            "Give an existing file with --config, or run from the folder that holds pipeline.yaml.",
        ) from None
    except OSError as error:
        raise UserError(f"The configuration file {path} cannot be read ({error.strerror}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(
            f"The configuration file {path} is not valid YAML{where}: "
            f"{getattr(error, 'problem', None) or error}.",
            "Fix the file (indentation with spaces, 'key: value' pairs) and run again.",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"The configuration file {path} must hold a mapping of sections "
            f"(dataset:, lpm:, extract:, ...), not a {type(data).__name__}.",
            "Start from the pipeline.yaml shipped with fpt.",
        )
    return data


def format_validation_error(error: ValidationError, source: str) -> UserError:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{location}: {item['msg']} (got {item.get('input')!r})")
    return UserError(
        f"The configuration from {source} has invalid values: " + "; ".join(lines) + ".",
        "Correct these fields in pipeline.yaml or in the --set options.",
    )


def settings_from(tree: dict[str, Any], source: str, assignments: list[str] | None = None) -> PipelineConfig:
    """The settings of a mapping read from `source` (named in messages), the `--set` assignments on top.

    The mapping is taken as it is: choosing and layering files, with each file's overrides for the
    dataset, is the command line's (pipeline/config.py), and a run folder's resolved config.yaml
    already holds its dataset's overrides, which applied again would undo any --set the run was
    started with on an overridden key (train.epochs on the demo, say)."""
    tree = copy.deepcopy(tree)
    for path, value in (parse_assignment(text) for text in assignments or []):
        set_in(tree, path, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, f"{source} and the command line") from None


def run_settings(path: Path, assignments: list[str] | None = None) -> PipelineConfig:
    """A run folder's resolved config.yaml, as it is, with `--set` assignments on top."""
    return settings_from(read_yaml_file(path), str(path), assignments)


# libyaml's emitter where PyYAML was built with it: the same text, a quarter of the time (every
# trial of a sweep writes its config.yaml)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def config_to_yaml(config: PipelineConfig) -> str:
    """The configuration as resolved, for a run folder: without the `overrides` section, whose
    settings are already in the values, so that `--config <run>/config.yaml` gives this very
    configuration back (a file's values win over the defaults' overrides: pipeline/config.py)."""
    return yaml.dump(config.model_dump(mode="json", exclude={"overrides"}), Dumper=_SAFE_DUMPER, sort_keys=False)

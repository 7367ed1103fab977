"""Setting up a pack's trials: the cache they share, and each trial built whole with its run folder.

A trial is checked against the cache first (a setting the cache cannot serve, a side network that
does not fit the LPM), so that a trial that cannot run fails before it has a run folder. Its model
is initialised inside its own random stream, from its own seed, so it starts as it would alone.
Its folder gets config.yaml and run.json before training starts; the weights of its loss
(train.class_weights) come from the class counts of the pack's training samples, and the arithmetic
of its forward from train.precision resolved for the device (stages/core/precision.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata
from fpt.stages.core.files import write_json
from fpt.stages.core.precision import TrainPrecision, train_precision
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.extract.settings_check import raise_side_problems, side_problems
from fpt.stages.model.flat_parameters import FlatParameters
from fpt.stages.model.fpt_model import FPTPlus
from fpt.stages.model.stacked_model import stackable
from fpt.stages.runs.run_folder import new_run_dir, write_config
from fpt.stages.runs.tracking import RunTracker, mlflow_uri
from fpt.stages.runs.trained_run import RunRecord, read_run
from fpt.stages.train.cache_choice import contradictions, find_cache, label_table_of
from fpt.stages.train.recipe import adamw, class_weights, half_cycle_cosine, model_spec
from fpt.stages.train.resident import Residency
from fpt.stages.train.rng_stream import RngStream
from fpt.stages.train.stack_threads import StackThreads
from fpt.stages.train.trial_state import PackedTrial


def pack_cache(configs: list[PipelineConfig], explicit: Path | None) -> Path:
    """The cache of the pack: the first one that serves one of its trials; a trial the cache cannot
    serve fails on its own later."""
    if explicit is not None:
        return explicit
    errors: list[UserError] = []
    for config in configs:
        try:
            return find_cache(config, dataset_source(config))
        except UserError as error:
            errors.append(error)
    raise errors[0]  # a pack has at least one trial (`Pack` checks it)


def pack_label_table(cache: Path, configs: list[PipelineConfig], run_dirs: list[Path] | None) -> str | None:
    """The label table the pack trains on: a pack that goes on keeps the one its runs started on (the dataset
    may have been relabelled since); a new one takes its dataset's current table (`label_table_of`)."""
    recorded = recorded_run(run_dirs[0] if run_dirs else None)
    if recorded is not None and recorded.label_table:
        return recorded.label_table
    source = Path(recorded.dataset_source) if recorded is not None and recorded.dataset_source else None
    return label_table_of(cache, source or dataset_source(configs[0]))


def recorded_run(run_dir: Path | None) -> RunRecord | None:
    """The run.json of a run that goes on, written when it started (None for a new run)."""
    if run_dir is None or not (run_dir / "run.json").is_file():
        return None
    return read_run(run_dir)


class TrialSetup:
    """Builds the trials of one pack, which share its cache, device, batches per epoch and stack threads."""

    def __init__(self, cache: Path, metadata: CacheMetadata, device: torch.device, steps_per_epoch: int,
                 threads: StackThreads | None, train_counts: np.ndarray, residency: Residency) -> None:
        """train_counts: the class counts of the pack's training samples (the train split's, or a fold's);
        residency: where the pack serves its samples from (train.resident resolved)."""
        self.cache = cache
        self.residency = residency
        self.metadata = metadata
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        self.threads = threads
        self.train_counts = train_counts

    def build(self, config: PipelineConfig, run_dir: Path | None) -> PackedTrial:
        """The trial of `config`, in `run_dir` (a run that goes on) or in a new run folder."""
        # a run that goes on keeps the dataset source it recorded (its config's relative paths may point
        # elsewhere from another working folder; its cache was checked by key) and the precision it trained
        # in, which train.precision=auto could resolve otherwise on another device (fp32 where not recorded)
        recorded = recorded_run(run_dir)
        if recorded is not None and recorded.dataset_source:
            source = Path(recorded.dataset_source)
        else:
            source = dataset_source(config)
        if recorded is not None:
            precision: TrainPrecision = recorded.precision or "fp32"
        else:
            precision = train_precision(config.train.precision, self.device)
        problems = contradictions(config, self.metadata, source)
        if problems:
            raise UserError(
                f"The cache {self.cache} cannot serve this trial: " + "; ".join(problems) + ".",
                "Search only over settings the cache allows.",
            )
        lpm = self.metadata.lpm
        raise_side_problems(side_problems(config.side, lpm.embed_dim, lpm.num_heads, lpm.patch_size), lpm.name)
        spec = model_spec(config, self.metadata)
        stream = RngStream(config.train.seed, self.device)
        with stream:
            model = FPTPlus(spec).to(self.device)
        learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train = config.train
        lr = train.lr if train.lr is not None else self.metadata.default_lr
        flat: FlatParameters | None = None
        if stackable(model):
            flat = FlatParameters(model)
            optimizer = adamw([flat.buffer], train, lr)
        else:
            optimizer = adamw(model.parameters(), train, lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(train.epochs * self.steps_per_epoch))
        going_on = run_dir is not None
        if run_dir is None:
            run_dir = new_run_dir(config, "fptplus" if spec.use_prompts else "side-only")
        else:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        tracker = RunTracker(run_dir, list(train.loggers), train.mlflow_experiment or config.dataset.name,
                             mlflow_uri(train.mlflow_uri, train.runs_root),
                             {"lr": lr, "epochs": train.epochs, "batch_size": train.batch_size,
                              "weight_decay": train.weight_decay, "seed": train.seed, "cache": str(self.cache)},
                             train.mlflow_parent_run)
        weights = class_weights(train, self.train_counts)
        trial = PackedTrial(config=config, run_dir=run_dir, source=source, spec=spec, model=model, flat=flat,
                            optimizer=optimizer, scheduler=scheduler, stream=stream, lr=lr, learnable=learnable,
                            tracker=tracker,
                            class_weights=None if weights is None else torch.tensor(weights, dtype=torch.float32,
                                                                                   device=self.device),
                            precision=precision)
        self.write_run_files(trial)
        tracker.line(f"{'going on' if going_on else 'started'}: {config.dataset.name} from the cache {self.cache}, "
                     f"{learnable:,} learnable parameters, lr {lr:g}, {train.epochs} epochs on {self.device} "
                     f"in {trial.precision}; samples: {self.residency.why}")
        return trial

    def write_run_files(self, trial: PackedTrial) -> None:
        """The trial's config.yaml and run.json: the cache, model and device it trains with."""
        write_config(trial.run_dir, trial.config)
        write_json(trial.run_dir / "run.json", {
            "cache": str(self.cache.resolve()), "cache_key": self.metadata.cache_key,
            "dataset": trial.config.dataset.name, "dataset_source": str(trial.source),
            # the labels, classes and splits it trained on: tables/<label_table>.json in the store (format 4)
            "label_table": self.metadata.label_table or None,
            "model_spec": trial.spec.model_dump(), "class_names": self.metadata.class_names,
            "normalization": self.metadata.normalization.model_dump(), "learnable_params": trial.learnable,
            "lr": trial.lr,
            # what it trained on and how: the class counts of its training samples, the weights of its
            # loss (null: plain cross-entropy), the sampler, and for a fold of a cross-validation which one
            "train_class_counts": self.train_counts.tolist(),
            "class_weights": None if trial.class_weights is None else trial.class_weights.tolist(),
            "sampler": trial.config.train.sampler,
            "fold": None if trial.config.train.fold is None else {
                "fold": trial.config.train.fold, "folds": trial.config.train.folds, "seed": trial.config.train.fold_seed},
            # bit-for-bit repeatability depends on these (docs/sweeps.md, "Packed trials")
            "device": str(self.device), "torch_threads": self._torch_threads(trial), "torch_version": torch.__version__,
            # the arithmetic of its training forward (train.precision resolved); evaluation is fp32
            "precision": trial.precision,
            # where the training and validation samples were served from (train.resident resolved)
            "resident": self.residency.record(),
        })

    def _torch_threads(self, trial: PackedTrial) -> int:
        """The torch threads the trial's model computes on: one in a stack thread, else this thread's."""
        return 1 if self.threads is not None and trial.flat is not None else torch.get_num_threads()

"""Training K side networks side by side on one read of each cached batch.

On a GPU, reading and decoding the cache dominates a trial, so trials that see the same batches
in the same order (same batch size, seed and data settings) share them: each batch is read once,
augmented once, and every model of the pack steps on it. A pack of one is an ordinary
`train_side` run; the same code serves both. Models of one architecture are stacked
(stages/model/stacked_model.py); on a CPU with several torch threads, in one stack per thread, each
stepped in a stack thread of its own on one torch thread (stages/train/stack_threads.py).

A packed trial gives exactly the result it gives alone on one torch thread: its model is
initialised from its own seed, and its dropout draws from its own random stream (`RngStream`),
swapped into torch's global generators only while that model draws (in the pack's own thread).
Augmentation has a stream of its own, seeded by train.seed, and is computed once per batch for
the whole pack. A lone model on more threads agrees with it to float32 rounding only
(docs/sweeps.md, "Packed trials").
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.errors import StopRequested
from fpt.stages.core.files import append_jsonl, copy_file, write_json
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.registry import dataset_source
from fpt.stages.extract.run import resolve_device
from fpt.stages.extract.settings_check import raise_side_problems, side_problems
from fpt.stages.model.flat_parameters import FlatParameters
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.model.stacked_model import StackedModels, stackable
from fpt.stages.runs.metrics import Metrics, classification_metrics
from fpt.stages.runs.run_folder import (
    load_checkpoint, new_run_dir, save_checkpoint, save_tensors, write_config, write_predictions,
)
from fpt.stages.runs.run_summary import summarize_run
from fpt.stages.runs.trained_run import read_run
from fpt.stages.train.augment import train_images
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.cache_choice import contradictions, find_cache
from fpt.stages.train.recipe import (
    EpochRecord, ReadyBatch, TrainResult, adamw, half_cycle_cosine, model_spec, optimization_step, predict_many,
    predict_models, ready_batches, use_prefetch,
)
from fpt.stages.train.resume_state import (
    keep_epoch_lines, metrics_from_state, metrics_to_state, resume_path, save_resume_state,
)
from fpt.stages.train.rng_stream import RngStream
from fpt.stages.train.stack_threads import StackThreads
from fpt.stages.train.stacked_step import StepMember, dropout_masks, member_update, stacked_losses


def pack_key(config: PipelineConfig) -> str:
    """Trials with equal keys see identical batches and augmentations, so they can be packed."""
    train, side = config.train, config.side
    return repr((
        train.batch_size, train.seed, train.in_memory, train.shuffle_buffer_shards, train.device,
        train.augment.model_dump_json(), side.input_size, side.use_prompts,
    ))


@dataclass
class PackedTrial:
    """One model of a pack with its optimiser, schedule, random stream and run folder."""

    config: PipelineConfig
    run_dir: Path | None = None
    error: str | None = None
    spec: ModelSpec | None = None
    model: FPTPlus | None = None
    flat: FlatParameters | None = None  # the model's parameters in one buffer, for a model that is stacked
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    stream: RngStream | None = None
    learnable: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_val: Metrics | None = None
    loss_sum: float = 0.0
    seen: int = 0
    tests: dict[str, Metrics] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] | None = None  # kept for the resume state only

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def epochs(self) -> int:
        return self.config.train.epochs


@dataclass
class StackGroup:
    """Trials of one architecture stepped together; `stack` is None for a model trained on its own
    because the stacked forward cannot reproduce it (see `stackable`)."""

    trials: list[PackedTrial]
    stack: StackedModels | None


def _member(trial: PackedTrial) -> StepMember:
    assert trial.model is not None and trial.optimizer is not None and trial.stream is not None
    return StepMember(trial.model, trial.optimizer, trial.scheduler, trial.stream, trial.config.train.grad_clip)


class TrialOutcome:
    """What a pack returns for each trial: its result, or the error that stopped it."""

    def __init__(self, config: PipelineConfig, result: TrainResult | None = None, error: str | None = None) -> None:
        self.config = config
        self.result = result
        self.error = error


def _pack_cache(configs: list[PipelineConfig], explicit: Path | None) -> Path:
    """The cache of the pack; a trial the cache cannot serve fails on its own later."""
    if explicit is not None:
        return explicit
    first_error: UserError | None = None
    for config in configs:
        try:
            return find_cache(config, dataset_source(config))
        except UserError as error:
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _recorded_source(run_dir: Path | None) -> Path | None:
    """The dataset source a run that goes on recorded when it started (its config's relative paths may
    point elsewhere from another working folder; its cache was checked by key)."""
    if run_dir is None or not (run_dir / "run.json").is_file():
        return None
    source = read_run(run_dir).dataset_source
    return Path(source) if source else None


class Pack:
    """K trials trained on one stream of batches; `run()` returns one outcome per trial."""

    def __init__(self, configs: list[PipelineConfig], cache_path: Path | None = None,
                 run_dirs: list[Path] | None = None, isolate_failures: bool = False,
                 progress: Any = None, description: str = "Training", draw_pictures: bool = True,
                 resumable: bool = False, resume: list[dict[str, Any]] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        """resumable: keep a resume state for every trial after every epoch it trains;
        resume: one such state (stages/train/resume_state.py) per trial to go on from, all from the same
        epoch (the states a pack of these trials kept together), with run_dirs their run folders;
        should_stop: asked before every step; True ends the run with `StopRequested` (each trial
        keeps the resume state of its last finished epoch, if the pack keeps them)."""
        if not configs:
            raise ValueError("a pack needs at least one trial")
        if resume is not None and (len(resume) != len(configs) or len({s["epoch"] for s in resume}) != 1
                                   or run_dirs is None):
            raise ValueError("a resumed pack needs every trial's state, all from one epoch, and their run folders")
        keys = {pack_key(c) for c in configs}
        if len(keys) > 1:
            raise ValueError("trials of a pack must share batch size, seed and data settings")
        self.began = time.perf_counter()
        self.configs = configs
        self.isolate = isolate_failures
        self.progress = progress
        self.description = description
        self.draw_pictures = draw_pictures
        lead = configs[0]
        self.path = _pack_cache(configs, cache_path)
        self.reader = CacheReader(self.path)
        self.metadata = self.reader.metadata
        self.device = resolve_device(lead.train.device)
        self.prefetch = use_prefetch(lead.train.prefetch, self.device)
        self.side_size = lead.side.input_size
        train = lead.train
        common = dict(with_features=lead.side.use_prompts, buffer_shards=train.shuffle_buffer_shards,
                      in_memory=train.in_memory)
        self.train_batches = SplitBatches(self.reader, "train", train.batch_size, shuffle=True, seed=train.seed, **common)
        self.val_batches = SplitBatches(self.reader, "val", train.batch_size, shuffle=False, **common)
        self.test_batches = SplitBatches(self.reader, "test", train.batch_size, shuffle=False, **common)
        self.augment_stream = RngStream(train.seed, self.device)
        self.generator = torch.Generator().manual_seed(train.seed)
        self.trials = [PackedTrial(config=c, run_dir=(run_dirs[i] if run_dirs else None)) for i, c in enumerate(configs)]
        self._groups: list[StackGroup] = []
        self._grouped: list[int] = []
        self.resumable = resumable or resume is not None
        self.should_stop = should_stop
        self.epochs_done = 0
        self._splitting = threading.Lock()
        self.threads = StackThreads.for_pack(self.device, len(self.trials))
        for trial in self.trials:
            self._guard(trial, self._prepare, trial)
        if resume is not None:  # the shared streams are the same in every state of the pack
            self._restore_shared(resume[0])
            for trial, state in zip(self.trials, resume):
                self._guard(trial, self._restore, trial, state)

    # -- failure isolation -------------------------------------------------------------------
    def _guard(self, trial: PackedTrial, action: Callable[..., Any], *args: Any) -> Any:
        if not trial.ok:
            return None
        if not self.isolate:
            return action(*args)
        try:
            return action(*args)
        except UserError as error:
            trial.error = error.paragraph()
        except Exception as error:  # one trial's failure must not stop the others
            trial.error = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=6)
        return None

    # -- resuming an interrupted run ---------------------------------------------------------------
    def _save_resume_state(self, trial: PackedTrial, epoch: int) -> None:
        assert trial.run_dir is not None and trial.model is not None and trial.stream is not None
        save_resume_state(trial.run_dir, {
            "epoch": epoch,
            "model": {name: tensor.detach().cpu() for name, tensor in trial.model.state_dict().items()},
            "optimizer": trial.optimizer.state_dict() if trial.optimizer is not None else {},
            "scheduler": trial.scheduler.state_dict(),
            "dropout_stream": trial.stream.state,
            "augment_stream": self.augment_stream.state,
            "augment_generator": self.generator.get_state(),
            "shuffle": self.train_batches.rng.bit_generator.state,
            "best_score": trial.best_score, "best_epoch": trial.best_epoch,
            "best_val": metrics_to_state(trial.best_val), "best_weights": trial.best_weights,
        })
        self.epochs_done = epoch

    def _restore_shared(self, state: dict[str, Any]) -> None:
        """The pack's own streams (augmentation, shuffle order) as they were at the end of the state's epoch."""
        self.augment_stream.state = state["augment_stream"]
        self.generator.set_state(state["augment_generator"])
        self.train_batches.rng.bit_generator.state = state["shuffle"]
        self.epochs_done = state["epoch"]

    def _restore(self, trial: PackedTrial, state: dict[str, Any]) -> None:
        """Put the trial back as it was at the end of the state's epoch."""
        assert trial.run_dir is not None and trial.model is not None and trial.stream is not None
        assert trial.optimizer is not None
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
        trial.scheduler.load_state_dict(state["scheduler"])
        trial.stream.state = state["dropout_stream"]
        trial.best_score, trial.best_epoch = state["best_score"], state["best_epoch"]
        trial.best_val, trial.best_weights = metrics_from_state(state["best_val"]), state["best_weights"]
        if trial.best_weights is not None:
            save_tensors(trial.run_dir / "checkpoints" / "best.safetensors", trial.best_weights,
                         {"epoch": str(trial.best_epoch)})
        keep_epoch_lines(trial.run_dir, state["epoch"])

    # -- per-trial pieces --------------------------------------------------------------------
    def _prepare(self, trial: PackedTrial) -> None:
        config = trial.config
        source = _recorded_source(trial.run_dir) or dataset_source(config)
        problems = contradictions(config, self.metadata, source)
        if problems:
            raise UserError(
                f"The cache {self.path} cannot serve this trial: " + "; ".join(problems) + ".",
                "Search only over settings the cache allows.",
            )
        lpm = self.metadata.lpm
        raise_side_problems(side_problems(config.side, lpm.embed_dim, lpm.num_heads, lpm.patch_size), lpm.name)
        spec = model_spec(config, self.metadata)
        trial.stream = RngStream(config.train.seed, self.device)
        with trial.stream:
            trial.model = FPTPlus(spec).to(self.device)
        trial.spec = spec
        trial.learnable = sum(p.numel() for p in trial.model.parameters() if p.requires_grad)
        train = config.train
        lr = train.lr if train.lr is not None else self.metadata.default_lr
        if stackable(trial.model):
            trial.flat = FlatParameters(trial.model)
            trial.optimizer = adamw([trial.flat.buffer], train, lr)
        else:
            trial.optimizer = adamw(trial.model.parameters(), train, lr)
        total_steps = train.epochs * len(self.train_batches)
        trial.scheduler = torch.optim.lr_scheduler.LambdaLR(trial.optimizer, half_cycle_cosine(total_steps))
        if trial.run_dir is None:
            trial.run_dir = new_run_dir(config, "fptplus" if spec.use_prompts else "side-only")
        else:
            (trial.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_config(trial.run_dir, config)
        write_json(trial.run_dir / "run.json", {
            "cache": str(self.path.resolve()), "cache_key": self.metadata.cache_key, "dataset": config.dataset.name,
            "dataset_source": str(source), "model_spec": spec.model_dump(),
            "class_names": self.metadata.class_names, "normalization": self.metadata.normalization.model_dump(),
            "learnable_params": trial.learnable, "lr": lr,
            # bit-for-bit repeatability depends on these (docs/sweeps.md, "Packed trials")
            "device": str(self.device), "torch_threads": self._torch_threads(trial), "torch_version": torch.__version__,
        })

    def _torch_threads(self, trial: PackedTrial) -> int:
        """The torch threads the trial's model computes on: one in a stack thread, else this thread's."""
        return 1 if self.threads is not None and trial.flat is not None else torch.get_num_threads()

    def _step_unstacked(self, trial: PackedTrial, images: torch.Tensor, keys: torch.Tensor | None,
                        values: torch.Tensor | None, labels: torch.Tensor) -> None:
        """The module's own forward, for a model the stacked forward cannot reproduce."""
        assert trial.model is not None and trial.optimizer is not None and trial.stream is not None
        with trial.stream:
            if not trial.model.training:  # after an evaluation; train() walks every module
                trial.model.train()
            loss = optimization_step(trial.model, trial.optimizer, trial.scheduler, images, keys, values, labels,
                                     trial.config.train.grad_clip)
        self._count(trial, loss.item(), len(labels))

    def _update(self, trial: PackedTrial, loss: float, count: int) -> None:
        member_update(_member(trial))
        self._count(trial, loss, count)

    @staticmethod
    def _count(trial: PackedTrial, loss: float, count: int) -> None:
        trial.loss_sum += loss * count
        trial.seen += count

    # -- stacking ------------------------------------------------------------------------------
    def _stack_groups(self, trials: list[PackedTrial]) -> list[StackGroup]:
        """The trials grouped by architecture, each group's parameters stacked (in as many stacks as
        the pack has stack threads); rebuilt when the trials in training change (a trial finished
        its epochs or failed)."""
        if [id(t) for t in trials] != self._grouped:
            by_spec: dict[str, list[PackedTrial]] = {}
            alone: list[StackGroup] = []
            for trial in trials:
                assert trial.model is not None and trial.spec is not None
                if trial.flat is not None:
                    by_spec.setdefault(trial.spec.model_dump_json(), []).append(trial)
                else:
                    alone.append(StackGroup([trial], None))
            parts = self.threads.workers if self.threads is not None else 1
            self._groups = [StackGroup(part, StackedModels([t.flat for t in part]))
                            for same in by_spec.values() for part in _split_evenly(same, parts)] + alone
            self._grouped = [id(t) for t in trials]
        return self._groups

    def _split(self, group: StackGroup) -> list[StackGroup]:
        """Stack each trial of a failing group on its own, so the failure can be pinned on its trial."""
        singles = [StackGroup([t], StackedModels([t.flat])) for t in group.trials if t.ok and t.flat is not None]
        with self._splitting:  # stack threads may split their groups at the same time
            position = self._groups.index(group)
            self._groups[position:position + 1] = singles
        return singles

    def _step(self, groups: list[StackGroup], images: torch.Tensor, keys: torch.Tensor | None,
              values: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Every model's step on the batch: the stacks side by side in the stack threads, if any.
        Random draws stay in this thread, as a model's random stream is swapped into torch's global
        generator while it draws: the models trained unstacked step here, and the stacks' dropout
        masks are drawn here before the stacks run."""
        stacks = [g for g in groups if g.stack is not None and any(t.ok for t in g.trials)]
        for group in groups:
            if group.stack is None:
                self._train_step(group, images, keys, values, labels)
        masks = [dropout_masks(g.stack, [_member(t).stream for t in g.trials], len(labels), images.device)
                 for g in stacks]
        if self.threads is None:
            for group, mask in zip(stacks, masks):
                self._train_step(group, images, keys, values, labels, mask)
        else:
            self.threads.map(lambda group, mask: self._train_step(group, images, keys, values, labels, mask),
                             stacks, masks)

    def _train_step(self, group: StackGroup, images: torch.Tensor, keys: torch.Tensor | None,
                    values: torch.Tensor | None, labels: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        """One step of a group; `masks`: a stack's dropout masks, drawn by `_step` (None: no dropout)."""
        if group.stack is None:
            (trial,) = group.trials
            self._guard(trial, self._step_unstacked, trial, images, keys, values, labels)
            return
        if not any(t.ok for t in group.trials):
            return
        streams = [_member(t).stream for t in group.trials]
        if len(group.trials) == 1:  # a stack of one: its failure is its trial's own
            losses = self._guard(group.trials[0], stacked_losses, group.stack, streams, images, keys, values, labels,
                                 masks)
            if losses is None:
                return
        else:
            try:
                losses = stacked_losses(group.stack, streams, images, keys, values, labels, masks)
            except Exception:
                if not self.isolate:
                    raise
                row = {id(t): k for k, t in enumerate(group.trials)}
                for single in self._split(group):
                    k = row[id(single.trials[0])]
                    self._train_step(single, images, keys, values, labels, None if masks is None else masks[k:k + 1])
                return
        for trial, loss in zip(group.trials, losses.tolist()):
            self._guard(trial, self._update, trial, loss, len(labels))

    def _end_epoch(self, trial: PackedTrial, epoch: int, seconds: float,
                   prediction: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> None:
        assert trial.run_dir is not None and trial.model is not None
        _, labels, probabilities, loss = prediction
        val = classification_metrics(labels, probabilities, loss)
        record = EpochRecord(epoch=epoch, train_loss=trial.loss_sum / max(trial.seen, 1),
                             lr=trial.scheduler.get_last_lr()[0], seconds=seconds, val=val)
        score = val.auc if not math.isnan(val.auc) else val.accuracy
        checkpoints = trial.run_dir / "checkpoints"
        # checkpoints first, the epoch's metrics line after them: a write that fails (a full disk) leaves
        # no line for an epoch whose files are not all written (the resume state comes last of all)
        if score > trial.best_score:
            trial.best_score, trial.best_epoch, trial.best_val = score, epoch, val
            save_checkpoint(checkpoints / "best.safetensors", trial.model, {"epoch": str(epoch)})
            if self.resumable:
                trial.best_weights = {k: v.detach().cpu().clone() for k, v in trial.model.state_dict().items()}
        if epoch == trial.epochs:
            if trial.best_epoch == epoch:
                copy_file(checkpoints / "best.safetensors", checkpoints / "last.safetensors")
            else:
                save_checkpoint(checkpoints / "last.safetensors", trial.model, {"epoch": str(epoch)})
        append_jsonl(trial.run_dir / "metrics.jsonl", record.model_dump())
        trial.loss_sum, trial.seen = 0.0, 0

    def _record_test(self, trial: PackedTrial, which: str,
                     prediction: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> None:
        assert trial.run_dir is not None
        indices, labels, probabilities, loss = prediction
        trial.tests[which] = classification_metrics(labels, probabilities, loss)
        write_predictions(trial.run_dir / f"predictions_test_{which}.csv", [self._sample_ids[i] for i in indices],
                          labels, probabilities, self.metadata.class_names)

    def _best_is_last(self, trial: PackedTrial) -> None:
        """The best epoch is the last one: the best model's test results are the last model's."""
        assert trial.run_dir is not None
        trial.tests["best"] = trial.tests["last"]
        copy_file(trial.run_dir / "predictions_test_last.csv", trial.run_dir / "predictions_test_best.csv")

    def _load_best(self, trial: PackedTrial) -> None:
        assert trial.run_dir is not None and trial.model is not None
        load_checkpoint(trial.run_dir / "checkpoints" / "best.safetensors", trial.model)

    def _finish(self, trial: PackedTrial) -> TrainResult:
        assert trial.run_dir is not None and trial.best_val is not None
        result = TrainResult(
            run_dir=trial.run_dir, cache=self.path, best_epoch=trial.best_epoch, best_val=trial.best_val,
            test_best=trial.tests["best"], test_last=trial.tests["last"], learnable_params=trial.learnable,
            seconds=time.perf_counter() - self.began,
        )
        write_json(trial.run_dir / "final_metrics.json", result.model_dump(mode="json"))
        resume_path(trial.run_dir).unlink(missing_ok=True)  # finished: nothing left to resume
        summarize_run(trial.run_dir, self.draw_pictures)
        return result

    # -- the shared loop ---------------------------------------------------------------------
    def _evaluate(self, trials: list[PackedTrial], batches: SplitBatches) -> list[tuple]:
        """Predictions of the split for each trial, in the order given, on one read of it."""
        if not trials:
            return []
        groups = self._stack_groups(trials)
        order = [t for g in groups for t in g.trials]
        for group in groups:
            if group.stack is None:  # its module's own forward, without dropout
                group.trials[0].model.eval()

        # the stacked parameters are gathered once: they do not change while evaluating
        stacked = [None if group.stack is None else group.stack.parameters() for group in groups]

        def logits_of(images: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
            def forward(group: StackGroup, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
                with torch.no_grad():  # no_grad is per thread: a stack thread does not inherit it
                    if group.stack is None:
                        return group.trials[0].model(images, keys, values).unsqueeze(0)
                    return group.stack.forward(params, images, keys, values)

            if self.threads is None:
                return torch.cat([forward(group, params) for group, params in zip(groups, stacked)])
            # the stacks in the stack threads, as they train; a model trained unstacked here
            stacks = [(group, params) for group, params in zip(groups, stacked) if group.stack is not None]
            threaded = iter(self.threads.map(forward, [g for g, _ in stacks], [p for _, p in stacks]))
            return torch.cat([forward(group, None) if group.stack is None else next(threaded) for group in groups])

        def predict() -> list[tuple]:
            found = predict_many(logits_of, len(order), batches, self.metadata, self.side_size, self.device,
                                 self.prefetch)
            by_trial = {id(t): p for t, p in zip(order, found)}
            return [by_trial[id(t)] for t in trials]

        if self.isolate:
            try:
                return predict()
            except Exception:  # find the failing model(s) one at a time
                return [self._guard(t, lambda t=t: predict_models([t.model], batches, self.metadata, self.side_size,
                                                                  self.device, self.prefetch)[0]) for t in trials]
        return predict()

    def _shared_batch(self, ready: ReadyBatch, augment: Any) -> tuple:
        norm = self.metadata.normalization
        batch = ready.batch
        with self.augment_stream:  # in this thread: the augmentation's random stream is global torch state
            images = train_images(batch.side_images, self.side_size, augment, norm.mean, norm.std, self.generator)
        return images.to(self.device), ready.keys, ready.values, torch.from_numpy(batch.labels).to(self.device)

    def run(self) -> list[TrialOutcome]:
        try:
            return self._run()
        finally:
            if self.threads is not None:
                self.threads.close()

    def _run(self) -> list[TrialOutcome]:
        augment = self.configs[0].train.augment
        max_epochs = max(t.epochs for t in self.trials)
        progress, task = self.progress, None
        if progress is not None:
            task = progress.add_task(self.description, total=max_epochs * len(self.train_batches), status="",
                                     completed=min(self.epochs_done, max_epochs) * len(self.train_batches))
        for epoch in range(self.epochs_done + 1, max_epochs + 1):
            active = [t for t in self.trials if t.ok and epoch <= t.epochs]
            if not active:
                break
            epoch_start = time.perf_counter()
            for ready in ready_batches(self.train_batches, self.device, self.prefetch):
                if self.should_stop is not None and self.should_stop():
                    raise StopRequested(f"asked to stop after {self.epochs_done} finished epoch(s)")
                images, keys, values, labels = self._shared_batch(ready, augment)
                self._step(self._stack_groups(active), images, keys, values, labels)
                if progress is not None:
                    losses = [t.loss_sum / t.seen for t in active if t.ok and t.seen]
                    status = f"epoch {epoch} loss {losses[0]:.4f}" if len(active) == 1 and losses else f"epoch {epoch}"
                    progress.update(task, advance=1, status=status)
            active = [t for t in active if t.ok]
            seconds = time.perf_counter() - epoch_start
            for trial, prediction in zip(active, self._evaluate(active, self.val_batches)):
                if prediction is not None:
                    self._guard(trial, self._end_epoch, trial, epoch, seconds, prediction)
            if self.resumable:
                for trial in active:
                    self._guard(trial, self._save_resume_state, trial, epoch)
            if progress is not None and len(active) == 1 and active[0].best_val is not None:
                progress.update(task, status=f"epoch {epoch} val AUC (best) {active[0].best_val.auc:.4f}")
        if progress is not None and task is not None:
            progress.update(task, completed=max_epochs * len(self.train_batches))
        self._sample_ids = self.reader.sample_ids()
        finishing = [t for t in self.trials if t.ok]
        for trial, prediction in zip(finishing, self._evaluate(finishing, self.test_batches)):
            if prediction is not None:
                self._guard(trial, self._record_test, trial, "last", prediction)
        # a trial whose best epoch is its last has one model: its test results are already made
        for trial in finishing:
            if trial.ok and trial.best_epoch == trial.epochs and "last" in trial.tests:
                self._guard(trial, self._best_is_last, trial)
        finishing = [t for t in finishing if t.ok and "best" not in t.tests]
        for trial in finishing:
            self._guard(trial, self._load_best, trial)
        finishing = [t for t in finishing if t.ok]
        for trial, prediction in zip(finishing, self._evaluate(finishing, self.test_batches)):
            if prediction is not None:
                self._guard(trial, self._record_test, trial, "best", prediction)
        outcomes = []
        for trial in self.trials:
            result = self._guard(trial, self._finish, trial)
            outcomes.append(TrialOutcome(trial.config, result=result, error=trial.error))
        return outcomes


def _split_evenly(items: list[PackedTrial], parts: int) -> list[list[PackedTrial]]:
    """`items` in min(parts, len(items)) runs of consecutive items whose lengths differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(parts)]


def train_pack(configs: list[PipelineConfig], cache_path: Path | None = None, run_dirs: list[Path] | None = None,
               isolate_failures: bool = True, progress: Any = None, draw_pictures: bool = True,
               resumable: bool = False, resume: list[dict[str, Any]] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[TrialOutcome]:
    """Train the given trials side by side; one outcome (result or error) per trial, in order."""
    return Pack(configs, cache_path, run_dirs, isolate_failures, progress, draw_pictures=draw_pictures,
                resumable=resumable, resume=resume, should_stop=should_stop).run()

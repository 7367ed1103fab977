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

`Pack` runs the epochs; each job is a module of its own:
    trial_setup.py      the pack's cache, and each trial built whole with its run folder
    trial_state.py      a trial: its model, optimiser and random stream, and where its training is
    pack_batches.py     the batches and augmentation the trials share
    pack_stacks.py      the trials grouped in stacks by architecture
    pack_step.py        one training step of every model
    pack_evaluation.py  validation and test predictions on one read of a split
    best_epoch.py       the best epoch and the checkpoints and metrics line of each epoch
    trial_results.py    what the predictions become in the run folder, and final_metrics.json
    pack_resume.py      the resume states kept after every epoch, and a pack put back from them
    pack_failures.py    a failing trial stopping alone where failures are isolated
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fpt.cache.reader import CacheReader
from fpt.stages.core.errors import StopRequested
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.extract.run import resolve_device
from fpt.stages.runs.metrics import Metrics
from fpt.stages.train.pack_batches import PackBatches
from fpt.stages.train.pack_evaluation import PackEvaluation
from fpt.stages.train.pack_failures import Failure, Isolation
from fpt.stages.train.pack_resume import PackResume
from fpt.stages.train.pack_stacks import PackStacks
from fpt.stages.train.pack_step import PackStep
from fpt.stages.train.recipe import TrainResult
from fpt.stages.train.stack_threads import StackThreads
from fpt.stages.train.trial_results import end_epoch, finish, prune
from fpt.stages.train.trial_setup import TrialSetup, pack_cache, pack_label_table
from fpt.stages.train.trial_state import PackedTrial


def pack_key(config: PipelineConfig) -> str:
    """Trials with equal keys see identical batches and augmentations, so they can be packed: the same
    samples (split or fold) drawn the same way. Class weights may differ, as each model has its own loss."""
    train, side = config.train, config.side
    return repr((
        train.batch_size, train.seed, train.in_memory, train.shuffle_buffer_shards, train.device,
        train.augment.model_dump_json(), side.input_size, side.use_prompts,
        train.sampler, train.folds, train.fold_seed, train.fold,
    ))


# Asked after each of a trial's epochs with the epoch and its validation metrics; True stops (prunes) the
# trial there. A search (pipeline/optuna_search.py) gives one per trial; the pack knows nothing of it.
EpochHook = Callable[[int, Metrics], bool]


class TrialOutcome:
    """What a pack returns for each trial: its result, the error that stopped it, or the epoch it was pruned at."""

    def __init__(self, config: PipelineConfig, result: TrainResult | None = None, error: str | None = None,
                 pruned_at: int | None = None) -> None:
        self.config = config
        self.result = result
        self.error = error
        self.pruned_at = pruned_at


class Pack:
    """K trials trained on one stream of batches; `run()` returns one outcome per trial."""

    def __init__(self, configs: list[PipelineConfig], cache_path: Path | None = None,
                 run_dirs: list[Path] | None = None, isolate_failures: bool = False,
                 progress: Any = None, description: str = "Training", draw_pictures: bool = True,
                 resumable: bool = False, resume: list[dict[str, Any]] | None = None,
                 should_stop: Callable[[], bool] | None = None, epoch_hooks: list[EpochHook | None] | None = None) -> None:
        """epoch_hooks: one per trial (or None): asked after each of its epochs, True prunes it there;
        resumable: keep a resume state for every trial after every epoch it trains;
        resume: one such state (stages/train/resume_state.py) per trial to go on from, all from the same
        epoch (the states a pack of these trials kept together), with run_dirs their run folders;
        should_stop: asked before every step; True ends the run with `StopRequested` (each trial
        keeps the resume state of its last finished epoch, if the pack keeps them);
        progress: the caller's progress display (rich's `Progress`), or None for none."""
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
        self.progress = progress
        self.description = description
        self.draw_pictures = draw_pictures
        self.resumable = resumable or resume is not None
        self.should_stop = should_stop
        self.epoch_hooks = epoch_hooks or [None] * len(configs)
        self.isolation = Isolation(isolate_failures)
        lead = configs[0]
        self.cache = pack_cache(configs, cache_path)
        self.batches = PackBatches(CacheReader(self.cache, pack_label_table(self.cache, configs, run_dirs)), lead,
                                   resolve_device(lead.train.device))
        self.threads = StackThreads.for_pack(self.batches.device, len(configs))
        stacks = PackStacks(self.threads.workers if self.threads is not None else 1)
        self.steps = PackStep(stacks, self.threads, self.isolation)
        self.evaluation = PackEvaluation(self.batches, stacks, self.threads, self.isolation)
        self.resume = PackResume(self.batches)
        setup = TrialSetup(self.cache, self.batches.metadata, self.batches.device, len(self.batches.train),
                           self.threads, self.batches.train.class_counts, self.batches.residency)
        # each trial, or the failure that stopped its setup (where failures are isolated)
        self._slots = [self.isolation.attempt(setup.build, config, run_dirs[i] if run_dirs else None)
                       for i, config in enumerate(configs)]
        self.trials = [slot for slot in self._slots if isinstance(slot, PackedTrial)]
        self.trials_index = {id(slot): i for i, slot in enumerate(self._slots) if isinstance(slot, PackedTrial)}
        if resume is not None:  # the shared streams are the same in every state of the pack
            self.resume.restore_shared(resume[0])
            for slot, state in zip(self._slots, resume):
                if isinstance(slot, PackedTrial):
                    self.isolation.guard(slot, self.resume.restore, slot, state)

    @property
    def epochs_done(self) -> int:
        """The last epoch whose resume states the pack has kept (or went on from)."""
        return self.resume.epochs_done

    def run(self) -> list[TrialOutcome]:
        try:
            return self._run()
        finally:
            if self.threads is not None:
                self.threads.close()

    def _run(self) -> list[TrialOutcome]:
        max_epochs = max(c.train.epochs for c in self.configs)
        steps = len(self.batches.train)
        progress, task = self.progress, None
        if progress is not None and len(self.configs) == 1 and self.trials:
            progress.print(f"Run folder: {self.trials[0].run_dir}")
            progress.print(f"Samples: {self.batches.residency.why}")
        if progress is not None:
            task = progress.add_task(self.description, total=max_epochs * steps, status="",
                                     completed=min(self.epochs_done, max_epochs) * steps)
        for epoch in range(self.epochs_done + 1, max_epochs + 1):
            active = [t for t in self.trials if t.ok and epoch <= t.epochs]
            if not active:
                break
            epoch_start = time.perf_counter()
            for batch in self.batches.training_epoch():
                if self.should_stop is not None and self.should_stop():
                    raise StopRequested(f"asked to stop after {self.epochs_done} finished epoch(s)")
                self.steps.step(active, *batch)
                if progress is not None:
                    losses = [t.loss_sum / t.seen for t in active if t.ok and t.seen]
                    status = f"epoch {epoch} loss {losses[0]:.4f}" if len(active) == 1 and losses else f"epoch {epoch}"
                    progress.update(task, advance=1, status=status)
            active = [t for t in active if t.ok]
            seconds = time.perf_counter() - epoch_start
            for trial, prediction in zip(active, self.evaluation.predict(active, self.batches.val)):
                if prediction is not None:
                    line = self.isolation.guard(trial, end_epoch, trial, epoch, seconds, prediction, self.resumable)
                    if progress is not None and len(self.configs) == 1 and line:
                        progress.print(line)  # one line per epoch: above a bar, or alone in a log file
                    self._ask_hook(trial, epoch)
            active = [t for t in active if t.ok]
            if self.resumable:
                for trial in active:
                    self.isolation.guard(trial, self.resume.save, trial, epoch)
            if progress is not None and len(active) == 1 and active[0].best is not None:
                progress.update(task, status=f"epoch {epoch} val AUC (best) {active[0].best.val.auc:.4f}")
        if progress is not None:
            progress.update(task, completed=max_epochs * steps)
        self.evaluation.test([t for t in self.trials if t.ok])
        return [self._outcome(config, slot) for config, slot in zip(self.configs, self._slots)]

    def _ask_hook(self, trial: PackedTrial, epoch: int) -> None:
        """Prune the trial after this epoch if its hook says so (not after its last epoch: it is done)."""
        hook = self.epoch_hooks[self.trials_index[id(trial)]]
        if hook is None or not trial.ok or trial.last_val is None or epoch >= trial.epochs:
            return
        if self.isolation.guard(trial, hook, epoch, trial.last_val):
            self.isolation.guard(trial, prune, trial, epoch)

    def _outcome(self, config: PipelineConfig, slot: PackedTrial | Failure) -> TrialOutcome:
        """The trial's result once finished (final_metrics.json, its report), or what stopped it."""
        if isinstance(slot, Failure):
            return TrialOutcome(config, error=slot.text)
        if slot.pruned_at is not None and slot.error is None:
            return TrialOutcome(config, pruned_at=slot.pruned_at)
        result = self.isolation.guard(slot, finish, slot, self.cache, self.began, self.draw_pictures)
        if slot.error is not None:
            slot.tracker.line(f"stopped: {slot.error}")
            slot.tracker.close()
        return TrialOutcome(config, result=result, error=slot.error)


def train_pack(configs: list[PipelineConfig], cache_path: Path | None = None, run_dirs: list[Path] | None = None,
               isolate_failures: bool = True, progress: Any = None, draw_pictures: bool = True,
               resumable: bool = False, resume: list[dict[str, Any]] | None = None,
               should_stop: Callable[[], bool] | None = None,
               epoch_hooks: list[EpochHook | None] | None = None) -> list[TrialOutcome]:
    """Train the given trials side by side; one outcome (result, error or pruning) per trial, in order."""
    return Pack(configs, cache_path, run_dirs, isolate_failures, progress, draw_pictures=draw_pictures,
                resumable=resumable, resume=resume, should_stop=should_stop, epoch_hooks=epoch_hooks).run()

"""Searches driven by Optuna's samplers and pruners, trained as fpt's packs.

Optuna decides which trials to run (TPE, CMA-ES, QMC, GP... `sweep.method`) and which to stop early
(`sweep.pruner`); fpt trains them. Through Optuna's ask-and-tell interface the sweep asks for as
many trials as its workers' packs hold, trains them side by side on one read of the cache
(stages/train/packed_training.py), and tells each one's result before asking for the next round.
After each epoch a trial reports its validation `sweep.metric` to the study from the worker that
trains it; a trial the pruner stops leaves its pack there and the others go on.

The study lives in the sweep folder (`study.journal`, Optuna's journal file storage, which several
processes may write): `optuna-dashboard <sweep>/study.journal` shows it, and running the same sweep
again continues it: finished and pruned trials are kept, trials that were in flight go on from their
last finished epoch (their run folders keep resume states), and new ones are asked for until the
study holds `sweep.num_trials`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from fpt.cache.errors import UserError
from fpt.stages.core.settings import SweepConfig, SweepRange
from fpt.stages.runs.metrics import Metrics

STUDY_FILE = "study.journal"
STUDY_NAME = "fpt-sweep"
TRIAL_ID_ATTRIBUTE = "fpt_trial_id"
FPT_METHODS = ("grid", "random")  # expanded by fpt itself (pipeline/search_space.py)
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}

optuna.logging.set_verbosity(optuna.logging.WARNING)  # fpt reports progress itself


def is_optuna_method(method: str) -> bool:
    return method not in FPT_METHODS


def sampler_for(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `sweep.method` names: tpe, cmaes, qmc, gp, nsgaii, ... (the class name without
    `Sampler`, any case), seeded by sweep.seed, with sweep.sampler_options."""
    wanted = sweep.method.replace("_", "").lower()
    by_name = {name[: -len("Sampler")].lower(): getattr(optuna.samplers, name)
               for name in dir(optuna.samplers) if name.endswith("Sampler") and not name.startswith("Base")}
    by_name.pop("grid", None)  # fpt's own grid expands every combination; Optuna's needs the grid up front
    if wanted not in by_name:
        raise UserError(f"sweep.method {sweep.method!r} is neither fpt's grid or random nor an Optuna sampler.",
                        f"Use grid, random or one of Optuna's samplers: {', '.join(sorted(by_name))}.")
    options = dict(sweep.sampler_options)
    options.setdefault("seed", sweep.seed)
    try:
        return by_name[wanted](**options)
    except (TypeError, ImportError, ModuleNotFoundError) as error:
        raise UserError(f"Optuna's {sweep.method} sampler cannot be made with these options ({error}).",
                        "Check sweep.sampler_options against Optuna's documentation, or install what it names.") from None


def pruner_for(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    try:
        return PRUNERS[sweep.pruner](**sweep.pruner_options)
    except TypeError as error:
        raise UserError(f"Optuna's {sweep.pruner} pruner cannot be made with sweep.pruner_options ({error}).",
                        "Check sweep.pruner_options against Optuna's documentation.") from None


def direction(metric: str) -> str:
    return "minimize" if metric == "loss" else "maximize"


def distributions(sweep: SweepConfig) -> dict[str, BaseDistribution]:
    """Each parameter's Optuna distribution: a list of values is categorical, a range a float or integer one."""
    found: dict[str, BaseDistribution] = {}
    for name, spec in sorted(sweep.parameters.items()):
        if isinstance(spec, SweepRange):
            found[name] = (IntDistribution(int(spec.low), int(spec.high), log=spec.log) if spec.integer
                           else FloatDistribution(spec.low, spec.high, log=spec.log))
        else:
            if not spec:
                raise UserError(f"The sweep parameter {name} has no values.", "Give at least one value.")
            found[name] = CategoricalDistribution(spec)
    return found


def storage(folder: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))


def open_study(folder: Path, sweep: SweepConfig) -> optuna.Study:
    """The sweep's study, created in `folder` or continued from it."""
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage(folder), sampler=sampler_for(sweep),
                                pruner=pruner_for(sweep), direction=direction(sweep.metric), load_if_exists=True)
    recorded = study.user_attrs.get("metric")
    if recorded is not None and recorded != sweep.metric:
        raise UserError(f"The study in {folder / STUDY_FILE} ranks trials by {recorded}, not sweep.metric={sweep.metric}.",
                        f"Use sweep.metric={recorded} to continue it, or another sweep.name for a new study.")
    study.set_user_attr("metric", sweep.metric)
    return study


def metric_value(metrics: Metrics, metric: str) -> float | None:
    """`metric` of `metrics`, or None where it is undefined (NaN: a class absent from the split)."""
    value = getattr(metrics, metric)
    return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class PruningHook:
    """Sent with a trial to the worker that trains it (it pickles): after each epoch, report the trial's
    validation metric to the study and ask the pruner whether to stop it there. step_offset: where the
    run's epochs start among its trial's steps (a fold of a cross-validated trial: pipeline/sweep_folds.py)."""

    folder: Path
    sweep: SweepConfig
    optuna_trial_id: int
    step_offset: int = 0

    def __call__(self, epoch: int, val: Metrics) -> bool:
        value = metric_value(val, self.sweep.metric)
        if value is None:
            return False
        study = _worker_study(self.folder, self.sweep.model_dump_json(include={"pruner", "pruner_options"}))
        trial = optuna.trial.Trial(study, self.optuna_trial_id)
        trial.report(value, self.step_offset + epoch)
        return trial.should_prune()


@functools.lru_cache(maxsize=8)
def _worker_study(folder: Path, pruning: str) -> optuna.Study:
    """The study as a worker process loads it once: a fresh JournalStorage replays the whole journal, and a
    pack asks after every epoch of every trial; the loaded one reads only what was appended since.
    `pruning`: the sweep's pruner settings as JSON (the pruner lives with the study object, not in storage)."""
    sweep = SweepConfig.model_validate_json(pruning)
    return optuna.load_study(study_name=STUDY_NAME, storage=storage(folder), pruner=pruner_for(sweep))


def trial_id_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> str:
    return f"trial-{trial.number:03d}"


def settings_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[str, Any]:
    return dict(trial.params)


def in_flight(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials asked for and not told: an earlier run of the sweep stopped while they trained."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def told(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))

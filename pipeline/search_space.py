"""Expanding a sweep's search space into trials, each named by a stable hash of its settings.

A trial is a set of `--set`-style assignments (dotted path -> value) applied on top of the
base configuration. Only train-side settings may be searched: anything under `train.` or
`side.` except where runs are written and which device is used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from fpt.cache.errors import UserError
from fpt.stages.core.settings import PipelineConfig, SweepConfig, SweepRange, format_validation_error, set_in

SEARCHABLE_SECTIONS = ("train", "side")
NOT_SEARCHABLE = ("train.runs_root", "train.run_name", "train.device")
# Settings that do not change what a trial computes (where it runs, what it reports to), left out of its hash.
NOT_HASHED = {"train": {"runs_root", "run_name", "device", "loggers", "mlflow_uri", "mlflow_experiment",
                        "mlflow_parent_run"}}


class Trial(BaseModel):
    """One point of the search space and the configuration it resolves to."""

    trial_id: str
    settings: dict[str, Any]
    config: PipelineConfig


def _check_path(path: str) -> None:
    section = path.split(".", 1)[0]
    if section not in SEARCHABLE_SECTIONS or "." not in path:
        raise UserError(
            f"The sweep parameter {path!r} is not a train-side setting.",
            "Search over settings under train. or side. (e.g. train.lr, side.num_prompts); the "
            "extraction settings are fixed by the cache.",
        )
    if path in ("train.folds", "train.fold"):
        raise UserError(f"The sweep parameter {path!r} cannot be searched: trials scored on different folds "
                        "do not compare.",
                        "Set train.folds for the whole sweep (--set train.folds=5): each trial then trains its "
                        "folds and is scored by their mean.")
    if path in NOT_SEARCHABLE:
        raise UserError(f"The sweep parameter {path!r} cannot be searched.", "Remove it from sweep.parameters.")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _draw(spec: list[Any] | SweepRange, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        return _plain(spec[int(rng.integers(len(spec)))])
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    else:
        value = float(rng.uniform(spec.low, spec.high))
    return int(round(value)) if spec.integer else float(f"{value:.6g}")


def check_parameters(sweep: SweepConfig) -> None:
    """Refuse a sweep with nothing to search, or one that searches what a sweep cannot vary."""
    if not sweep.parameters:
        raise UserError(
            "The sweep has no parameters to search.",
            "Add a `sweep: parameters:` section to pipeline.yaml or a --sweep-file, e.g. "
            "parameters: {train.lr: [1e-4, 5e-4]}.",
        )
    for path in sweep.parameters:
        _check_path(path)


def expand_settings(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The settings of every trial, in a fixed order (grid: row-major over the parameters)."""
    check_parameters(sweep)
    names = sorted(sweep.parameters)
    if sweep.method == "grid":
        ranges = [name for name in names if not isinstance(sweep.parameters[name], list)]
        if ranges:
            raise UserError(
                f"Grid search needs a list of values for every parameter; {', '.join(ranges)} "
                "is a {low, high} range.",
                "Give a list of values, or set sweep.method: random.",
            )
        empty = [name for name in names if not sweep.parameters[name]]
        if empty:
            raise UserError(f"The sweep parameter(s) {', '.join(empty)} have no values.", "Give at least one value.")
        combos = itertools.product(*[sweep.parameters[name] for name in names])
        return [{name: _plain(value) for name, value in zip(names, combo)} for combo in combos]
    rng = np.random.default_rng(sweep.seed)
    return [{name: _draw(sweep.parameters[name], rng) for name in names} for _ in range(sweep.num_trials)]


def trial_id(config: PipelineConfig, cache_key: str) -> str:
    """Stable name of a trial: a hash of everything that decides its result. Settings at their defaults are
    left out, so a setting added to fpt later (at a default that keeps the old behaviour) does not rename
    the trials of an existing sweep, which would train them all again."""
    train = config.train.model_dump(mode="json", exclude=NOT_HASHED["train"], exclude_defaults=True)
    side = config.side.model_dump(mode="json", exclude_defaults=True)
    payload = {"cache_key": cache_key, "side": side, "train": train}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest[:12]


def apply_settings(base: PipelineConfig, settings: dict[str, Any]) -> PipelineConfig:
    tree = base.model_dump(mode="python")
    for path, value in settings.items():
        set_in(tree, path.split("."), value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, f"the sweep trial {settings}") from None


def build_trials(base: PipelineConfig, sweep: SweepConfig, cache_key: str) -> list[Trial]:
    """Trials of the sweep; settings that resolve to the same configuration are run once."""
    trials: dict[str, Trial] = {}
    for settings in expand_settings(sweep):
        config = apply_settings(base, settings)
        identity = trial_id(config, cache_key)
        trials.setdefault(identity, Trial(trial_id=identity, settings=settings, config=config))
    return list(trials.values())

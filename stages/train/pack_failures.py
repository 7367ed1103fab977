"""Failure isolation: in a sweep, one trial's failure must not end the trials packed with it.

A pack that isolates failures (`fpt sweep`) keeps an exception from a trial's action as that
trial's error text and goes on with the other trials; one that does not (`fpt train-side`, a pack
of one) lets it through, so the run stops with the error itself. A `UserError` keeps its
one-paragraph message; any other exception its type, message and the first frames of its
traceback, for the sweep's error.txt.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fpt.cache.errors import UserError
from fpt.stages.train.trial_state import PackedTrial

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """The error text of an action that failed in a pack that isolates failures."""

    text: str


class Isolation:
    """Runs the actions of a pack's trials, isolating their failures or not (`isolate`)."""

    def __init__(self, isolate: bool) -> None:
        self.isolate = isolate

    def attempt(self, action: Callable[..., T], *args: Any) -> T | Failure:
        """action(*args); where failures are isolated, an exception it raises comes back as a `Failure`."""
        if not self.isolate:
            return action(*args)
        try:
            return action(*args)
        except UserError as error:
            return Failure(error.paragraph())
        except Exception as error:  # one trial's failure must not stop the others
            return Failure(f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=6))

    def guard(self, trial: PackedTrial, action: Callable[..., T], *args: Any) -> T | None:
        """action(*args) for a trial that has not failed: its result, or None if the trial had failed
        already or fails now (its error is then the trial's)."""
        if not trial.ok:
            return None
        outcome = self.attempt(action, *args)
        if isinstance(outcome, Failure):
            trial.error = outcome.text
            return None
        return outcome

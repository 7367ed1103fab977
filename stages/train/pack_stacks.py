"""The trials of a pack in stacks: models of one architecture stepped and evaluated as one.

Models of one architecture and one training precision (a stack's forward runs in one arithmetic) are
stacked (stages/model/stacked_model.py) in as many stacks as the pack has stack threads
(stages/train/stack_threads.py), of sizes that differ by one at most. A model the stacked forward
cannot reproduce (see `stackable`) is a group of its own, without a stack. The groups are kept while
the same trials train, and rebuilt when a trial finishes its epochs or fails.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fpt.stages.model.stacked_model import StackedModels
from fpt.stages.train.trial_state import PackedTrial


@dataclass
class StackGroup:
    """Trials of one architecture stepped together; `stack` is None for a model trained on its own
    because the stacked forward cannot reproduce it (see `stackable`)."""

    trials: list[PackedTrial]
    stack: StackedModels | None


class PackStacks:
    """The groups of the trials in training, in `parts` stacks per architecture."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self._groups: list[StackGroup] = []
        self._grouped: list[int] = []  # the ids of the trials `_groups` holds, in order
        self._splitting = threading.Lock()

    def groups(self, trials: list[PackedTrial]) -> list[StackGroup]:
        """The trials grouped by architecture and precision, each group's parameters stacked; rebuilt when the
        trials in training change (a trial finished its epochs or failed)."""
        if [id(t) for t in trials] != self._grouped:
            by_spec: dict[str, list[PackedTrial]] = {}
            alone: list[StackGroup] = []
            for trial in trials:
                if trial.flat is not None:
                    by_spec.setdefault(trial.spec.model_dump_json() + trial.precision, []).append(trial)
                else:
                    alone.append(StackGroup([trial], None))
            self._groups = [StackGroup(part, StackedModels([t.flat for t in part]))
                            for same in by_spec.values() for part in _split_evenly(same, self.parts)] + alone
            self._grouped = [id(t) for t in trials]
        return self._groups

    def split(self, group: StackGroup) -> list[StackGroup]:
        """Stack each trial of a failing group on its own, so the failure can be pinned on its trial."""
        singles = [StackGroup([t], StackedModels([t.flat])) for t in group.trials if t.ok and t.flat is not None]
        with self._splitting:  # stack threads may split their groups at the same time
            position = self._groups.index(group)
            self._groups[position:position + 1] = singles
        return singles


def _split_evenly(items: list[PackedTrial], parts: int) -> list[list[PackedTrial]]:
    """`items` in min(parts, len(items)) runs of consecutive items whose lengths differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(parts)]

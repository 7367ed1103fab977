"""How long work stops: Ctrl-C in a command, or a request from the client of a dask task."""

from __future__ import annotations


class Interrupted(Exception):
    """Ctrl-C in a command that knows how its work goes on; `hint` says how."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        super().__init__(hint)


class StopRequested(Exception):
    """Raised inside a task, between two steps or batches, when its client asked the tasks to stop
    (pipeline/task_stop.py)."""

"""How the command line shows progress: rich bars on a terminal, a plain line now and then otherwise.

Installed by the command line (pipeline/cli.py) as the renderer of cache/progress.py, so every
stage's progress is drawn here and nowhere below.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY_SECONDS = 30.0


def renderer(console: Console):
    """The renderer for this console: bars where it is a terminal, plain lines where it is a file."""

    def open_bars(fields: tuple[str, ...], transient: bool) -> AbstractContextManager[Any]:
        if not console.is_terminal:
            return PlainLines(console)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   *(TextColumn(f"{{task.fields[{name}]}}") for name in fields), TimeElapsedColumn()]
        if not transient:
            columns.append(TimeRemainingColumn())
        return Progress(*columns, console=console, transient=transient)

    return open_bars


class PlainLines:
    """Progress as a line per task every PLAIN_EVERY_SECONDS and when it ends, for logs and files."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks.values():
            self._print(task)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        index = len(self.tasks)
        self.tasks[index] = {"description": description, "total": total, "completed": 0.0, "fields": dict(fields),
                             "printed": time.monotonic()}
        return index

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               description: str | None = None, total: float | None = None, **fields: Any) -> None:
        state = self.tasks[task]
        if advance is not None:
            state["completed"] += advance
        if completed is not None:
            state["completed"] = completed
        if description is not None:
            state["description"] = description
        if total is not None:
            state["total"] = total
        state["fields"].update(fields)
        if time.monotonic() - state["printed"] >= PLAIN_EVERY_SECONDS:
            self._print(state)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def print(self, *objects: Any) -> None:
        """A line of its own (an epoch's summary): printed as it comes, whole (paths in it stay copyable)."""
        self.console.print(*objects, highlight=False, soft_wrap=True)

    def _print(self, state: dict[str, Any]) -> None:
        total = "" if state["total"] is None else f"/{state['total']:.0f}"
        extra = " ".join(str(value) for value in state["fields"].values() if value)
        self.console.print(f"{state['description']}: {state['completed']:.0f}{total} {extra}".rstrip(), highlight=False)
        state["printed"] = time.monotonic()

"""Progress of long work, reported to whatever the caller shows it with.

Nothing below the command line draws: the cache and the stages report tasks (a description, a
total, steps done, status fields such as a rate) to a `Progress` opened with `open_progress`.
The command line installs the renderer (pipeline/progress_bars.py: rich bars on a terminal, plain
lines when the output is a file); where none is installed, as in a script or a test, nothing is
shown. `Progress` is the part of rich's Progress API the stages use, so a rich object is one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol


class Progress(Protocol):
    def add_task(self, description: str, total: float | None = None, **fields: Any) -> Any: ...

    def update(self, task: Any, *, advance: float | None = None, completed: float | None = None,
               description: str | None = None, **fields: Any) -> None: ...

    def advance(self, task: Any, advance: float = 1) -> None: ...

    def print(self, *objects: Any) -> None: ...


class Silent:
    """Progress that goes nowhere."""

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        return 0

    def update(self, task: Any, **changes: Any) -> None:
        return None

    def advance(self, task: Any, advance: float = 1) -> None:
        return None

    def print(self, *objects: Any) -> None:
        return None


# (fields shown beside the count, whether the bar disappears when done) -> an open-able Progress
Renderer = Callable[[tuple[str, ...], bool], AbstractContextManager[Progress]]
_renderer: Renderer | None = None


def install_renderer(renderer: Renderer | None) -> None:
    """Show every later progress report with `renderer` (None: show none)."""
    global _renderer
    _renderer = renderer


def open_progress(show: bool, fields: tuple[str, ...] = (), transient: bool = False) -> AbstractContextManager[Progress]:
    """A progress to report to, shown when `show` and a renderer is installed. `fields` are the status
    fields the tasks carry (each task's add_task gives them a first value); `transient`: the bar
    goes away when done (a check before the real work)."""
    if not show or _renderer is None:
        return Silent()
    return _renderer(fields, transient)

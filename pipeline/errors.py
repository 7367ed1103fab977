"""Errors a user can cause, reported as one paragraph without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what happened and what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} {fix}".strip())

    def paragraph(self) -> str:
        return f"{self.what} {self.fix}".strip()


class Interrupted(Exception):
    """Ctrl-C in a command that knows how its work goes on; `hint` says how."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        super().__init__(hint)

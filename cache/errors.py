"""Errors a user can cause, reported as one paragraph without a traceback.

`UserError` lives in the bottom layer so that every layer (the cache, the stages, the command line)
raises the same type, and the command line reports all of them alike.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what happened and what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} {fix}".strip())

    def paragraph(self) -> str:
        return f"{self.what} {self.fix}".strip()

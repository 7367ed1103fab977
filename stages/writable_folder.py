"""Checking that an output folder can be written before any work goes into it.

A cache root, runs folder or export folder that cannot be written (no permission, a read-only disk,
a file where the folder should be) would otherwise fail at the first write, after the image scan
or the first epoch, as an OSError traceback. The check creates the folder and a probe file in it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.errors import UserError


def writable_folder(path: Path, setting: str) -> Path:
    """`path` if a file can be created in it, or, while it does not exist yet, in the nearest folder above
    it that does (the folder itself is left to be created by whoever writes into it); otherwise a
    UserError that names the setting (or option) that chose the folder. Nothing is left behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(existing))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fpt-write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        where = "" if existing == path else f" (in {existing})"
        raise UserError(
            f"The folder {path} ({setting}) cannot be written{where}: {reason}.",
            f"Set {setting} to a folder you can write to (or fix its permissions or free some space), then run again.",
        ) from None
    return path

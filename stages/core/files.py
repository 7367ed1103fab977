"""Writing output files: whole or not at all, into folders checked before any work goes into them.

Every file fpt writes outside the cache is written to a temporary name and renamed onto its own
(`replacing`), so a crash, a full disk or Ctrl-C never leaves half a file. A cache root, runs
folder or export folder that cannot be written (no permission, a read-only disk, a file where the
folder should be) would otherwise fail at the first write, after the image scan or the first
epoch, as an OSError traceback: `writable_folder` creates a probe file in it first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fpt.cache.errors import UserError


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


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The mode a plain open() gives a new file. Some writers (safetensors) create theirs owner-only (0600);
# every file of a run folder gets this one, so checkpoints can be read by whoever can read the rest.
FILE_MODE = 0o666 & ~_process_umask()


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name to write `path` under, renamed onto it once written (with the mode a new file
    gets, FILE_MODE); removed if the writing fails (a full disk, Ctrl-C), so that neither half a file
    nor a stray temporary stays behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def copy_file(source: Path, target: Path) -> None:
    """A second copy of a finished file (the same model's checkpoint or predictions), written atomically."""
    with replacing(target) as tmp:
        shutil.copyfile(source, tmp)

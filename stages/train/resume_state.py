"""What a training run keeps after each epoch so that an interrupted run can go on where it stopped.

`fpt train-side --resume RUN` goes on with one run; `fpt sweep` run again goes on with each of its
unfinished trials (pipeline/sweep_packs.py), every trial of a pack keeping a state of its own.

`checkpoints/resume.pt` holds, as of the end of its last finished epoch, everything the rest of the
run depends on: the model's weights, the optimiser's moments, the schedule's position, the three
random streams (the model's dropout, the augmentation, the training split's shuffle order) and
the best epoch so far with its weights. A resumed run therefore trains exactly the epochs an
uninterrupted one would have (bit for bit on the same device and thread count). The file is
replaced atomically after every epoch and deleted when the run finishes.

Why the best weights are in it too: after a crash between an epoch's `best.safetensors` and its
resume state, the checkpoint on disk would be a step ahead of the state; the resumed run writes
the checkpoint and the epoch lines back as the state has them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fpt.cache.errors import UserError
from fpt.stages.core.files import atomic_write_text, replacing

RESUME_FILE = "resume.pt"
FORMAT = 1


def resume_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / RESUME_FILE


def save_resume_state(run_dir: Path, state: dict[str, Any]) -> None:
    with replacing(resume_path(run_dir)) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def saved_epoch(run_dir: Path) -> int | None:
    """The epoch of the run's resume state without reading its tensors; None without a readable one."""
    path = resume_path(run_dir)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a truncated or foreign file: the run starts over
        return None
    return state["epoch"] if _is_ours(state) else None


def load_resume_state(run_dir: Path) -> dict[str, Any]:
    """The state of an interrupted run, or a UserError that says why it cannot be resumed."""
    if (run_dir / "final_metrics.json").is_file():
        raise UserError(f"The run {run_dir} has finished; there is nothing to resume.",
                        "Start a new run with `fpt train-side`, or look at this one with `fpt report`.")
    path = resume_path(run_dir)
    if not path.is_file():
        raise UserError(
            f"The run {run_dir} has no resume state ({path.name}): it stopped before its first epoch ended, "
            "or it was trained by a version of fpt that did not keep one.",
            "Start it again with `fpt train-side --config <run folder>/config.yaml`.",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"The resume state {path} cannot be read ({type(error).__name__}: {error}).",
                        "Start the run again with `fpt train-side --config <run folder>/config.yaml`.") from None
    if not _is_ours(state):
        raise UserError(f"The resume state {path} is not one this version of fpt writes.",
                        "Start the run again with `fpt train-side --config <run folder>/config.yaml`.")
    return state


def _is_ours(state: object) -> bool:
    """A resume state in the format this version writes."""
    return isinstance(state, dict) and state.get("format") == FORMAT and isinstance(state.get("epoch"), int)


def keep_epoch_lines(run_dir: Path, epochs: int) -> None:
    """metrics.jsonl cut back to the epochs the resume state has (a line may be one epoch ahead)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _epoch_of(line) <= epochs]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _epoch_of(line: str) -> float:
    """The epoch of a metrics line; a line cut short by a crash counts as past every kept epoch."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")

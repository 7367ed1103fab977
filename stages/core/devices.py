"""Where work runs: the device a setting names, and how many cores this process may use.

`auto` means the GPU when torch sees one, everywhere (extraction, training, sweeps, dask plans).
"""

from __future__ import annotations

import os

import psutil
import torch

from fpt.cache.errors import UserError


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return psutil.cpu_count(logical=True) or 1


def wants_gpu(name: str) -> bool:
    """Whether a device setting (auto, cpu, cuda, cuda:N) runs on a GPU here: auto does when one is seen."""
    if name == "auto":
        return torch.cuda.is_available()
    return name.startswith("cuda")


def decode_workers(setting: int | str, device: torch.device) -> int:
    """extract.num_workers resolved: a number as given; auto is 0 on the CPU, cores - 1 (<= 8) on a GPU,
    counting the cores this process may use (a SLURM job's share, not the whole node)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(8, machine_cores() - 1))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if wants_gpu(name) else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{name!r} is not a device torch knows.", "Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device {name} was asked for but no CUDA GPU is available.", "Use --set extract.device=cpu.")
    return device

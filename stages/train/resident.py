"""A resident cache (train.resident): the samples a pack trains and validates on, read from the store
once and served from memory every epoch, in RAM or on the training GPU.

Streaming (stages/train/cache_batches.py) reads and decompresses the training split every epoch.
A resident copy is read once per pack, whatever its number of trials (a sweep's worker holds one per
pack it trains), and serves the same batches: `SplitBatches` walks streaming's own schedule (the
same blocks in the same random order, the same shuffle buffers and draws), holding only the sample
indices of its buffer, and gathers each batch's rows from the copy instead of from a buffer read
from the store. The test split, read once or twice at the end, is streamed.

The copy holds the rows as stored: float16 (or float32, bfloat16's bits, int8 or int4 codes with
their float16 scales) for the keys and values, uint8 side images, labels. Each batch's keys and
values are decoded to float32 by streaming's own `decode_rows`, on the device that holds them;
every step of it is exact or one float32 multiply, so a batch is the same bits resident or
streamed, on the CPU or a GPU. int8 and int4 stay encoded: a decoded copy could not be float16
(an int8 code times its float16 scale has up to 18 significant bits, float16 11), and in float32
it would be 4x (int8) and 7.5x (int4) the codes' size; decoding a batch is a small part of a
step (bench/README.md section 1). The side images stay in RAM, on the device or not: their
augmentation runs on the CPU as in streaming, which keeps its numbers.

How much memory may hold it (`choose_residency`):
    auto    the GPU when the copy's keys and values fit in AUTO_SHARE (50 %) of its free memory
            (`torch.cuda.mem_get_info`); else RAM when the copy fits in AUTO_SHARE of the available
            RAM (the machine's, or less under a SLURM job's or a container's memory limit:
            stages/core/memory.py) times this process's share of the machine (its torch threads over the cores: a
            sweep's dask worker on 1 of 2 cores counts on a quarter); else streaming. RAM is chosen
            whatever the codec: reading an uncompressed store costs streaming as much as a
            compressed one (bench/README.md section 1), the time goes to the reads and copies.
    ram     RAM; refused (with what to do) when the copy exceeds EXPLICIT_SHARE (90 %) of the
            available RAM, rather than failing later for want of memory
    device  the training GPU, refused likewise beyond 90 % of its free memory; RAM where the
            training device is the CPU
    off     streaming
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fpt.cache.errors import UserError
from fpt.cache.metadata import CacheMetadata
from fpt.cache.reader import CacheReader
from fpt.stages.core.devices import machine_cores
from fpt.stages.core.memory import free_ram

AUTO_SHARE = 0.5  # of the free GPU memory, or of this process's share of the available RAM
EXPLICIT_SHARE = 0.9  # an explicit ram or device beyond this share of the free memory is refused

Where = Literal["off", "ram", "device"]


def resident_blocks(metadata: CacheMetadata, samples: np.ndarray) -> list[tuple[int, int]]:
    """The blocks of the store a copy of `samples` (sorted cache indices) reads: each shard that holds
    one of them, cut to the samples' span (so a split's edge shard brings none of the next split)."""
    if not len(samples):
        return []
    size = metadata.storage.shard_size
    first, last = int(samples[0]), int(samples[-1]) + 1
    return [(max(first, s * size), min(last, (s + 1) * size)) for s in np.unique(samples // size).tolist()]


@dataclass(frozen=True)
class CopySize:
    """Bytes of a resident copy as stored: its keys and values (with their scales), and the rest
    (side images, labels), which is always in RAM."""

    samples: int
    features: int
    rest: int

    @staticmethod
    def of(reader: CacheReader, samples: np.ndarray, with_features: bool) -> CopySize:
        rows = sum(b - a for a, b in resident_blocks(reader.metadata, samples))
        layout = reader.stored_row_layout(with_features)
        features = set(reader.stored_feature_arrays()) if with_features else set()
        row_bytes = {name: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for name, (shape, dtype) in layout.items()}
        return CopySize(rows, rows * sum(b for n, b in row_bytes.items() if n in features),
                        rows * sum(b for n, b in row_bytes.items() if n not in features))

    @property
    def total(self) -> int:
        return self.features + self.rest


@dataclass(frozen=True)
class Residency:
    """Where a pack's training and validation samples are served from, and why (the run's log and run.json)."""

    where: Where
    why: str
    size: CopySize | None = None

    def record(self) -> dict[str, Any]:
        return {"where": self.where, "why": self.why,
                "bytes": None if self.size is None or self.where == "off" else self.size.total}


def gigabytes(count: float) -> str:
    return f"{count / 1e9:.2f} GB"


def machine_share() -> float:
    """This process's share of the machine, counted in cores: its torch threads over the cores it may use
    (1 for train-side; 1/W for each of a local dask cluster's W CPU workers, which divide the cores)."""
    return min(1.0, torch.get_num_threads() / max(1, machine_cores()))


def choose_residency(setting: str, size: CopySize, device: torch.device, free_device: int | None,
                     available_ram: int, share: float = 1.0, under_limit: bool = False) -> Residency:
    """train.resident resolved for a copy of `size` (module docstring). free_device: the training GPU's free
    bytes (None on the CPU); available_ram: the RAM this process may still use; share: its share of it;
    under_limit: a cgroup memory limit sets available_ram (the messages say so)."""
    what = f"the {size.samples} training and validation samples ({gigabytes(size.total)} as stored)"
    limit = " under this process's memory limit (its cgroup's: a SLURM job's or a container's)" if under_limit else ""
    if setting == "off":
        return Residency("off", "train.resident=off: streamed from the store every epoch", size)
    on_gpu = device.type == "cuda" and free_device is not None and size.features > 0  # no features: nothing for it
    if setting == "device" and on_gpu:
        assert free_device is not None
        if size.features > EXPLICIT_SHARE * free_device:
            raise UserError(
                f"train.resident=device asks to hold the keys and values of {what} on {device}: "
                f"{gigabytes(size.features)}, more than {EXPLICIT_SHARE:.0%} of its {gigabytes(free_device)} free.",
                "Set train.resident=auto (the GPU where the copy fits, else RAM or streaming) or ram, or use a store "
                "of a smaller cache.dtype (`fpt cache transcode STORE --set cache.dtype=int8`).")
        return Residency("device", f"train.resident=device: {what} on {device}", size)
    if setting in ("ram", "device"):
        if size.total > EXPLICIT_SHARE * available_ram:
            raise UserError(
                f"train.resident={setting} asks to hold {what} in RAM, but only {gigabytes(available_ram)} of RAM is "
                f"available{limit} (at most {EXPLICIT_SHARE:.0%} of it is used).",
                "Set train.resident=auto (RAM where the copy fits, else streaming) or off (stream from the store "
                "every epoch), free some memory, or use a store of a smaller cache.dtype "
                "(`fpt cache transcode STORE --set cache.dtype=int8`).")
        note = " (the training device holds no features: it is the CPU, or the side network trains alone)" \
            if setting == "device" else ""
        return Residency("ram", f"train.resident={setting}{note}: {what} in RAM", size)
    if setting != "auto":
        raise ValueError(f"unknown train.resident {setting!r}")
    if on_gpu and size.features <= AUTO_SHARE * free_device:
        return Residency("device", f"auto: {what} on {device}, within {AUTO_SHARE:.0%} of its "
                                   f"{gigabytes(free_device)} free", size)
    budget = AUTO_SHARE * available_ram * share
    if size.total <= budget:
        return Residency("ram", f"auto: {what} in RAM, within {AUTO_SHARE:.0%} of this process's share of the "
                                f"{gigabytes(available_ram)} available{limit}", size)
    return Residency("off", f"auto: {what} streamed from the store every epoch: more than {AUTO_SHARE:.0%} of "
                            f"this process's share of the {gigabytes(available_ram)} of RAM available{limit}"
                            + (" and of the GPU's free memory" if on_gpu else ""), size)


def resolve_residency(setting: str, size: CopySize, device: torch.device) -> Residency:
    """`choose_residency` with the memory free to this process now."""
    free_device = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    ram = free_ram()
    return choose_residency(setting, size, device, free_device, ram.bytes, machine_share(), ram.under_limit)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint16:  # a bfloat16 store's bit patterns (numpy has no bfloat16)
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


class ResidentSamples:
    """The stored rows of a set of samples, read from the store once: `arrays` (name -> rows, as
    `CacheReader.stored_row_layout` gives them) and `position` (cache index -> row, -1 where absent).
    The keys and values (and their scales) are numpy arrays in RAM, or with a `device` (the GPU)
    tensors there; side images and labels are numpy arrays in RAM. A device's copy is filled a shard
    at a time, so RAM never holds more than a shard of it."""

    def __init__(self, reader: CacheReader, samples: np.ndarray, with_features: bool,
                 device: torch.device | None = None) -> None:
        metadata = reader.metadata
        blocks = resident_blocks(metadata, np.unique(np.asarray(samples, dtype=np.int64)))
        count = sum(b - a for a, b in blocks)
        layout = reader.stored_row_layout(with_features)
        on_device = set(reader.stored_feature_arrays()) if with_features and device is not None else set()
        self.device = device if device is not None else torch.device("cpu")  # where batches are decoded
        self.arrays: dict[str, np.ndarray | torch.Tensor] = {
            name: np.empty((count, *shape), dtype) for name, (shape, dtype) in layout.items() if name not in on_device}
        biggest = max((b - a for a, b in blocks), default=0)
        staging = {name: np.empty((biggest, *layout[name][0]), layout[name][1]) for name in on_device}
        for name, rows in staging.items():
            self.arrays[name] = torch.empty((count, *rows.shape[1:]), dtype=_as_tensor(rows[:0]).dtype, device=device)
        self.position = np.full(metadata.num_samples, -1, dtype=np.int64)
        offset = 0
        for a, b in blocks:
            end = offset + b - a
            reader.read_stored_into(a, b, {name: (staging[name][: b - a] if name in staging else value[offset:end])
                                           for name, value in self.arrays.items()})
            for name, rows in staging.items():
                self.arrays[name][offset:end].copy_(_as_tensor(rows[: b - a]))
            self.position[a:b] = np.arange(offset, end)
            offset = end

    def holds(self, samples: np.ndarray) -> bool:
        return bool((self.position[samples] >= 0).all()) if len(samples) else True

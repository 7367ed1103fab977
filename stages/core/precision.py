"""The arithmetic of a forward pass: fp32, or autocast to 16 bits.

Autocast runs the matrix products (linear, bmm, convolution, attention) in 16 bits and keeps norms,
softmax and losses in fp32, as torch's autocast lists them; parameters, gradients and the optimiser
stay fp32. Stage one's `extract.precision` and stage two's `train.precision` both run through
`arithmetic`. bf16 has fp32's exponent range, so training in bf16 needs no loss scaling (a
GradScaler is for fp16's narrow range only).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
TrainPrecision = Literal["fp32", "bf16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def arithmetic(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: autocast to 16 bits for bf16/fp16, nothing for fp32.

    Autocast's state is per thread: a thread that runs a forward enters the context itself."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def train_precision(setting: Literal["auto", "fp32", "bf16"], device: torch.device) -> TrainPrecision:
    """train.precision resolved: auto is bf16 on a GPU, whose tensor cores run bf16 products at several
    times fp32's rate, and fp32 on a CPU, where bf16 autocast made a training step slower on both
    machines measured: 1.1-1.5x on an AMD EPYC with AVX512-BF16, 2.5x for a stack of 16 on an Intel
    with AMX (bench/README.md §12)."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting

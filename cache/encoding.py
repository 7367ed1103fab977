"""How keys and values are stored for each `cache.dtype`, and how they are turned back into floats.

    float32  stored as float32
    float16  stored as float16 (the default: half the paper's per-image float32 files)
    bfloat16 stored as uint16 holding the upper 16 bits of the float32 (round to nearest even);
             numpy has no bfloat16, so the raw bits are what any zarr reader sees
    int8     stored as int8 with one scale per token: x = q * scale, scale = max|x| / 127 over the
             token's Dh channels; the scales live in `<name>_scale` (N, L, H, n) float16
"""

from __future__ import annotations

import numpy as np
import torch

INT8_MAX = 127
# The smallest positive float16 subnormal: a scale below it would round to 0 and lose the token.
MIN_SCALE = float(np.finfo(np.float16).smallest_subnormal)
MAX_SCALE = float(np.finfo(np.float16).max)


def stored_dtype(dtype: str) -> np.dtype:
    return np.dtype({"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8"}[dtype])


def has_scales(dtype: str) -> bool:
    return dtype == "int8"


def scale_name(name: str) -> str:
    return f"{name}_scale"


def encode(features: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored array, per-token scales or None) of float features (..., Dh)."""
    if dtype in ("float32", "float16"):
        return features.astype(dtype, copy=False), None
    if dtype == "bfloat16":
        as_bf16 = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(torch.bfloat16)
        return as_bf16.view(torch.int16).numpy().view(np.uint16), None
    if dtype == "int8":
        values = features.astype(np.float32, copy=False)
        peak = np.abs(values).max(axis=-1)
        scale = np.clip(peak / INT8_MAX, MIN_SCALE, MAX_SCALE).astype(np.float16)
        # Quantise with the float16 scale that is stored, so decoding sees exactly the same one.
        quantised = np.rint(values / scale.astype(np.float32)[..., None])
        return np.clip(quantised, -INT8_MAX, INT8_MAX).astype(np.int8), scale
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode(stored: np.ndarray, scales: np.ndarray | None, dtype: str) -> np.ndarray:
    """Float features from their stored form: float16 stays float16, the others become float32."""
    if dtype in ("float32", "float16"):
        return stored
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype == "int8":
        assert scales is not None, "int8 features need their scales"
        return stored.astype(np.float32) * scales.astype(np.float32)[..., None]
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode_rows(stored: np.ndarray, scales: np.ndarray | None, rows: np.ndarray, dtype: str,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `rows` of stored features as one float32 tensor, gathered and converted in a single pass
    (no float16 copy of the batch first): what stage two feeds the fusion modules. `out`: a float32
    tensor of that shape to write into instead of a new one."""
    source = torch.from_numpy(stored)
    if dtype == "bfloat16":
        source = source.view(torch.bfloat16)  # the stored uint16 are bfloat16 bit patterns
    shape = (len(rows), *stored.shape[1:])
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif out.shape != shape or out.dtype != torch.float32:
        raise ValueError(f"decode_rows writes float32 {shape}, not {out.dtype} {tuple(out.shape)}")
    for position, row in enumerate(rows.tolist()):
        out[position].copy_(source[row])
    if dtype == "int8":
        assert scales is not None, "int8 features need their scales"
        out *= torch.from_numpy(np.take(scales, rows, axis=0)).float().unsqueeze(-1)
    elif dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"unknown storage dtype {dtype!r}")
    return out

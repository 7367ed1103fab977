"""How keys and values are stored for each `cache.dtype`, and how they are turned back into floats.

    float32  stored as float32
    float16  stored as float16 (the default: half the paper's per-image float32 files)
    bfloat16 stored as uint16 holding the upper 16 bits of the float32 (round to nearest even);
             numpy has no bfloat16, so the raw bits are what any zarr reader sees
    int8     stored as int8 with one scale per token: x = q * scale, scale = max|x| / 127 over the
             token's Dh channels; the scales live in `<name>_scale` (N, L, H, n) float16
    int4     two 4-bit integers per uint8 with one float16 scale per 32 channels (cache/int4.py);
             stored (N, L, H, n, Dh/2), scales in `<name>_scale` (N, L, H, n, Dh/32)
"""

from __future__ import annotations

import numpy as np
import torch

from fpt.cache import int4

INT8_MAX = 127
MIN_SCALE, MAX_SCALE = int4.MIN_SCALE, int4.MAX_SCALE  # a scale below float16's smallest subnormal would be 0


def stored_dtype(dtype: str) -> np.dtype:
    return np.dtype({"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8",
                     "int4": "uint8"}[dtype])


def has_scales(dtype: str) -> bool:
    return dtype in ("int8", "int4")


def stored_shape(feature_shape: tuple[int, ...], dtype: str) -> tuple[int, ...]:
    """Shape of one sample's stored keys (or values) of float shape (L, H, n, Dh): int4 packs two channels a byte."""
    if dtype == "int4":
        return (*feature_shape[:-1], int4.packed_channels(feature_shape[-1]))
    return tuple(feature_shape)


def scale_shape(feature_shape: tuple[int, ...], dtype: str) -> tuple[int, ...]:
    """Shape of one sample's `<name>_scale` array: per token (int8) or per group of channels (int4)."""
    if dtype == "int4":
        return (*feature_shape[:-1], int4.scale_groups(feature_shape[-1]))
    return tuple(feature_shape[:-1])


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
    if dtype == "int4":
        return int4.quantise(features)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode(stored: np.ndarray, scales: np.ndarray | None, dtype: str, channels: int | None = None) -> np.ndarray:
    """Float features from their stored form: float16 stays float16, the others become float32.
    `channels`: Dh, which int4 needs (its packed last axis holds ceil(Dh / 2) bytes)."""
    if dtype in ("float32", "float16"):
        return stored
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype == "int8":
        assert scales is not None, "int8 features need their scales"
        return stored.astype(np.float32) * scales.astype(np.float32)[..., None]
    if dtype == "int4":
        assert scales is not None and channels is not None, "int4 features need their scales and Dh"
        return int4.dequantise(stored, scales, channels)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode_rows(stored: np.ndarray | torch.Tensor, scales: np.ndarray | torch.Tensor | None, rows: np.ndarray,
                dtype: str, out: torch.Tensor | None = None, channels: int | None = None) -> torch.Tensor:
    """Rows `rows` of stored features as one float32 tensor, gathered and converted in a single pass
    (no float16 copy of the batch first): what stage two feeds the fusion modules. `out`: a float32
    tensor of that shape to write into instead of a new one. `channels`: Dh (int4 needs it; the
    others read it from `stored`).

    `stored` and `scales` are numpy arrays as read, or torch tensors of them on any device (a cache
    resident on the GPU, stages/train/resident.py; a bfloat16 store's tensor may be bfloat16 already),
    decoded there into `out` (on the same device). Every step is exact or one float32 multiply, so
    the result is the same bits on every device."""
    source = stored if isinstance(stored, torch.Tensor) else torch.from_numpy(stored)
    if dtype == "bfloat16" and source.dtype != torch.bfloat16:
        source = source.view(torch.bfloat16)  # the stored uint16 are bfloat16 bit patterns
    if dtype == "int4" and channels is None:
        raise ValueError("decode_rows needs the head dimension (channels) of int4 features")
    shape = (len(rows), *source.shape[1:-1], channels if dtype == "int4" else source.shape[-1])
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=source.device)
    elif out.shape != shape or out.dtype != torch.float32:
        raise ValueError(f"decode_rows writes float32 {shape}, not {out.dtype} {tuple(out.shape)}")
    if dtype == "int4":
        assert scales is not None, "int4 features need their scales"
        # the packed rows are an eighth of the float32 batch: gathered first, then decoded in one go
        int4.dequantise_into(_take(source, rows), _take(scales, rows).float(), out)
        return out
    for position, row in enumerate(rows.tolist()):
        out[position].copy_(source[row])
    if dtype == "int8":
        assert scales is not None, "int8 features need their scales"
        out *= _take(scales, rows).float().unsqueeze(-1)
    elif dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"unknown storage dtype {dtype!r}")
    return out


def _take(array: np.ndarray | torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows of a numpy array or a tensor (on its device) as a tensor."""
    if isinstance(array, torch.Tensor):
        return array.index_select(0, torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(array.device))
    return torch.from_numpy(np.take(array, rows, axis=0))

"""`cache.dtype: int4`: keys and values as 4-bit integers with one float16 scale per group of channels.

    scale   = max |x| over a group of GROUP consecutive channels / 7, as float16
              (clipped to float16's smallest subnormal and largest value)
    q       = round-half-even(x / scale), clipped to [-7, 7] (-8 is never written)
    nibble  = q + 8, in 1 .. 15 (offset binary; 8 is zero)
    byte i  = nibble of channel 2i | nibble of channel 2i + 1 << 4 (the even channel in the low nibble)

Stored: packed (..., ceil(Dh / 2)) uint8 and scales (..., ceil(Dh / GROUP)) float16. A head dimension
that is odd is padded with one zero channel (nibble 8) and one that is not a multiple of GROUP ends
in a shorter last group, so every LPM can be stored; decoding needs Dh to cut the padding off.

GROUP = 32 (bench/int4_groups.py, ViT-B/16 at 512 px, random weights, bench/README.md section 3):
scales add 0.0625 bytes to the 0.5 of each number's nibble, 0.69 MB per ViT-B/512 image with zstd
(0.83 with blosc-lz4, under the 0.95 MB aimed at); 16 channels per scale err 12 % less for 18 % more
bytes, 64 err 11 % more for 11 % fewer. Asymmetric groups (a float16 minimum too) err 5-8 % less at
equal bytes; symmetric keeps one scale array, stores 0 exactly and decodes with one multiply.
"""

from __future__ import annotations

import numpy as np
import torch

GROUP = 32
MAX = 7
OFFSET = 8
# The smallest positive float16 subnormal: a scale below it would round to 0 and lose the group.
MIN_SCALE = float(np.finfo(np.float16).smallest_subnormal)
MAX_SCALE = float(np.finfo(np.float16).max)


def packed_channels(channels: int) -> int:
    return -(-channels // 2)


def scale_groups(channels: int, group: int = GROUP) -> int:
    return -(-channels // group)


def quantise(features: np.ndarray, group: int = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 (..., ceil(Dh/2)), float16 scales (..., ceil(Dh/group))) of float features (..., Dh)."""
    values = features.astype(np.float32, copy=False)
    channels = values.shape[-1]
    groups = scale_groups(channels, group)
    padded = np.zeros((*values.shape[:-1], groups * group), np.float32)
    padded[..., :channels] = values
    grouped = padded.reshape(*values.shape[:-1], groups, group)
    scale = np.clip(np.abs(grouped).max(axis=-1) / MAX, MIN_SCALE, MAX_SCALE).astype(np.float16)
    # Quantise with the float16 scale that is stored, so decoding sees exactly the same one.
    quantised = np.clip(np.rint(grouped / scale.astype(np.float32)[..., None]), -MAX, MAX)
    nibbles = np.full((*values.shape[:-1], 2 * packed_channels(channels)), OFFSET, np.uint8)
    nibbles[..., :channels] = (quantised.reshape(padded.shape)[..., :channels] + OFFSET).astype(np.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4), scale


def dequantise(packed: np.ndarray, scales: np.ndarray, channels: int, group: int = GROUP) -> np.ndarray:
    """Float32 features (..., channels) of packed nibbles and their group scales (numpy, any shape)."""
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)[..., :channels]
    scale = np.repeat(scales.astype(np.float32), group, axis=-1)[..., :channels]
    return (nibbles.astype(np.float32) - OFFSET) * scale


def dequantise_into(packed: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, group: int = GROUP) -> None:
    """`dequantise` in torch, written into the float32 tensor `out` (..., Dh): the nibbles are
    converted straight into `out` (two strided copies), then offset and scaled in place."""
    channels = out.shape[-1]
    if channels % 2 or channels % group:  # padded: the numpy formula, in torch
        nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)[..., :channels].float() - OFFSET
        torch.mul(nibbles, scales.float().repeat_interleave(group, dim=-1)[..., :channels], out=out)
        return
    pairs = out.view(*out.shape[:-1], channels // 2, 2)
    pairs[..., 0].copy_(packed & 0x0F)
    pairs[..., 1].copy_(packed >> 4)
    out.sub_(OFFSET)
    out.view(*out.shape[:-1], channels // group, group).mul_(scales.unsqueeze(-1))

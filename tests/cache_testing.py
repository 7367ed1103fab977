"""Whole-store reads for the tests of the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def stored_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store as numpy, read with zarr alone."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    return {name: array[...] for name, array in group.arrays()}

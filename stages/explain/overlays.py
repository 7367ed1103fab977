"""An explanation's picture: the attention heatmap over the image, beside the LPM's own token selection.

The maps live on the LPM's patch grid; the LPM saw the image resized to a square, so the grid is
stretched over the whole image and each patch is drawn as the block of the image it covers (no
smoothing: the map has the patch grid's resolution, not the image's). Each map is scaled to its own
maximum for display; maps.npz holds the values.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fpt.cache.errors import UserError  # noqa: E402
from fpt.stages.core.files import replacing  # noqa: E402
from fpt.stages.datasets.images import ImageDecodeError, open_rgb  # noqa: E402

LONGEST_SIDE = 1024  # pictures of larger images are drawn at this size (the maps are far coarser)


def display_image(path: Path | None, fallback: np.ndarray) -> np.ndarray:
    """The image to draw on, as RGB uint8: the file decoded as the LPM saw it (DICOM windowed, EXIF orientation
    applied) at its resolution (at most LONGEST_SIDE), else `fallback`, also where the file no longer decodes here
    (a DICOM file without pydicom): a picture is never worth stopping a run for."""
    if path is None:
        return fallback
    try:
        image = open_rgb(path)
    except (ImageDecodeError, UserError):
        return fallback
    scale = LONGEST_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(image)


def draw_explanation(path: Path, image: np.ndarray, attention: np.ndarray, selection: np.ndarray, title: str,
                     prefix_mass: float, layer_maps: np.ndarray | None = None, layers: list[int] | None = None) -> None:
    """Write the PNG: image with the attention map, image with the selection frequency, and, when given,
    one small panel per chosen layer's map."""
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    rows = 2 if layer_maps is not None else 1
    columns = max(2, len(layer_maps) if layer_maps is not None else 0)
    figure = plt.figure(figsize=(4.2 * 2, 4.4 + (2.4 if rows == 2 else 0)))
    grid = figure.add_gridspec(rows, columns, height_ratios=[4.4, 2.4][:rows])
    half = columns // 2
    attention_axis = figure.add_subplot(grid[0, :half])
    selection_axis = figure.add_subplot(grid[0, half:])
    attention_axis.imshow(image, extent=extent)
    scaled = attention / max(float(attention.max()), 1e-12)
    colours = plt.get_cmap("inferno")(scaled)
    colours[..., 3] = 0.85 * np.sqrt(scaled)  # the image shows through where the map is low
    attention_axis.imshow(colours, extent=extent, interpolation="nearest")
    attention_axis.set_title(f"fusion attention ({prefix_mass:.0%} on prefix tokens)", fontsize=9)
    selection_axis.imshow(image.mean(axis=2), extent=extent, cmap="gray")
    shown = selection_axis.imshow(selection, extent=extent, cmap="viridis", alpha=0.6, interpolation="nearest",
                                  vmin=0, vmax=max(float(selection.max()), 1e-12))
    figure.colorbar(shown, ax=selection_axis, fraction=0.046, pad=0.02, label="share of (layer, head) keeping it")
    selection_axis.set_title("LPM token selection", fontsize=9)
    if layer_maps is not None:
        for index, layer_map in enumerate(layer_maps):
            axis = figure.add_subplot(grid[1, index])
            axis.imshow(layer_map, cmap="inferno", interpolation="nearest")
            axis.set_title(f"block {layers[index] if layers else index}", fontsize=8)
            axis.set_axis_off()
    for axis in (attention_axis, selection_axis):
        axis.set_axis_off()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        with replacing(path) as tmp:
            figure.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(figure)

"""JPEG draft decoding: how much it changes the LPM input, against the noise of the JPEG itself, and its speed.

    python bench/jpeg_draft.py [--quick] [--sizes 2048 3888x2592] [--input-size 512] [--quality 95]
                               [--num-images 8] [--margins 1 2 4]

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain (PIL's `draft`), which is
several times faster than decoding every pixel. `open_rgb(path, draft_size=m * S)` asks for the
largest such reduction that keeps the image at least m x S pixels on each side; the antialiased
bilinear resize then brings it to the LPM input S x S as usual.

Images: the demo's fundus-like renders at each source size (a wide size is the square render on a
black canvas, as fundus cameras write them), saved losslessly (PNG) and as JPEG at --quality.
For every draft margin m, the LPM input (uint8, before normalisation) from the draft decode is
compared with the one from the full decode of the same JPEG, in 8-bit levels: mean, 99.9th
percentile and largest absolute difference. The yardstick is the JPEG's own change of that input:
the full decode of the JPEG against the lossless original. Decode + resize time is the best of 3
per image, summed over the images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from common import console, print_table, write_results  # noqa: E402
from PIL import Image  # noqa: E402


def source_images(folder: Path, width: int, height: int, count: int, quality: int) -> list[tuple[Path, Path]]:
    """(lossless PNG, JPEG) pairs of demo renders at width x height."""
    from fpt.stages.datasets.demo import render_image

    pairs = []
    for index in range(count):
        square = render_image(index % 3, min(width, height), np.random.default_rng([7, width, height, index]))
        canvas = np.zeros((height, width, 3), np.uint8)
        top, left = (height - square.shape[0]) // 2, (width - square.shape[1]) // 2
        canvas[top : top + square.shape[0], left : left + square.shape[1]] = square
        png, jpeg = folder / f"{width}x{height}_{index}.png", folder / f"{width}x{height}_{index}.jpg"
        Image.fromarray(canvas).save(png, compress_level=1)
        Image.fromarray(canvas).save(jpeg, quality=quality)
        pairs.append((png, jpeg))
    return pairs


def lpm_input(path: Path, input_size: int, draft_size: int | None) -> tuple[np.ndarray, tuple[int, int], float]:
    """The LPM input as uint8 (before normalisation), the decoded size, and the best-of-3 seconds."""
    from fpt.stages.datasets.images import open_rgb, resize_square

    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        image = open_rgb(path, draft_size=draft_size)
        pixels = np.asarray(resize_square(image, input_size, "pil-bilinear"), dtype=np.int16)
        best = min(best, time.perf_counter() - began)
    return pixels, image.size, best


def differences(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    absolute = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b)])
    return {"mean": float(absolute.mean()), "p99_9": float(np.percentile(absolute, 99.9)), "max": float(absolute.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=None, help="source sizes: N (square) or WxH")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--margins", type=float, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    sizes = args.sizes or (["1024"] if args.quick else ["2048", "3888x2592"])
    count = args.num_images or (2 if args.quick else 6)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            width, height = (int(part) for part in size.split("x")) if "x" in size else (int(size), int(size))
            pairs = source_images(Path(folder), width, height, count, args.quality)
            lossless = [lpm_input(png, args.input_size, None)[0] for png, _ in pairs]
            full = [lpm_input(jpeg, args.input_size, None) for _, jpeg in pairs]
            full_inputs, full_seconds = [f[0] for f in full], sum(f[2] for f in full)
            jpeg_noise = differences(full_inputs, lossless)
            result = {"jpeg_vs_lossless": jpeg_noise, "full_decode_s_per_image": full_seconds / count, "margins": {}}
            rows.append([f"{width}x{height}", "full decode (JPEG vs lossless PNG)", f"{width}x{height}",
                         jpeg_noise["mean"], jpeg_noise["p99_9"], jpeg_noise["max"], 1000 * full_seconds / count, 1.0])
            for margin in args.margins:
                drafted = [lpm_input(jpeg, args.input_size, int(margin * args.input_size)) for _, jpeg in pairs]
                change = differences([d[0] for d in drafted], full_inputs)
                seconds = sum(d[2] for d in drafted)
                decoded = drafted[0][1]
                result["margins"][str(margin)] = {**change, "decoded_size": decoded, "s_per_image": seconds / count,
                                                  "speedup": full_seconds / seconds}
                rows.append([f"{width}x{height}", f"draft >= {margin:g} x {args.input_size} (vs full decode)",
                             f"{decoded[0]}x{decoded[1]}", change["mean"], change["p99_9"], change["max"],
                             1000 * seconds / count, full_seconds / seconds])
            figures[f"{width}x{height}"] = result
    print_table(f"JPEG draft decoding: change of the {args.input_size} px LPM input in 8-bit levels, {count} demo renders "
                f"per size, JPEG quality {args.quality}, bilinear resize",
                ["source", "decode", "decoded at", "mean |diff|", "99.9th pct", "max", "ms per image", "speed-up"], rows)
    console.print("The first row of each size is the JPEG's own change of the input (its compression), the yardstick.")
    write_results("jpeg_draft" + ("_quick" if args.quick else ""), {
        "input_size": args.input_size, "quality": args.quality, "images_per_size": count, "figures": figures})


if __name__ == "__main__":
    main()

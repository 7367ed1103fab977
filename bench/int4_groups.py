"""int4 group size and scheme: bytes per number against reconstruction error, on real cached features.

    python bench/int4_groups.py [--scenario vitb512|demo] [--num-images N]

Reads the keys and values of the float32 store bench/cache_size.py extracts (the same images and
settings, so its LPM run is reused) and quantises them to 4 bits with one float16 scale per group
of G channels, G = 8, 16, 32, 64: symmetric (cache/int4.py: q in [-7, 7], scale = max|x| / 7) and
asymmetric (q in [0, 15] from the group's minimum, scale = (max - min) / 15, the minimum stored as a
second float16). Reported per scheme: stored bytes per number (raw, and zstd level 3 as the cache
compresses them), MB per image at ViT-B/512, and the error relative to the features' RMS
(sqrt(mean (x - x')^2) / sqrt(mean x^2)), over keys and values; float16 and int8 for reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_threads, bench_config, console, print_table, write_results  # noqa: E402

PAPER_NUMBERS = 2 * 6 * 12 * 205 * 64  # keys and values per image at ViT-B/16, 512 px


def asymmetric(x: np.ndarray, group: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """4-bit asymmetric quantisation per group: (reconstruction, [packed nibbles, scales, minima])."""
    grouped = x.reshape(*x.shape[:-1], -1, group)
    low = grouped.min(axis=-1).astype(np.float16)
    scale = np.maximum((grouped.max(axis=-1) - low.astype(np.float32)) / 15, 6e-8).astype(np.float16)
    q = np.clip(np.rint((grouped - low.astype(np.float32)[..., None]) / scale.astype(np.float32)[..., None]), 0, 15)
    restored = q * scale.astype(np.float32)[..., None] + low.astype(np.float32)[..., None]
    nibbles = q.astype(np.uint8).reshape(x.shape)
    return restored.reshape(x.shape), [nibbles[..., 0::2] | (nibbles[..., 1::2] << 4), scale, low]


def zstd_bytes(arrays: list[np.ndarray]) -> int:
    from numcodecs import Zstd

    codec = Zstd(level=3)
    # compressed per sample, as the cache's chunks are (one chunk of four samples compresses alike)
    return sum(len(codec.encode(np.ascontiguousarray(a[i]))) for a in arrays for i in range(len(a)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="vitb512", choices=["vitb512", "demo"])
    parser.add_argument("--num-images", type=int, default=8, help="train images (plus 2 val + 2 test)")
    args = parser.parse_args()
    apply_threads(1)

    from fpt.cache import int4
    from fpt.cache.encoding import decode, encode
    from fpt.cache.reader import CacheReader
    from fpt.stages.extract.run import run_extract

    config, _ = bench_config(args.scenario, args.num_images, ["cache.dtype=float32", "cache.codec=none",
                                                               "cache.shard_size=4", "cache.chunk_size=1"],
                             num_val=2, num_test=2)
    reader = CacheReader(run_extract(config, show_progress=False).path)
    count = reader.metadata.num_samples
    arrays = reader.read(0, count)
    features = [arrays["keys"].astype(np.float32), arrays["values"].astype(np.float32)]
    numbers = sum(f.size for f in features)
    power = sum(float(np.square(f, dtype=np.float64).sum()) for f in features)
    console.print(f"{count} images, keys+values {reader.metadata.feature_shape} x 2 = {numbers // count:,} numbers/image")

    def row(name: str, restored: list[np.ndarray], stored: list[np.ndarray]) -> dict:
        error = sum(float(np.square(r - f, dtype=np.float64).sum()) for r, f in zip(restored, features))
        raw = sum(a.nbytes for a in stored) / numbers
        packed = zstd_bytes(stored) / numbers
        return {"scheme": name, "bytes_per_number": raw, "zstd_bytes_per_number": packed,
                "vitb512_mb": raw * PAPER_NUMBERS / 1e6, "vitb512_zstd_mb": packed * PAPER_NUMBERS / 1e6,
                "relative_rms_error": (error / power) ** 0.5}

    results = []
    for dtype in ("float16", "int8"):
        encoded = [encode(f, dtype) for f in features]
        results.append(row(dtype, [decode(s, c, dtype).astype(np.float32) for s, c in encoded],
                           [a for pair in encoded for a in pair if a is not None]))
    for group in (8, 16, 32, 64):
        encoded = [int4.quantise(f, group) for f in features]
        results.append(row(f"int4 symmetric G={group}", [int4.dequantise(p, s, f.shape[-1], group)
                                                         for (p, s), f in zip(encoded, features)],
                           [a for pair in encoded for a in pair]))
        encoded = [asymmetric(f, group) for f in features]
        results.append(row(f"int4 asymmetric G={group}", [r for r, _ in encoded], [a for _, parts in encoded for a in parts]))
    print_table(f"int4 groups, {reader.metadata.lpm.name} @ {reader.metadata.extraction.input_size}px ({count} images)",
                ["scheme", "bytes/number", "zstd bytes/number", "ViT-B/512 MB/img", "zstd MB/img", "relative RMS error"],
                [[r["scheme"], r["bytes_per_number"], r["zstd_bytes_per_number"], r["vitb512_mb"], r["vitb512_zstd_mb"],
                  r["relative_rms_error"]] for r in results])
    write_results(f"int4_groups_{args.scenario}", {"images": count, "results": results})


if __name__ == "__main__":
    main()

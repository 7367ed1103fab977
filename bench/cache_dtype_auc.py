"""Bytes per image of the cache for each storage dtype and codec, and what each dtype costs in test AUC.

    python bench/cache_dtype_auc.py                      # the default demo (extracts it once if needed)
    python bench/cache_dtype_auc.py --no-auc             # sizes only
    python bench/cache_dtype_auc.py --set demo.num_train=48 ...   # any pipeline.yaml override
    python bench/cache_dtype_auc.py --codecs zstd --dtypes float16,int4 --seeds 0,1,2   # AUC per seed

The demo is extracted once in float32 (the reference, as the paper's per-image files); every other
dtype/codec is written from it with cache/transcode.py, which stores exactly what `fpt extract`
with that setting stores (same key, so extract would reuse it). Sizes are measured on disk.
The AUC part trains train-side from the zstd store of each dtype once per seed (`train.seed`: the
side network's initialisation, dropout, augmentation and batch order), every dtype with the same
seeds, and prints each run, then each dtype's mean and the spread (sample standard deviation) over
the seeds: a dtype loses AUC when its mean is below float16's by more than that spread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpt.cache.catalog import folder_bytes  # noqa: E402
from fpt.cache.layout import sharded_arrays  # noqa: E402
from fpt.cache.metadata import StorageSettings  # noqa: E402
from fpt.cache.reader import CacheReader  # noqa: E402
from fpt.cache.transcode import transcode  # noqa: E402
from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.extract.run import run_extract  # noqa: E402

DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
CODECS = ("none", "zstd", "blosc-zstd", "blosc-lz4", "gzip")
# The paper's per-image float32 file at ViT-B/16, 512 px: 2 (K, V) x 6 layers x 12 heads x 205 tokens x 64.
PAPER_NUMBERS = 2 * 6 * 12 * 205 * 64
# int8: + a float16 scale per 64 numbers (a token); int4: half a byte + a float16 scale per 32
BYTES_PER_NUMBER = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int8": 1.0 + 2.0 / 64, "int4": 0.5 + 2.0 / 32}


def feature_bytes(path: Path) -> int:
    """Bytes of keys, values and scales: what the paper's per-image files hold (no side images, no token indices)."""
    metadata = CacheReader(path).metadata
    return sum(folder_bytes(path / name) for name in sharded_arrays(metadata)
               if name not in ("side_images", "token_indices"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="pipeline.yaml override")
    parser.add_argument("--no-auc", action="store_true", help="only the sizes")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="dtypes to store (and train from)")
    parser.add_argument("--seeds", default="0", help="train.seed values, comma-separated")
    args = parser.parse_args()

    config = load_config(None, [*args.assignments, "cache.dtype=float32", "cache.codec=zstd"], "demo")
    reference = run_extract(config, show_progress=True)
    meta = reference.metadata
    numbers = 2 * math.prod(meta.feature_shape)
    print(f"\ndemo cache: {meta.num_samples} images, LPM {meta.lpm.name}, keys/values {meta.feature_shape} "
          f"= {numbers:,} numbers per image (paper ViT-B/512: {PAPER_NUMBERS:,})")
    root = config.cache.root
    print(f"\n{'dtype':9} {'codec':11} {'K/V bytes/img':>14} {'all bytes/img':>14} {'vs float32 raw':>15} "
          f"{'ViT-B/512 uncompressed':>23}")
    stores: dict[str, Path] = {}
    dtypes = args.dtypes.split(",")
    for dtype in dtypes:
        for codec in args.codecs.split(","):
            storage = meta.storage.model_copy(update={"dtype": dtype, "codec": codec})
            path = reference.path if storage == meta.storage else (
                _existing(root, reference.path, storage) or transcode(reference.path, root, storage))
            if codec == "zstd":
                stores[dtype] = path
            kv = feature_bytes(path) / meta.num_samples
            total = folder_bytes(path) / meta.num_samples
            paper = PAPER_NUMBERS * BYTES_PER_NUMBER[dtype] / 1e6
            print(f"{dtype:9} {codec:11} {kv:14,.0f} {total:14,.0f} {kv / (numbers * 4):14.1%} {paper:20.2f} MB")
    print(f"\npaper: one float32 file per image = {PAPER_NUMBERS * 4 / 1e6:.2f} MB "
          f"({PAPER_NUMBERS * 4 / 2**20:.2f} MiB) per image at ViT-B/512")

    if args.no_auc:
        return
    from fpt.stages.train.train_side import train_side

    seeds = [int(seed) for seed in args.seeds.split(",")]
    scores: dict[str, list[float]] = {dtype: [] for dtype in dtypes}
    print(f"\n{'dtype':9} {'seed':>4} {'test AUC (best val)':>20} {'test AUC (final)':>17} {'seconds':>8}")
    for seed in seeds:  # seed by seed, so a drift of the machine touches every dtype alike
        seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        for dtype in dtypes:
            result = train_side(seeded, stores[dtype], show_progress=False)
            scores[dtype].append(result.test_best.auc)
            print(f"{dtype:9} {seed:4} {result.test_best.auc:20.4f} {result.test_last.auc:17.4f} {result.seconds:8.1f}",
                  flush=True)
    print(f"\n{'dtype':9} {'mean AUC (best val)':>20} {'std over seeds':>15}  per seed")
    for dtype, values in scores.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{dtype:9} {statistics.mean(values):20.4f} {spread:15.4f}  " + " ".join(f"{v:.4f}" for v in values))


def _existing(root: Path, source: Path, storage: StorageSettings) -> Path | None:
    """A store already transcoded with these settings (the bench may be re-run)."""
    from fpt.cache.layout import store_name
    from fpt.cache.reader import read_store_metadata
    from fpt.cache.transcode import transcoded_key

    old = CacheReader(source).metadata
    key = transcoded_key(read_store_metadata(source), storage)
    path = root / store_name(old.dataset, key)
    try:
        return path if CacheReader(path).metadata.cache_key == key else None
    except Exception:
        return None


if __name__ == "__main__":
    main()

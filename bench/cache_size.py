"""Cache size per image for every storage dtype and codec, vs 7.6 MB/image (float32, ViT-B/512).

    python bench/cache_size.py [--quick] [--scenario vitb512|demo] [--num-images N] [--dtypes int8,int4]

The LPM runs once (float32, uncompressed store); then the same keys/values and side images are
written with every dtype that cache.dtype allows (read from fpt.pipeline.config.CacheConfig) and
every codec, through cache/layout.py and cache/writer.py. A dtype the store cannot write yet is
reported as 'not supported'. Sizes are the files on disk divided by the number of images.
"decode ms/img" is stage two's batched decode of stored keys and values to float32
(cache/encoding.decode_rows, batches of 16 rows into reused buffers, fastest of 5 passes).
Features of random-weight LPMs may compress differently from pre-trained ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_threads, bench_config, console, print_table, write_results  # noqa: E402

PAPER_F32_MB = 7.6  # 2 x 6 x 12 x 205 x 64 float32 numbers
TARGETS_MB = {"float16": 3.8, "int8": 2.0, "int4": 0.95}


def allowed(field: str) -> list[str]:
    from fpt.stages.core.settings import CacheConfig

    return list(typing.get_args(CacheConfig.model_fields[field].annotation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenario", default="vitb512", choices=["vitb512", "demo"])
    parser.add_argument("--num-images", type=int, default=None, help="train images (plus 2 val + 2 test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: every cache.dtype)")
    args = parser.parse_args()
    apply_threads(args.threads)

    from fpt.cache.catalog import folder_bytes
    from fpt.cache.layout import create_store
    from fpt.cache.reader import CacheReader
    from fpt.cache.writer import ShardWriter
    from fpt.stages.extract.run import run_extract

    num_train = args.num_images or (4 if args.quick else 8)
    config, _ = bench_config(args.scenario, num_train, ["cache.dtype=float32", "cache.codec=none", "cache.shard_size=4",
                                                        "cache.chunk_size=1"], num_val=2, num_test=2)
    source = CacheReader(run_extract(config, show_progress=False).path)
    meta = source.metadata
    arrays = source.read(0, meta.num_samples, with_token_indices=True)
    count = meta.num_samples
    ids = source.sample_ids()
    raw_f32_mb = 2 * 4 * float(arrays["keys"][0].size) / 1e6
    console.print(f"{count} images of {meta.lpm.name} at {meta.extraction.input_size} px: keys+values {meta.feature_shape} x 2, "
                  f"{raw_f32_mb:.2f} MB/image raw float32")

    rows, results = [], []
    work = Path(tempfile.mkdtemp(prefix="fpt-bench-size-"))
    try:
        for dtype in args.dtypes.split(",") if args.dtypes else allowed("dtype"):
            for codec in allowed("codec"):
                storage = meta.storage.model_copy(update={"dtype": dtype, "codec": codec, "codec_level": 3,
                                                          "shard_size": 32, "chunk_size": 4})
                # a format-3 store (one row per sample, its labels inside) of the same samples
                store_meta = meta.model_copy(update={"storage": storage, "complete": False, "format_version": 3,
                                                     "num_rows": count})
                path = work / f"{dtype}-{codec}.zarr"
                entry = {"dtype": dtype, "codec": codec}
                try:
                    create_store(path, store_meta, arrays["labels"], (arrays["labels"] * 0), ids)
                    writer = ShardWriter(path, store_meta)
                    began = time.perf_counter()
                    for shard in range(store_meta.num_shards):
                        a, b = store_meta.shard_range(shard)
                        writer.write_shard(shard, arrays["keys"][a:b], arrays["values"][a:b], arrays["side_images"][a:b],
                                           arrays["token_indices"][a:b])
                    writer.finish()
                    entry["write_s_per_image"] = (time.perf_counter() - began) / count
                    # keys and values with their scales (int8, int4): what the paper's per-image files hold
                    features = sum(folder_bytes(path / name) for name in CacheReader(path).stored_feature_arrays())
                    entry.update(features_mb_per_image=features / count / 1e6,
                                 side_mb_per_image=folder_bytes(path / "side_images") / count / 1e6,
                                 token_indices_mb_per_image=folder_bytes(path / "token_indices") / count / 1e6,
                                 total_mb_per_image=folder_bytes(path) / count / 1e6)
                    began = time.perf_counter()
                    CacheReader(path).read(0, count)
                    entry["read_s_per_image"] = (time.perf_counter() - began) / count
                    entry["decode_s_per_image"] = decode_seconds(CacheReader(path))
                except Exception as error:  # a dtype this branch's store cannot write yet
                    entry["error"] = f"not supported ({type(error).__name__}: {error})"
                finally:
                    shutil.rmtree(path, ignore_errors=True)
                results.append(entry)
                target = TARGETS_MB.get(dtype)
                if "error" in entry:
                    rows.append([dtype, codec, "not supported", None, None, None, None, None, None, None, None,
                                 entry["error"][:60]])
                else:
                    f = entry["features_mb_per_image"]
                    share = entry["token_indices_mb_per_image"] / f
                    rows.append([dtype, codec, f, f"{entry['token_indices_mb_per_image'] * 1e3:.1f} ({share:.1%})",
                                 entry["total_mb_per_image"], PAPER_F32_MB / f,
                                 target, ("yes" if f <= target else "NO") if target else "-",
                                 entry["write_s_per_image"] * 1e3, entry["read_s_per_image"] * 1e3,
                                 entry["decode_s_per_image"] * 1e3, ""])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(f"Cache size per image, {meta.lpm.name} @ {meta.extraction.input_size}px ({count} images; paper layout "
                f"{PAPER_F32_MB} MB/image float32)",
                ["dtype", "codec", "keys+values MB/img", "token indices kB/img (share)", "all arrays MB/img", "x smaller than 7.6 MB", "target MB",
                 "meets", "write ms/img", "read ms/img", "decode ms/img", "note"], rows)
    write_results(f"cache_size_{args.scenario}" + ("_quick" if args.quick else ""),
                  {"images": count, "feature_shape": meta.feature_shape, "raw_float32_mb_per_image": raw_f32_mb,
                   "results": results})


def decode_seconds(reader, batch: int = 16, passes: int = 5) -> float:
    """Seconds per sample of decode_rows on the store's keys and values, as train-side decodes a batch."""
    import numpy as np
    import torch

    from fpt.cache.encoding import decode_rows, scale_name

    meta = reader.metadata
    count = meta.num_samples
    stored = {name: reader.array(name)[:] for name in reader.stored_feature_arrays()}
    rows = np.random.default_rng(0).permutation(count)[: min(batch, count)]
    out = torch.from_numpy(np.empty((len(rows), *meta.feature_shape), np.float32))
    best = float("inf")
    for _ in range(passes):
        began = time.perf_counter()
        for name in ("keys", "values"):
            decode_rows(stored[name], stored.get(scale_name(name)), rows, meta.storage.dtype, out, meta.lpm.head_dim)
        best = min(best, time.perf_counter() - began)
    return best / len(rows)


if __name__ == "__main__":
    main()

"""Peak RSS of train-side streaming a cache 10x the default demo's vs the default demo's.

    python bench/stream_memory.py                 # writes both synthetic caches under --root, then measures
    python bench/stream_memory.py --epochs 1 --scale 10 --root /tmp/fpt-stream-bench

Both caches are written with the real cache writer (cache/synthetic.py) at the default demo's
shapes (vit_tiny at 512 px: L=6, H=3, n=205, Dh=64, float16, zstd, shard 32, 144 px side images)
and 240/80/120 images per split, times --scale for the large one; the LPM is not run. Each
train-side run is a fresh subprocess; its peak RSS is ru_maxrss at the end. Target: the large
cache's peak within 10% of the default's (memory must not grow with the dataset).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpt.cache.catalog import folder_bytes  # noqa: E402

DEMO_SPLITS = {"train": 240, "val": 80, "test": 120}

TRAIN_ONE = """
import json, resource, sys, time
from pathlib import Path
from fpt.pipeline.config import load_config
from fpt.stages.train.train_side import train_side
store, runs, epochs, in_memory = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
# streaming (train.resident=off), or the whole split held in memory (its resident copy) and shuffled at once
config = load_config(None, [f"train.runs_root={runs}", f"train.epochs={epochs}", "train.device=cpu",
                            f"train.in_memory={in_memory}", f"train.resident={'auto' if in_memory == 'true' else 'off'}"],
                     "demo")
result = train_side(config, store, show_progress=False)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mib": peak_kib / 1024, "seconds": result.seconds, "test_auc": result.test_best.auc}))
"""


def build(root: Path, scale: int) -> Path:
    from fpt.cache.catalog import list_caches
    from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
    from fpt.pipeline.config import load_config

    config = load_config(None, [], "demo")
    splits = {split: count * scale for split, count in DEMO_SPLITS.items()}
    metadata = synthetic_metadata(splits, num_classes=config.demo.num_classes, dataset="demo", lpm_name=config.lpm.name)
    for path, existing, _ in list_caches(root):
        if existing is not None and existing.complete and existing.cache_key == metadata.cache_key:
            return path
    return write_synthetic_cache(root, metadata, show_progress=True)


def measure(store: Path, runs: Path, epochs: int, in_memory: bool) -> dict:
    command = [sys.executable, "-c", TRAIN_ONE, str(store), str(runs), str(epochs), str(in_memory).lower()]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/fpt-stream-bench"))
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    small, large = build(args.root / "cache", 1), build(args.root / "cache", args.scale)
    rows = []
    for label, store, in_memory in (("default demo, streaming", small, False),
                                     (f"{args.scale}x demo, streaming", large, False),
                                     ("default demo, in_memory", small, True)):
        size = folder_bytes(store)
        result = measure(store, args.root / "runs", args.epochs, in_memory)
        rows.append((label, size, result))
        print(f"{label:26} cache {size / 1e6:8.0f} MB  peak RSS {result['peak_rss_mib']:7.0f} MiB  "
              f"train-side {result['seconds']:6.1f} s", flush=True)
    base, big = rows[0][2]["peak_rss_mib"], rows[1][2]["peak_rss_mib"]
    print(f"\n{args.scale}x cache / default cache peak RSS: {big / base:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

"""What the read-time checks cost a stage-two run: train-side with each of them and with none, side by side.

    python bench/read_checks.py [--scenarios demo vitb512] [--epochs 4] [--rounds 5] [--quick]

Two checks keep damaged data from being used (docs/cache-format.md):
  crc32c  every chunk ends with a crc32c that zarr checks on every read (stores fpt writes);
  sha256  in a store whose chunks carry none, each shard file is re-hashed against its recorded
          sha256 once per process before it is read (the first epoch pays for the train split,
          the first validation for the val split, later epochs pay nothing);
  none    the same store as sha256 with its check replaced by a no-op: the baseline.
`train_side` runs on synthetic caches written by the real writer at a scenario's shapes (the
default demo: L=6, H=3, n=205, Dh=64, 240/80/120 images; ViT-B/512: H=12, 64/16/16 images;
float16, the default codec and shards), one store with chunk checksums and one without, in fresh
processes, the three variants in a rotating order each round; the table gives the medians of the
first epoch's training time, the later epochs' mean, and the whole run (training, evaluation,
test). "reading only" times the same epochs of the train split's batches without a model (read,
decode to float32): the checks' share of that is the most they can cost an epoch. Fresh processes
here differ by 10-15 % from run to run, more than the checks cost, so a last table reads the
train split of both stores in one process, alternating store each epoch, and times the sha256
of the split's shard files (what the check on a store without chunk checksums does once) against
that epoch. Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, print_table, write_results  # noqa: E402

from fpt.cache.layout import compressors as COMPRESSORS  # noqa: E402

SPLITS = {"demo": {"train": 240, "val": 80, "test": 120}, "vitb512": {"train": 64, "val": 16, "test": 16}}
HEADS = {"demo": 3, "vitb512": 12}

READ_ONE = """
import json, sys, time
from pathlib import Path
import fpt.cache.integrity
from fpt.cache.reader import CacheReader
from fpt.stages.train.cache_batches import SplitBatches
store, epochs, check = Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4] == "on"
if not check:
    fpt.cache.integrity.ShardReadCheck.check = lambda self, start, stop, arrays: None
batches = SplitBatches(CacheReader(store), "train", 16, shuffle=True, with_features=True)
times = []
for _ in range(epochs):
    began = time.perf_counter()
    for batch in batches.batches(reuse=1):
        pass
    times.append(time.perf_counter() - began)
print(json.dumps({"epochs": times, "total": sum(times)}))
"""

INTERLEAVED = """
import json, statistics, sys, time
from pathlib import Path
import fpt.cache.integrity
from fpt.cache.integrity import shard_file_digest, shard_file
from fpt.cache.reader import CacheReader
from fpt.stages.train.cache_batches import SplitBatches
checked, plain, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
fpt.cache.integrity.ShardReadCheck.check = lambda self, start, stop, arrays: None  # the plain store: no check
readers = {"crc32c": CacheReader(checked), "none": CacheReader(plain)}
batches = {name: SplitBatches(reader, "train", 16, shuffle=True, with_features=True) for name, reader in readers.items()}
times = {name: [] for name in readers}
for epoch in range(epochs + 1):  # the first round only warms both stores and the allocator
    for name in (("crc32c", "none") if epoch % 2 else ("none", "crc32c")):
        began = time.perf_counter()
        for batch in batches[name].batches(reuse=1):
            pass
        if epoch:
            times[name].append(time.perf_counter() - began)
reader = readers["none"]
start, stop = reader.split_range("train")
shards = range(start // reader.metadata.storage.shard_size, (stop - 1) // reader.metadata.storage.shard_size + 1)
hashing = []
for _ in range(3):  # what the sha256 check does once per process: hash the split's shard files
    began = time.perf_counter()
    for shard in shards:
        for name in reader.stored_feature_arrays() + ("side_images",):
            shard_file_digest(shard_file(plain, reader.array(name), shard))
    hashing.append(time.perf_counter() - began)
print(json.dumps({"epoch_none": statistics.median(times["none"]), "epoch_crc32c": statistics.median(times["crc32c"]),
                  "sha256_split": statistics.median(hashing), "epochs": times}))
"""

TRAIN_ONE = """
import json, sys, time
from pathlib import Path
import fpt.cache.integrity
from fpt.pipeline.config import load_config
from fpt.stages.train.train_side import train_side
store, runs, epochs, check, lpm = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "on", sys.argv[5]
if not check:
    fpt.cache.integrity.ShardReadCheck.check = lambda self, start, stop, arrays: None
config = load_config(None, [f"train.runs_root={runs}", f"train.epochs={epochs}", "train.device=cpu",
                            f"lpm.name={lpm}", "train.resident=off"], "demo")  # every epoch reads the store
began = time.perf_counter()
result = train_side(config, store, show_progress=False)
total = time.perf_counter() - began
epochs = [json.loads(line)["seconds"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"epochs": epochs, "total": total}))
"""


def build(scenario: str, quick: bool, chunk_checksums: bool) -> Path:
    import fpt.cache.layout
    from fpt.cache.catalog import list_caches
    from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
    from fpt.pipeline.config import load_config
    from fpt.stages.core.settings import CacheConfig
    from fpt.stages.extract.settings_check import storage_settings

    config = load_config(None, [], "demo")
    splits = {split: max(4, count // 8) if quick else count for split, count in SPLITS[scenario].items()}
    metadata = synthetic_metadata(splits, num_classes=config.demo.num_classes, heads=HEADS[scenario],
                                  storage=storage_settings(CacheConfig()), dataset="demo", lpm_name=scenario)
    root = WORK / "read-checks" / ("crc32c" if chunk_checksums else "plain")
    for path, existing, _ in list_caches(root):
        if existing is not None and existing.complete and existing.cache_key == metadata.cache_key:
            return path
    if not chunk_checksums:  # a store without chunk crc32c, checked by hashing its shard files
        fpt.cache.layout.compressors = fpt.cache.layout._compressor
    try:
        return write_synthetic_cache(root, metadata, show_progress=True)
    finally:
        fpt.cache.layout.compressors = COMPRESSORS


def run(store: Path, epochs: int, check: bool, scenario: str, reading_only: bool) -> dict:
    command = [sys.executable, "-c", READ_ONE if reading_only else TRAIN_ONE, str(store), str(WORK / "read-checks-runs"),
               str(epochs), "on" if check else "off", scenario]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["demo", "vitb512"], choices=sorted(SPLITS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs of fresh processes")
    parser.add_argument("--quick", action="store_true", help="an eighth of the images, one round of 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds = 2, 1
    from fpt.cache.catalog import folder_bytes

    rows, interleaved_rows, payload = [], [], {}
    for scenario in args.scenarios:
        stores = {True: build(scenario, args.quick, True), False: build(scenario, args.quick, False)}
        variants = {"none": (stores[False], False), "crc32c": (stores[True], True), "sha256": (stores[False], True)}
        names = list(variants)
        payload[scenario] = {"store_mb": folder_bytes(stores[True]) / 1e6, "splits": SPLITS[scenario]}
        for what, reading_only in (("train-side", False), ("reading only", True)):
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            for index in range(args.rounds):
                for name in names[index % 3:] + names[:index % 3]:
                    store, check = variants[name]
                    runs[name].append(run(store, args.epochs, check, scenario, reading_only))

            def later(r: dict) -> float:
                return statistics.mean(r["epochs"][1:]) if len(r["epochs"]) > 1 else float("nan")

            figures = {}
            for part, measure in (("first epoch", lambda r: r["epochs"][0]), ("later epochs", later),
                                  ("whole run", lambda r: r["total"])):
                medians = {name: statistics.median(measure(r) for r in runs[name]) for name in variants}
                base = medians["none"]
                figures[part] = {name: {"seconds": value, "cost_percent": (value / base - 1) * 100}
                                 for name, value in medians.items()}
                rows.append([scenario, what, part, base, medians["crc32c"],
                             f"{(medians['crc32c'] / base - 1) * 100:+.1f} %", medians["sha256"],
                             f"{(medians['sha256'] / base - 1) * 100:+.1f} %"])
            payload[scenario][what] = {"figures": figures, "runs": runs}
        done = subprocess.run([sys.executable, "-c", INTERLEAVED, str(stores[True]), str(stores[False]),
                               str(max(args.epochs, 2) * (1 if args.quick else 3))],
                              cwd=ROOT, capture_output=True, text=True, check=False,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        interleaved = json.loads(done.stdout.strip().splitlines()[-1])
        payload[scenario]["interleaved"] = interleaved
        base = interleaved["epoch_none"]
        interleaved_rows.append([scenario, base, interleaved["epoch_crc32c"],
                                 f"{(interleaved['epoch_crc32c'] / base - 1) * 100:+.1f} %", interleaved["sha256_split"],
                                 f"{interleaved['sha256_split'] / base * 100:.1f} %"])
    print_table("Reading the train split, one process, stores alternating each epoch (medians)",
                ["scenario", "epoch, no check (s)", "epoch, crc32c (s)", "crc32c cost per epoch",
                 "sha256 of the split (s)", "sha256, once, of an epoch"], interleaved_rows)
    print_table(f"Read checks, {args.epochs} epochs, medians of {args.rounds} rounds of fresh processes",
                ["scenario", "measured", "part", "none (s)", "crc32c (s)", "crc32c cost", "sha256 (s)", "sha256 cost"],
                rows)
    write_results("read_checks", {"epochs": args.epochs, "rounds": args.rounds, "scenarios": payload})


if __name__ == "__main__":
    main()

"""Sweep throughput on a demo cache: dask workers, packed trials, memory per worker.

    python bench/sweep_bench.py [--out bench/results/sweep_bench.json] [--set key=value ...]
    python bench/sweep_bench.py --default-demo --skip-sweeps     # packed vs one on the default demo

Measures on a demo cache (extracted first if missing; the LPM is not used afterwards):
  1. one trial alone (train_side's code path, in this process, all cores),
  2. 16 trials packed on one read of each batch (same process, same cores) -> ratio to 1, timed
     in adjacent pairs `--repeats` times (median and every pair's ratio);
     1 and 2 both as a sweep runs them (report pictures left for `fpt report`, the sweep draws
     the best trial's) and both drawing every run's pictures as train-side does,
  3. an 8-trial `fpt sweep` on a LocalCluster with 1 worker and with 2 workers -> ratio,
  4. the peak resident memory of each dask worker process.
Prints a table and writes JSON. Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A demo large enough that reading the cache matters, small enough for a 2-core machine.
BENCH_SETS = [
    "demo.num_train=64", "demo.num_val=16", "demo.num_test=16", "demo.image_size=256",
    "extract.input_size=256", "extract.side_store_size=144", "extract.num_workers=0",
    "side.input_size=128", "cache.shard_size=16", "cache.chunk_size=4",
    "lpm.name=vit_tiny_patch16_224", "lpm.weights=none", "train.epochs=2", "train.batch_size=16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("outputs/bench-sweep"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/sweep_bench.json"))
    parser.add_argument("--packed", type=int, default=16, help="Trials in the packed measurement.")
    parser.add_argument("--repeats", type=int, default=3, help="Pairs of (one trial, packed trials) timed.")
    parser.add_argument("--sweep-trials", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="Torch threads for the in-process trials (default: all cores).")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Extra config overrides.")
    parser.add_argument("--default-demo", action="store_true",
                        help="Use the default demo (512 px, 240 train images; its cache in outputs/ is reused) "
                             "instead of the small bench demo; --set train.epochs=N to shorten it.")
    parser.add_argument("--skip-sweeps", action="store_true", help="Only the packed measurement.")
    args = parser.parse_args()

    import shutil

    import torch
    from rich.console import Console
    from rich.table import Table

    from fpt.pipeline.cluster import machine_cores
    from fpt.pipeline.config import load_config
    from fpt.pipeline.sweep import run_sweep
    from fpt.stages.core.settings import SweepConfig
    from fpt.stages.extract.run import run_extract
    from fpt.stages.train.packed_training import train_pack

    root = args.root.resolve()
    runs = root / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    if args.default_demo:
        sets = ["train.epochs=2", f"train.runs_root={runs}"] + args.sets
    else:
        sets = BENCH_SETS + [f"dataset.data_root={root / 'data'}", f"cache.root={root / 'cache'}",
                             f"train.runs_root={runs}"] + args.sets
    base = load_config(ROOT / "pipeline.yaml", sets, dataset="demo")
    console = Console()
    began = time.perf_counter()
    cache = run_extract(base, show_progress=False)
    console.print(f"cache {cache.path} ({'reused' if cache.reused else f'extracted in {cache.seconds:.1f} s'})")
    threads = args.torch_threads or machine_cores()
    torch.set_num_threads(threads)

    def lrs(count: int) -> list[float]:
        return [float(f"{1e-4 * 1.3 ** i:.3g}") for i in range(count)]

    def timed_pack(count: int, tag: str, pictures: bool) -> float:
        configs = [base.model_copy(update={"train": base.train.model_copy(update={"lr": lr, "run_name": f"{tag}-{i}"})})
                   for i, lr in enumerate(lrs(count))]
        start = time.perf_counter()
        # resumable: as train-side and sweeps train, each trial keeps its resume state after every epoch
        outcomes = train_pack(configs, cache.path, isolate_failures=False, draw_pictures=pictures, resumable=True)
        assert all(o.error is None for o in outcomes)
        return time.perf_counter() - start

    timed_pack(1, "warm-up", False)  # first-use costs (imports, allocator) would count against "one"
    # As in a sweep: report pictures are drawn afterwards for the best trial only. One trial and the
    # pack are timed next to each other, `--repeats` times: the ratio of each pair, and their median,
    # is what this noisy machine can tell.
    pairs = []
    for repeat in range(args.repeats):
        pairs.append((timed_pack(1, f"one{repeat}", False), timed_pack(args.packed, f"packed{repeat}", False)))
    ratios = sorted(p / o for o, p in pairs)
    median_ratio = statistics.median(ratios)
    one, packed = statistics.median(o for o, _ in pairs), statistics.median(p for _, p in pairs)
    # As train-side: every run draws its five pictures (about a second each run).
    one_pictures = timed_pack(1, "one-pic", True)
    packed_pictures = timed_pack(args.packed, "packed-pic", True)

    sweeps = {}
    for workers in (() if args.skip_sweeps else (1, 2)):
        sweep = SweepConfig(name=f"bench-{workers}w", parameters={"train.lr": lrs(args.sweep_trials)})
        result = run_sweep(base, sweep, cache.path, max_workers=workers, show_progress=False)
        assert all(r.status == "finished" for r in result.reports), [r.error for r in result.reports]
        peaks = sorted({round(r.worker_peak_rss_mb or 0.0, 1) for r in result.reports})
        sweeps[workers] = {"seconds": result.seconds, "workers": result.plan.workers,
                           "torch_threads_per_worker": result.plan.torch_threads, "worker_peak_rss_mb": peaks}

    figures = {
        "machine_cores": machine_cores(),
        "in_process_torch_threads": threads,
        "settings": sets,
        "one_trial_s": one,
        "packed_trials": args.packed,
        "packed_s": packed,
        "pairs_s": pairs,
        "packed_over_one_each_pair": ratios,
        "packed_over_one": median_ratio,
        "one_trial_with_pictures_s": one_pictures,
        "packed_with_pictures_s": packed_pictures,
        "packed_over_one_with_pictures": packed_pictures / one_pictures,
        "sweep_trials": args.sweep_trials,
        "sweeps": sweeps,
        "total_s": time.perf_counter() - began,
    }
    table = Table(title=f"Sweep bench ({machine_cores()} cores)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row(f"1 trial alone ({threads} torch threads), pictures drawn later as in a sweep",
                  f"{one:.1f} s (median of {args.repeats})")
    table.add_row(f"{args.packed} trials packed, same", f"{packed:.1f} s (median of {args.repeats})")
    table.add_row("packed / one, median of the pairs (each pair)",
                  f"{median_ratio:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}); target < 4x")
    table.add_row("1 trial alone, every run drawing its pictures", f"{one_pictures:.1f} s")
    table.add_row(f"{args.packed} trials packed, every run drawing its pictures",
                  f"{packed_pictures:.1f} s ({packed_pictures / one_pictures:.2f}x)")
    for workers in sweeps:
        s = sweeps[workers]
        table.add_row(f"{args.sweep_trials}-trial sweep, {workers} worker(s) x {s['torch_threads_per_worker']} torch threads",
                      f"{s['seconds']:.1f} s")
        table.add_row(f"  peak RSS per worker ({workers} worker(s))", ", ".join(f"{p:.0f} MB" for p in s["worker_peak_rss_mb"]))
    if len(sweeps) == 2:
        figures["sweep_1_over_2_workers"] = sweeps[1]["seconds"] / sweeps[2]["seconds"]
        table.add_row("sweep speed-up 2 vs 1 worker", f"{figures['sweep_1_over_2_workers']:.2f}x")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

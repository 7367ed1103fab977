"""One store for every labelling and every added image: what relabelling, adding images and compacting cost.

    python bench/cache_growth.py [--added 20] [--relabelled 5] [--epochs 1] [--rounds 5] [--fresh] [--quick]

On the default demo (240/80/120 images, vit_tiny with random weights at 512 px), in one process:
  1. extract the demo with `--added` train images held back (the store of the first extraction);
  2. move `--relabelled` train images into another class's folder, `fpt extract` again (a new label
     table, no LPM), and train `--epochs` epochs on the new labels;
  3. put the held-back images back, `fpt extract` again (the LPM runs on those only);
  4. copy the grown store and `fpt cache compact` the copy;
  5. with `--fresh`, extract the same final dataset into an empty cache root; without it, the store
     of step 1 copied before step 2 stands for it (one extraction of all but the added images): the
     layout a single extraction writes (split-ordered, the train split shuffled, whole shards),
     which is the layout stores had before they could grow;
  6. time a stage-two epoch of the train split on the three stores (read and decode every batch, as
     training does, with `--rounds` rounds in a rotating order; the median, and per image).
The LPM's time is the sum over its forward calls (`TokenSelectingLPM.forward`), its images their count.
Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, print_table, write_results  # noqa: E402

import fpt.stages.lpm.token_selection as token_selection  # noqa: E402
from fpt.cache.compact import compact  # noqa: E402
from fpt.cache.reader import CacheReader  # noqa: E402
from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.datasets.registry import dataset_source, resolve_dataset  # noqa: E402
from fpt.stages.extract.run import run_extract  # noqa: E402
from fpt.stages.train.cache_batches import SplitBatches  # noqa: E402
from fpt.stages.train.cache_choice import label_table_of  # noqa: E402
from fpt.stages.train.train_side import train_side  # noqa: E402

LPM = {"images": 0, "seconds": 0.0}
_forward = token_selection.TokenSelectingLPM.forward


def _counted(self, images, *args, **kwargs):
    began = time.perf_counter()
    out = _forward(self, images, *args, **kwargs)
    LPM["images"] += len(images)
    LPM["seconds"] += time.perf_counter() - began
    return out


token_selection.TokenSelectingLPM.forward = _counted


def extract(config) -> dict:
    LPM.update(images=0, seconds=0.0)
    began = time.perf_counter()
    result = run_extract(config, show_progress=False)
    return {"path": result.path, "wall_s": time.perf_counter() - began, "lpm_images": LPM["images"],
            "lpm_s": LPM["seconds"], "label_table": result.label_table, "rows": result.metadata.num_rows}


def read_epoch(path: Path, table: str | None) -> float:
    batches = SplitBatches(CacheReader(path, table), "train", 16, shuffle=True, with_features=True)
    began = time.perf_counter()
    for _ in batches.batches(reuse=1):
        pass
    return time.perf_counter() - began


def train_epoch_seconds(config, cache: Path) -> tuple[float, str]:
    """Train-side from `cache`: the mean seconds of its epochs, and the label table its run.json records."""
    result = train_side(config, cache, show_progress=False)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [line["seconds"] for line in lines if "seconds" in line] or [float("nan")]
    label_table = json.loads((result.run_dir / "run.json").read_text())["label_table"]
    return statistics.mean(seconds), label_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--added", type=int, default=20)
    parser.add_argument("--relabelled", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="of the run trained after the relabelling")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a 60/20/20-image demo at 128 px input")
    parser.add_argument("--fresh", action="store_true", help="extract the final dataset afresh for today's layout")
    parser.add_argument("--reads-only", action="store_true", help="time the epochs again on the stores of the last run")
    args = parser.parse_args()
    work = WORK / "cache_growth"
    if args.reads_only:
        config = load_config(None, [f"dataset.data_root={work / 'data'}", f"cache.root={work / 'grown'}"], "demo")
        grown = next((work / "grown").glob("*.zarr"))
        table = label_table_of(grown, dataset_source(config))
        fresh = list((work / "fresh").glob("*.zarr"))
        time_epochs(args, {"today's layout (one extraction)": (fresh[0] if fresh else next((work / "one_extraction").glob("*.zarr")), None),
                           "appended (grown by the added images)": (grown, table),
                           "compacted (fpt cache compact)": (work / "compacted" / grown.name, table)})
        return
    if work.exists():
        shutil.rmtree(work)
    base = [f"dataset.data_root={work / 'data'}", f"train.runs_root={work / 'runs'}", f"train.epochs={args.epochs}",
            "train.device=cpu", "extract.device=cpu"]
    if args.quick:
        base += ["demo.num_train=60", "demo.num_val=20", "demo.num_test=20", "extract.input_size=128"]
    grown_config = load_config(None, [*base, f"cache.root={work / 'grown'}"], "demo")
    fresh_config = load_config(None, [*base, f"cache.root={work / 'fresh'}"], "demo")
    demo = work / "data" / "demo"
    resolve_dataset(grown_config, show_progress=False)  # generates the demo's images
    train = sorted((demo / "train").glob("*/*.png"))
    held = work / "held_back"
    held.mkdir()
    moved = [train[i] for i in range(0, len(train), max(1, len(train) // args.added))][: args.added]
    for image in moved:
        (held / image.parent.name).mkdir(exist_ok=True)
        shutil.move(image, held / image.parent.name / image.name)
    steps = {"first extraction": extract(grown_config)}
    show(steps)
    one_extraction = work / "one_extraction" / steps["first extraction"]["path"].name
    shutil.copytree(steps["first extraction"]["path"], one_extraction)

    remaining = sorted((demo / "train").glob("*/*.png"))
    classes = sorted(p.name for p in (demo / "train").iterdir() if p.is_dir())
    for image in remaining[1 : 1 + args.relabelled * 7 : 7]:
        other = classes[(classes.index(image.parent.name) + 1) % len(classes)]
        shutil.move(image, demo / "train" / other / image.name)
    steps["relabel"] = extract(grown_config)
    began = time.perf_counter()
    relabelled_epoch, trained_table = train_epoch_seconds(grown_config, steps["relabel"]["path"])
    steps["relabel"]["train_wall_s"] = time.perf_counter() - began
    steps["relabel"]["run_label_table"] = trained_table
    show(steps)

    for folder in held.iterdir():
        for image in folder.iterdir():
            shutil.move(image, demo / "train" / folder.name / image.name)
    steps["add"] = extract(grown_config)
    grown = steps["add"]["path"]
    compacted = work / "compacted" / grown.name
    shutil.copytree(grown, compacted)
    began = time.perf_counter()
    compact(compacted)
    steps["compact"] = {"wall_s": time.perf_counter() - began, "lpm_images": 0, "lpm_s": 0.0}
    show(steps)
    if args.fresh:
        steps["fresh extraction"] = extract(fresh_config)
        show(steps)
        one_extraction = steps["fresh extraction"]["path"]

    source = dataset_source(grown_config)
    stores = {"today's layout (one extraction)": (one_extraction, None),
              "appended (grown by the added images)": (grown, label_table_of(grown, source)),
              "compacted (fpt cache compact)": (compacted, label_table_of(grown, source))}
    show(steps)
    print(f"relabelled run trained on label table {trained_table[:16]} (the relabel's: {steps['relabel']['label_table'][:16]}); "
          f"train-side {args.epochs} epochs {steps['relabel']['train_wall_s']:.1f} s", flush=True)
    reads, counts = time_epochs(args, stores)
    write_results("cache_growth", {"args": vars(args), "steps": {k: {n: str(v) if isinstance(v, Path) else v
                                                                     for n, v in s.items()} for k, s in steps.items()},
                                   "read_epoch_s": reads, "train_images": counts})


def time_epochs(args, stores: dict[str, tuple[Path, str | None]]) -> tuple[dict, dict]:
    """`--rounds` epochs of each store's train split, the stores in a rotating order each round. On a shared
    machine the least disturbed round (the minimum) says most; the median is shown beside it."""
    reads: dict[str, list[float]] = {name: [] for name in stores}
    names = list(stores)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            reads[name].append(read_epoch(*stores[name]))
    counts = {name: CacheReader(path, table).metadata.split_counts["train"] for name, (path, table) in stores.items()}
    print_table("Stage-two epoch of the train split (read and decode every batch)",
                ["store", "train images", "epoch, min (s)", "median (s)", "ms per image (min)"],
                [[name, counts[name], f"{min(reads[name]):.3f}", f"{statistics.median(reads[name]):.3f}",
                  f"{1000 * min(reads[name]) / counts[name]:.2f}"] for name in stores])
    return reads, counts


def show(steps: dict) -> None:
    rows = [[step, f"{values.get('lpm_images', 0)}", f"{values.get('lpm_s', 0.0):.1f}", f"{values['wall_s']:.1f}"]
            for step, values in steps.items()]
    print_table("Steps", ["step", "LPM images", "LPM s", "wall s"], rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

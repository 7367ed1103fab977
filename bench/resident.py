"""Stage two against its compute limit: the same epoch from tensors in memory, streamed from the store,
and from the resident cache (train.resident), side by side.

    python bench/resident.py [--scenarios demo vitb512] [--dtypes float16 int4] [--rounds 3] [--epochs 4]
                             [--threads N] [--ahead] [--quick]

Per scenario and storage dtype, one synthetic store written by the real writer at the scenario's shapes
(cache/synthetic.py: 6 layers, 205 kept tokens of 64 channels, 3 heads for the demo's LPM, 12 for
ViT-B/512; 144 px side images; the default codec, shards and chunks), train split of `--sizes`
images. Three variants of one epoch of `fpt train-side` (batch 16, the FPTPlus model and optimizer
step it builds, stage_two.Trainer), each in a fresh process, their order rotating each round:
  compute   the training step alone, on the epoch's batches made beforehand and kept as tensors
            (augmented images, float32 keys and values, labels): no reading, gathering, decoding or
            augmentation: the limit the other two are measured against
  stream    train-side's batches (PackBatches) with train.resident=off: read from the store every epoch
  resident  the same with train.resident=ram: the copy read once, before the first epoch
  ahead     (--ahead) resident with train.prefetch=true: train-side's own loop, the next batch gathered,
            decoded and augmented in the reading thread while the step runs (a GPU's default)
Each process times `--epochs` epochs and keeps the fastest after the first (the noise of a shared
machine only adds time); the ratios to `compute` are taken within each round, and the table gives
their median. Each epoch's CPU time (the process's, all threads) is kept too: on a machine other
jobs share, it moves less than the wall time, and with one torch thread it is the work done. The
stream and resident processes also time their epochs' parts: getting the batches (reading or
gathering, decoding to float32), augmenting the side images, and the steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, apply_threads, bench_config, console, print_table, run_fresh, write_results  # noqa: E402

SCRIPT = Path(__file__).resolve()
HEADS = {"demo": 3, "vitb512": 12}
VARIANTS = ("compute", "stream", "resident")
AHEAD = "ahead"


# ---------------------------------------------------------------- child side: one variant
def run_variant(args: argparse.Namespace) -> dict:
    import torch
    from stage_two import Trainer

    from fpt.cache.reader import CacheReader
    from fpt.stages.train.pack_batches import PackBatches
    from fpt.stages.train.recipe import ready_batches

    where = "off" if args.variant == "stream" else "ram"
    config, _ = bench_config(args.scenario, args.num_train, [f"train.batch_size={args.batch_size}",
                                                            f"train.resident={where}",
                                                            f"train.prefetch={str(args.variant == AHEAD).lower()}"])
    reader = CacheReader(Path(args.store))
    loaded = time.perf_counter()
    batches = PackBatches(reader, config, torch.device("cpu"))
    loaded = time.perf_counter() - loaded  # the resident copy's one read (and the splits' set-up)
    trainer = Trainer(config, reader.metadata, len(batches.train), args.epochs)
    epochs: list[dict[str, float]] = []
    if args.variant == "compute":
        prepared = [tuple(x.clone() for x in batches.augmented(ready))
                    for ready in ready_batches(batches.train, batches.device, batches.prefetch)]
        for _ in range(args.epochs):
            began, cpu = time.perf_counter(), time.process_time()
            for images, keys, values, labels in prepared:
                trainer.step(images, keys, values, labels)
            seconds = time.perf_counter() - began
            epochs.append({"seconds": seconds, "cpu": time.process_time() - cpu, "step": seconds, "batches": 0.0,
                           "augment": 0.0})
    elif args.variant == AHEAD:  # the parts overlap: only the epoch is timed
        for _ in range(args.epochs):
            began, cpu = time.perf_counter(), time.process_time()
            for images, keys, values, labels in batches.training_epoch():
                trainer.step(images, keys, values, labels)
            seconds = time.perf_counter() - began
            epochs.append({"seconds": seconds, "cpu": time.process_time() - cpu, "step": 0.0, "batches": 0.0,
                           "augment": 0.0})
    else:
        for _ in range(args.epochs):
            parts = {"batches": 0.0, "augment": 0.0, "step": 0.0}
            began, cpu = time.perf_counter(), time.process_time()
            epoch = ready_batches(batches.train, batches.device, batches.prefetch)
            while True:
                mark = time.perf_counter()
                ready = next(epoch, None)
                parts["batches"] += time.perf_counter() - mark
                if ready is None:
                    break
                mark = time.perf_counter()
                images, keys, values, labels = batches.augmented(ready)
                parts["augment"] += time.perf_counter() - mark
                mark = time.perf_counter()
                trainer.step(images, keys, values, labels)
                parts["step"] += time.perf_counter() - mark
            epochs.append({"seconds": time.perf_counter() - began, "cpu": time.process_time() - cpu, **parts})
    fastest = min(epochs[1:] or epochs, key=lambda e: e["seconds"])
    return {"variant": args.variant, "samples": batches.train.num_samples, "steps": len(batches.train),
            "epochs": epochs, "epoch": fastest, "cpu": min(e["cpu"] for e in epochs[1:] or epochs),
            "load_s": loaded, "residency": batches.residency.record(),
            "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- parent side
def build_store(scenario: str, dtype: str, num_train: int) -> Path:
    from fpt.cache.catalog import list_caches
    from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
    from fpt.stages.core.settings import CacheConfig
    from fpt.stages.extract.settings_check import storage_settings

    splits = {"train": num_train, "val": 16, "test": 16}
    metadata = synthetic_metadata(splits, num_classes=3, heads=HEADS[scenario],
                                  storage=storage_settings(CacheConfig(dtype=dtype)), dataset="demo", lpm_name=scenario)
    root = WORK / "resident"
    for path, existing, _ in list_caches(root):
        if existing is not None and existing.complete and existing.cache_key == metadata.cache_key:
            return path
    return write_synthetic_cache(root, metadata, show_progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small stores, one round of 2 epochs")
    parser.add_argument("--scenarios", nargs="+", default=["demo", "vitb512"], choices=sorted(HEADS))
    parser.add_argument("--dtypes", nargs="+", default=["float16"], help="cache.dtype of the stores")
    parser.add_argument("--sizes", type=int, nargs=2, default=None, metavar=("DEMO", "VITB"),
                        help="train images per scenario (default 240 and 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per process; the fastest after the first counts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--ahead", action="store_true", help="also the resident copy read ahead in a thread")
    # child mode
    parser.add_argument("--variant", choices=(*VARIANTS, AHEAD))
    parser.add_argument("--scenario", default="demo")
    parser.add_argument("--store")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--result-json")
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.variant:
        import json

        Path(args.result_json).write_text(json.dumps(run_variant(args)))
        return
    if args.quick:
        args.rounds, args.epochs = 1, 2
    sizes = dict(zip(["demo", "vitb512"], args.sizes or ((32, 16) if args.quick else (240, 64))))

    variants = (*VARIANTS, AHEAD) if args.ahead else VARIANTS
    timed = variants[1:]  # each against compute
    rows, part_rows, payload = [], [], {}
    for scenario in args.scenarios:
        for dtype in args.dtypes:
            store = build_store(scenario, dtype, sizes[scenario])
            common = ["--scenario", scenario, "--store", str(store), "--num-train", str(sizes[scenario]),
                      "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
            common += ["--threads", str(args.threads)] if args.threads else []
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for index in range(args.rounds):
                order = variants[index % len(variants):] + variants[:index % len(variants)]
                console.print(f"{scenario} {dtype}: round {index + 1} of {args.rounds} ({', '.join(order)})")
                for variant in order:
                    result = run_fresh(SCRIPT, [*common, "--variant", variant])
                    if "error" in result:
                        raise SystemExit(f"{variant}: {result['error']}\n{result.get('stderr_tail', '')}")
                    runs[variant].append(result)
            ratios = {v: [r["epoch"]["seconds"] / c["epoch"]["seconds"] for r, c in zip(runs[v], runs["compute"])]
                      for v in timed}
            cpu_ratios = {v: [r["cpu"] / c["cpu"] for r, c in zip(runs[v], runs["compute"])] for v in timed}
            payload[f"{scenario}-{dtype}"] = {"store": str(store), "samples": sizes[scenario], "runs": runs,
                                              "ratios": ratios, "cpu_ratios": cpu_ratios}
            compute = statistics.median(r["epoch"]["seconds"] for r in runs["compute"])
            rows.append([scenario, dtype, sizes[scenario], compute,
                         statistics.median(r["epoch"]["seconds"] for r in runs["stream"]),
                         statistics.median(ratios["stream"]),
                         statistics.median(r["epoch"]["seconds"] for r in runs["resident"]),
                         statistics.median(ratios["resident"]),
                         ", ".join(f"{x:.3f}" for x in ratios["resident"]),
                         statistics.median(cpu_ratios["stream"]), statistics.median(cpu_ratios["resident"]),
                         statistics.median(r["load_s"] for r in runs["resident"])]
                        + ([statistics.median(ratios[AHEAD]), ", ".join(f"{x:.3f}" for x in ratios[AHEAD]),
                            statistics.median(cpu_ratios[AHEAD])] if args.ahead else []))
            for variant in ("stream", "resident"):
                steps = runs[variant][0]["steps"]
                part_rows.append([scenario, dtype, variant] + [
                    statistics.median(r["epoch"][part] for r in runs[variant]) / steps * 1000
                    for part in ("batches", "augment", "step")])
    print_table(f"Epoch of train-side's step (batch {args.batch_size}), medians of {args.rounds} rounds of fresh processes",
                ["LPM", "cache.dtype", "train images", "compute s", "stream s", "stream / compute", "resident s",
                 "resident / compute", "resident / compute, each round", "stream / compute, CPU time",
                 "resident / compute, CPU time", "resident load s"]
                + (["ahead / compute", "ahead / compute, each round", "ahead / compute, CPU time"] if args.ahead else []),
                rows)
    print_table("Where an epoch's time goes: ms per batch (medians)",
                ["LPM", "cache.dtype", "variant", "batches (read/gather, decode)", "augment", "step"], part_rows)
    name = (f"resident_{'_'.join(args.scenarios)}_{'_'.join(args.dtypes)}_threads-{args.threads or 'default'}"
            + ("_ahead" if args.ahead else ""))
    write_results("resident_quick" if args.quick else name,
                  {"threads": args.threads, "epochs": args.epochs, "rounds": args.rounds, "sizes": sizes,
                   "batch_size": args.batch_size, "results": payload})


if __name__ == "__main__":
    main()

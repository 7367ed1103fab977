"""train-side on a GPU at ViT-B/512's shapes: peak CUDA memory and epoch time, fp32 against bf16
(train.precision), streaming the cache against holding it on the device (train.resident).

    python bench/train_device.py --device cuda          # ViT-B/512 shapes, batch 16 (bench/device_checks.sh)
    python bench/train_device.py --quick --device cpu   # a smoke test at tiny sizes
    python bench/train_device.py --device cpu --scenario demo --train 240 --rounds 3   # the demo's shapes on a CPU

A synthetic store at ViT-B/512's shapes (L=6 layers, H=12 heads, n=205 kept tokens, Dh=64; or the demo's,
H=3, with `--scenario demo`; float16,
the default codec and shards; --train/--val/--test images, 3 classes) is written once by the real
writer (cache/synthetic.py), without an LPM. Each variant trains on it along `fpt train-side`'s code
path (a pack of one keeping its resume state every epoch; report pictures left out), in this
process, for --epochs epochs at batch 16; the variants take turns for --rounds rounds. For each run:
  peak MB     torch.cuda.max_memory_allocated over the whole run (training, evaluation, test), above
              what was allocated when it started (reset before every run)
  epoch s     the median of its epochs' training time (metrics.jsonl) after the first, which warms up
Resident variants run only where the settings have `train.resident` (`resident: device`); elsewhere
the script prints "resident: not available". Figures, not assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import WORK, print_table, write_results  # noqa: E402

from fpt.cache.catalog import list_caches  # noqa: E402
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache  # noqa: E402
from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.core.settings import CacheConfig, TrainConfig  # noqa: E402
from fpt.stages.extract.settings_check import storage_settings  # noqa: E402
from fpt.stages.train.packed_training import train_pack  # noqa: E402

STREAMING_TARGET_MB = 300
HEADS = {"vitb512": 12, "demo": 3}


def build(scenario: str, splits: dict[str, int]) -> Path:
    """The synthetic store of these split sizes at the scenario's shapes (reused when it exists)."""
    metadata = synthetic_metadata(splits, num_classes=3, heads=HEADS[scenario], storage=storage_settings(CacheConfig()),
                                  dataset="demo", lpm_name=scenario)
    root = WORK / "train-device"
    for path, existing, _ in list_caches(root):
        if existing is not None and existing.complete and existing.cache_key == metadata.cache_key:
            return path
    return write_synthetic_cache(root, metadata)


def variants() -> list[tuple[str, list[str]]]:
    """(name, settings) of each variant: both precisions streaming, and resident where fpt has it."""
    found = [(f"streaming {p}", [f"train.precision={p}"]) for p in ("fp32", "bf16")]
    if "resident" in TrainConfig.model_fields:
        found += [(f"resident {p}", [f"train.precision={p}", "train.resident=device"]) for p in ("fp32", "bf16")]
    return found


def train_once(store: Path, settings: list[str], device: torch.device) -> dict:
    """One run of the variant: its epochs' training times and its peak device memory."""
    config = load_config(None, settings, "demo")
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    began = time.perf_counter()
    (outcome,) = train_pack([config], store, isolate_failures=False, draw_pictures=False, resumable=True)
    seconds = time.perf_counter() - began
    if outcome.result is None:
        raise RuntimeError(outcome.error or "the run gave no result")
    run_dir = outcome.result.run_dir
    epochs = [json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    peak = (torch.cuda.max_memory_allocated(device) - start) / 2**20 if cuda else None
    return {"epochs_s": epochs, "epoch_s": statistics.median(epochs[1:] or epochs), "peak_mb": peak, "run_s": seconds,
            "precision": json.loads((run_dir / "run.json").read_text())["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="demo shapes, 16/4/4 images, 2 epochs, 1 round")
    parser.add_argument("--scenario", default="vitb512", choices=list(HEADS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scenario = "demo" if args.quick else args.scenario
    splits = {"train": 16, "val": 4, "test": 4} if args.quick else {"train": args.train, "val": args.val,
                                                                     "test": args.test}
    epochs, rounds = (2, 1) if args.quick else (args.epochs, args.rounds)
    device = torch.device(args.device)

    began = time.perf_counter()
    store = build(scenario, splits)
    print(f"store {store} ({splits}, {scenario} shapes) ready in {time.perf_counter() - began:.1f} s", flush=True)
    common = [f"train.runs_root={WORK / 'train-device-runs'}", f"train.epochs={epochs}", f"train.device={device}",
              "train.batch_size=16", f"lpm.name={scenario}"]
    chosen = variants()
    if not any(name.startswith("resident") for name, _ in chosen):
        print("resident: not available (TrainConfig has no `resident` field)")
    runs: dict[str, list[dict]] = {name: [] for name, _ in chosen}
    for round_ in range(rounds):
        shift = round_ % len(chosen)
        for name, settings in chosen[shift:] + chosen[:shift]:
            try:
                run = train_once(store, common + settings, device)
            except Exception as error:  # report it and go on with the other variants
                run = {"error": f"{type(error).__name__}: {error}"}
            runs[name].append(run)
            shown = {k: v for k, v in run.items() if k != "epochs_s"}
            print(f"round {round_ + 1} {name}: {shown}", flush=True)

    rows, summary = [], {}
    for name, done in runs.items():
        good = [r for r in done if "error" not in r]
        if not good:
            rows.append([name, None, None, None, done[0]["error"] if done else "not run"])
            continue
        peaks = [r["peak_mb"] for r in good if r["peak_mb"] is not None]
        summary[name] = {"epoch_s": statistics.median(r["epoch_s"] for r in good),
                         "peak_mb": max(peaks) if peaks else None, "precision": good[0]["precision"]}
        note = ""
        if name.startswith("streaming") and peaks:
            note = f"target <= {STREAMING_TARGET_MB} MB: {'met' if max(peaks) <= STREAMING_TARGET_MB else 'not met'}"
        rows.append([name, summary[name]["epoch_s"], splits["train"] / summary[name]["epoch_s"],
                     summary[name]["peak_mb"] if peaks else "no GPU", note])
    print_table(f"train-side, {scenario} shapes, batch 16, {splits['train']} training images, {epochs} epochs, "
                f"{rounds} round(s), {device}", ["variant", "epoch s (median)", "train img/s", "peak MB", "note"], rows)
    for a, b in (("streaming fp32", "streaming bf16"), ("resident fp32", "resident bf16"),
                 ("streaming fp32", "resident fp32"), ("streaming bf16", "resident bf16")):
        if a in summary and b in summary:
            ratios = [y["epoch_s"] / x["epoch_s"] for x, y in zip(runs[a], runs[b])
                      if "error" not in x and "error" not in y]
            print(f"epoch time {b} / {a}: {summary[b]['epoch_s'] / summary[a]['epoch_s']:.2f} (medians); per round "
                  + " ".join(f"{r:.2f}" for r in ratios))
    write_results(f"train_device_{scenario}_{device.type}" + ("_quick" if args.quick else ""),
                  {"store": str(store), "splits": splits, "epochs": epochs, "rounds": rounds, "runs": runs,
                   "summary": summary})


if __name__ == "__main__":
    main()

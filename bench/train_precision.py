"""What train.precision bf16 costs or gains against fp32: test AUC per seed, and epoch time.

    python bench/train_precision.py                         # the default demo, seeds 0,1,2 (extracts it if needed)
    python bench/train_precision.py --seeds 0 --set train.epochs=5    # a shorter look
    python bench/train_precision.py --set train.device=cuda           # on a GPU

Every seed trains `fpt train-side` on the default demo's cache (`fpt extract --dataset demo`: float16,
blosc-lz4) once in each precision (`train.seed`: the side network's initialisation, dropout,
augmentation and batch order), the precisions alternating in their order from one seed to the next
so that a drift of the machine touches both alike. For each run it prints the test AUC of the
best-validation and of the final model, and its epochs' training time (metrics.jsonl: an epoch's steps,
without its evaluation), the median and the fastest (the epoch least disturbed by other processes on a
shared machine); then each precision's mean and sample standard deviation over
the seeds, and bf16's epoch time against fp32's. bf16 costs no AUC where its mean is within fp32's
seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.extract.run import run_extract  # noqa: E402
from fpt.stages.train.train_side import train_side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="pipeline.yaml override")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values, comma-separated")
    parser.add_argument("--precisions", default="fp32,bf16", help="train.precision values, comma-separated")
    args = parser.parse_args()

    config = load_config(None, args.assignments, "demo")
    store = run_extract(config, show_progress=True).path
    seeds = [int(seed) for seed in args.seeds.split(",")]
    precisions = args.precisions.split(",")
    print(f"\ncache {store}\n{machine()}\n")
    print(f"{'precision':9} {'seed':>4} {'test AUC (best val)':>20} {'test AUC (final)':>17} {'epoch s (median)':>17} "
          f"{'epoch s (fastest)':>18} {'run s':>7}")
    runs: list[dict] = []
    for position, seed in enumerate(seeds):
        for precision in precisions if position % 2 == 0 else precisions[::-1]:
            train = config.train.model_copy(update={"seed": seed, "precision": precision})
            result = train_side(config.model_copy(update={"train": train}), store, show_progress=False)
            lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
            epochs = [json.loads(line)["seconds"] for line in lines]
            resolved = json.loads((result.run_dir / "run.json").read_text())["precision"]
            run = {"precision": resolved, "seed": seed, "test_auc_best": result.test_best.auc,
                   "test_auc_last": result.test_last.auc, "epoch_s_median": statistics.median(epochs),
                   "epoch_s_fastest": min(epochs), "epoch_s": epochs, "run_s": result.seconds,
                   "run_dir": str(result.run_dir)}
            runs.append(run)
            print(f"{resolved:9} {seed:4} {run['test_auc_best']:20.4f} {run['test_auc_last']:17.4f} "
                  f"{run['epoch_s_median']:17.3f} {run['epoch_s_fastest']:18.3f} {run['run_s']:7.1f}", flush=True)

    summary: dict[str, dict] = {}
    print(f"\n{'precision':9} {'mean AUC (best val)':>20} {'std over seeds':>15} {'mean AUC (final)':>17} "
          f"{'epoch s (mean of medians)':>26} {'(of fastest)':>13}  per seed (best val)")
    for precision in dict.fromkeys(r["precision"] for r in runs):
        mine = [r for r in runs if r["precision"] == precision]
        best = [r["test_auc_best"] for r in mine]
        summary[precision] = {
            "auc_best_mean": statistics.mean(best), "auc_best_std": statistics.stdev(best) if len(best) > 1 else None,
            "auc_last_mean": statistics.mean(r["test_auc_last"] for r in mine),
            "epoch_s": statistics.mean(r["epoch_s_median"] for r in mine),
            "epoch_s_fastest": statistics.mean(r["epoch_s_fastest"] for r in mine),
        }
        spread = summary[precision]["auc_best_std"]
        print(f"{precision:9} {summary[precision]['auc_best_mean']:20.4f} "
              f"{spread if spread is not None else float('nan'):15.4f} {summary[precision]['auc_last_mean']:17.4f} "
              f"{summary[precision]['epoch_s']:26.3f} {summary[precision]['epoch_s_fastest']:13.3f}  "
              + " ".join(f"{v:.4f}" for v in best))
    if "fp32" in summary and "bf16" in summary:
        print()
        for which in ("median", "fastest"):
            ratios = [b[f"epoch_s_{which}"] / f[f"epoch_s_{which}"] for f, b in _pairs(runs)]
            print(f"bf16 epoch time / fp32 ({which} epochs), per seed: " + " ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f})")
        fp32, bf16 = summary["fp32"], summary["bf16"]
        if fp32["auc_best_std"] is not None:
            gap = bf16["auc_best_mean"] - fp32["auc_best_mean"]
            within = abs(gap) <= fp32["auc_best_std"]
            print(f"bf16 - fp32 mean test AUC {gap:+.4f}; fp32's spread {fp32['auc_best_std']:.4f}: "
                  f"{'within' if within else 'outside'} it")
    write_results("train_precision", {"cache": str(store), "assignments": args.assignments, "runs": runs,
                                      "summary": summary})


def _pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(fp32 run, bf16 run) of each seed that has both."""
    by_seed: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], {})[run["precision"]] = run
    return [(both["fp32"], both["bf16"]) for both in by_seed.values() if "fp32" in both and "bf16" in both]


if __name__ == "__main__":
    main()

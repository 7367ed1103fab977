"""How much training a TPE search with pruning needs to match a grid, on the demo cache.

    python bench/search_efficiency.py [--epochs 20] [--pack-size 4] [--trials 16]

Both searches run over the same space (train.lr x train.weight_decay, 4 x 4 values; TPE draws the
same learning rates as a log range and the weight decays as a category) from the README's demo cache
(`fpt extract --dataset demo` first), with `fpt sweep` on this machine. Reported: the grid's best
validation AUC and its cost (trial-epochs, wall time); the trial-epochs TPE with a median pruner had
trained, in the order it asked for its trials, when a trial first reached the grid's best validation
AUC (or never), and its whole cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, console, print_table, write_results  # noqa: E402

LRS = [1e-4, 3e-4, 1e-3, 3e-3]
WEIGHT_DECAYS = [0.0, 0.05, 0.1, 0.3]


def epochs_per_trial(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0  # a failed trial trained none


def wall_seconds(trials: list[Path]) -> float:
    """From the first of these trial folders made to the last file written in them (so a re-run that skips
    every trial still gives the time the trials took)."""
    files = [f for trial in trials for f in trial.rglob("*") if f.is_file()]
    return max(f.stat().st_mtime for f in files) - min(t.stat().st_ctime for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pack-size", type=int, default=4)
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()

    from fpt.pipeline.config import load_config
    from fpt.pipeline.sweep import run_sweep
    from fpt.stages.core.settings import SweepConfig

    runs = ROOT / "bench" / "results" / "work" / "search_efficiency"
    config = load_config(ROOT / "pipeline.yaml", [f"train.epochs={args.epochs}", f"train.runs_root={runs}",
                                                  "train.loggers=[]", f"dataset.data_root={ROOT / 'data'}",
                                                  f"cache.root={ROOT / 'outputs' / 'cache'}"], dataset="demo")
    grid = SweepConfig(name=f"grid-{args.epochs}", method="grid", pack_size=args.pack_size,
                       parameters={"train.lr": LRS, "train.weight_decay": WEIGHT_DECAYS})
    tpe = SweepConfig(name=f"tpe-{args.epochs}-{args.trials}", method="tpe", num_trials=args.trials,
                      pack_size=args.pack_size, pruner="median", seed=0,
                      pruner_options={"n_startup_trials": args.pack_size, "n_warmup_steps": 3},
                      sampler_options={"n_startup_trials": args.pack_size},
                      parameters={"train.lr": {"low": LRS[0], "high": LRS[-1], "log": True},
                                  "train.weight_decay": WEIGHT_DECAYS})
    grid_result = run_sweep(config, grid, max_workers=1, show_progress=False)
    tpe_result = run_sweep(config, tpe, max_workers=1, show_progress=False)
    grid_seconds = wall_seconds([r.run_dir for r in grid_result.reports])
    tpe_seconds = wall_seconds([r.run_dir for r in tpe_result.reports])

    grid_best = max(r.val_auc for r in grid_result.reports if r.status in ("finished", "skipped"))
    grid_epochs = sum(epochs_per_trial(r.run_dir) for r in grid_result.reports)
    ordered = sorted(tpe_result.reports, key=lambda r: r.trial_id)  # trial-NNN: the order TPE asked for them
    spent, reached_at, reached_trial = 0, None, None
    for report in ordered:
        spent += epochs_per_trial(report.run_dir)
        metrics = report.run_dir / "metrics.jsonl"
        aucs = [json.loads(line)["val"]["auc"] for line in metrics.read_text().splitlines()] if metrics.is_file() else [0.0]
        if reached_at is None and max(aucs) >= grid_best:
            reached_at, reached_trial = spent, report.trial_id
    tpe_epochs = spent
    tpe_best = max(r.val_auc for r in tpe_result.reports if r.val_auc is not None)
    pruned = sum(r.status == "pruned" for r in tpe_result.reports)
    rows = [["grid 4 x 4", len(grid_result.reports), 0, grid_epochs, f"{grid_seconds:.0f}", f"{grid_best:.4f}", "-"],
            [f"tpe + median pruner, {args.trials} trials", len(ordered), pruned, tpe_epochs, f"{tpe_seconds:.0f}",
             f"{tpe_best:.4f}", "never" if reached_at is None else f"{reached_at} ({reached_trial})"]]
    print_table(f"Search cost on the demo cache ({args.epochs} epochs per trial, packs of {args.pack_size})",
                ["search", "trials", "pruned", "trial-epochs", "wall s", "best val AUC",
                 "trial-epochs to reach the grid's best"], rows)
    console.print(f"grid: {grid_result.sweep_dir}; tpe: {tpe_result.sweep_dir}")
    write_results("search_efficiency", {"epochs": args.epochs, "pack_size": args.pack_size, "grid_best": grid_best,
                                        "grid_trial_epochs": grid_epochs, "grid_seconds": grid_seconds,
                                        "tpe_trials": len(ordered), "tpe_pruned": pruned, "tpe_trial_epochs": tpe_epochs,
                                        "tpe_seconds": tpe_seconds, "tpe_best": tpe_best,
                                        "tpe_trial_epochs_to_grid_best": reached_at})


if __name__ == "__main__":
    main()

"""What train.precision bf16 costs or gains against fp32: test AUC per seed, and epoch time.

    python bench/train_precision.py                         # the default demo, seeds 0,1,2 (extracts it if needed)
    python bench/train_precision.py --seeds 0 --set train.epochs=5    # a shorter look
    python bench/train_precision.py --set train.device=cuda           # on a GPU
    python bench/train_precision.py --no-auc --step-rounds 10         # the step timing alone

Every seed trains `fpt train-side` on the default demo's cache (`fpt extract --dataset demo`: float16,
blosc-lz4) once in each precision (`train.seed`: the side network's initialisation, dropout,
augmentation and batch order), the precisions alternating in their order from one seed to the next
so that a drift of the machine touches both alike. For each run it prints the test AUC of the
best-validation and of the final model, and its epochs' training time (metrics.jsonl: an epoch's steps,
without its evaluation), the median and the fastest (the epoch least disturbed by other processes on a
shared machine); then each precision's mean and sample standard deviation over
the seeds, and bf16's epoch time against fp32's. bf16 costs no AUC where its mean is within fp32's
seed-to-seed spread.

Then one training step (a trial's stacked forward, backward and AdamW update, as train-side steps it)
at the demo's and at ViT-B/512's shapes, batch 16, random inputs, in one process: the precisions take
turns for --step-rounds rounds of --step-calls steps each, after a warm-up step; the fastest round and
the median round are reported, per step. On a shared machine this is the steadier time figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import machine, stage_two_shapes, write_results  # noqa: E402

from fpt.pipeline.config import load_config  # noqa: E402
from fpt.stages.core.settings import TrainConfig  # noqa: E402
from fpt.stages.extract.run import run_extract  # noqa: E402
from fpt.stages.model.flat_parameters import FlatParameters  # noqa: E402
from fpt.stages.model.fpt_model import FPTPlus  # noqa: E402
from fpt.stages.model.stacked_model import StackedModels  # noqa: E402
from fpt.stages.train.recipe import adamw, half_cycle_cosine  # noqa: E402
from fpt.stages.train.rng_stream import RngStream  # noqa: E402
from fpt.stages.train.stacked_step import StepMember, step_together  # noqa: E402
from fpt.stages.train.train_side import train_side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="pipeline.yaml override")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values, comma-separated")
    parser.add_argument("--precisions", default="fp32,bf16", help="train.precision values, comma-separated")
    parser.add_argument("--no-auc", action="store_true", help="only the step timing")
    parser.add_argument("--step-rounds", type=int, default=8, help="rounds of the step timing (0: none)")
    parser.add_argument("--step-calls", type=int, default=5, help="steps timed per precision and round")
    parser.add_argument("--step-device", default="cpu")
    parser.add_argument("--step-threads", type=int, default=None,
                        help="torch threads of the step timing (default: torch's own); 1 is steadier on a busy machine")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    steps = {scenario: step_times(scenario, precisions, args.step_rounds, args.step_calls,
                                  torch.device(args.step_device), args.step_threads)
             for scenario in ("demo", "vitb512") if args.step_rounds} if args.no_auc else {}
    if args.no_auc:
        write_results("train_precision_steps", {"steps_ms": steps})
        return

    config = load_config(None, args.assignments, "demo")
    store = run_extract(config, show_progress=True).path
    seeds = [int(seed) for seed in args.seeds.split(",")]
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
    steps = {scenario: step_times(scenario, precisions, args.step_rounds, args.step_calls,
                                  torch.device(args.step_device), args.step_threads)
             for scenario in ("demo", "vitb512") if args.step_rounds}
    write_results("train_precision", {"cache": str(store), "assignments": args.assignments, "runs": runs,
                                      "summary": summary, "steps_ms": steps})


def step_times(scenario: str, precisions: list[str], rounds: int, calls: int, device: torch.device,
               threads: int | None = None) -> dict:
    """Milliseconds per training step of one stacked model at the scenario's shapes, per precision and round."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _step_times(scenario, precisions, rounds, calls, device)
    finally:
        torch.set_num_threads(before)


def _step_times(scenario: str, precisions: list[str], rounds: int, calls: int, device: torch.device) -> dict:
    spec, kept = stage_two_shapes(scenario, num_classes=3)
    generator = torch.Generator().manual_seed(0)
    shape = (16, spec.num_layers, spec.num_heads, kept, spec.lpm_dim // spec.num_heads)
    images = torch.randn(16, 3, spec.side_input_size, spec.side_input_size, generator=generator).to(device)
    keys, values = (torch.randn(shape, generator=generator).to(device) for _ in range(2))
    labels = torch.randint(0, spec.num_classes, (16,), generator=generator).to(device)
    torch.manual_seed(0)
    model = FPTPlus(spec).to(device)
    flat = FlatParameters(model)
    optimizer = adamw([flat.buffer], TrainConfig(), 1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(10**6))
    stack = StackedModels([flat])
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for round_ in range(rounds + 1):  # the first round warms up, untimed
        for precision in precisions if round_ % 2 == 0 else precisions[::-1]:
            member = StepMember(model, optimizer, scheduler, RngStream(0, device), 1.0, precision=precision)
            step_together(stack, [member], images, keys, values, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            for _ in range(calls):
                step_together(stack, [member], images, keys, values, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:
                times[precision].append((time.perf_counter() - began) / calls * 1e3)
    print(f"\none training step, {scenario} shapes, batch 16, {device}, {torch.get_num_threads()} torch threads, "
          f"{rounds} alternating rounds of {calls} steps: ms per step")
    for precision, values_ in times.items():
        print(f"{precision:9} fastest round {min(values_):8.1f}  median round {statistics.median(values_):8.1f}")
    if "fp32" in times and "bf16" in times:
        ratios = [b / f for f, b in zip(times["fp32"], times["bf16"])]
        print(f"bf16 / fp32: fastest rounds {min(times['bf16']) / min(times['fp32']):.2f}, per round "
              + " ".join(f"{r:.2f}" for r in ratios))
    return times


def _pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(fp32 run, bf16 run) of each seed that has both."""
    by_seed: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], {})[run["precision"]] = run
    return [(both["fp32"], both["bf16"]) for both in by_seed.values() if "fp32" in both and "bf16" in both]


if __name__ == "__main__":
    main()

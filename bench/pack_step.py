"""Where a packed training step spends its time: the fusion and the side network, forward and
backward, for a stack of 1 model and of K, and how much stacking saves per model.

    python bench/pack_step.py [--models 16] [--scenario demo|vitb512] [--device cpu|cuda] [--quick]

Shapes are those of the cache a scenario extracts at its defaults (batch 16, 6 layers, 20 % of
the tokens kept, 16 prompts, 128 px side images); inputs are random, as only time is measured.
Each part is timed on the stacked model (`stages/model/stacked_model.py`), the code a pack and a lone
trial both run; the stacks of 1 and of K are timed alternately, `--rounds` times, and the median
of each is reported. "per model in the stack" is the K-stack's time over K; "stacking gain" is
K one-model steps over one K-stack step. Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import apply_threads, print_table, stage_two_shapes, sync, write_results  # noqa: E402


def _timed(action: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean milliseconds of `repeats` calls after one warm-up call."""
    action()
    sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        action()
    sync(device)
    return (time.perf_counter() - began) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=16, help="Models in the larger stack.")
    parser.add_argument("--scenario", choices=["demo", "vitb512"], default="demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of the two stacks.")
    parser.add_argument("--repeats", type=int, default=5, help="Calls timed per part and round.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="A stack of 2, one round of 1 call.")
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.quick:
        args.models, args.rounds, args.repeats = 2, 1, 1

    from fpt.stages.model.flat_parameters import FlatParameters
    from fpt.stages.model.fpt_model import FPTPlus
    from fpt.stages.model.stacked_model import StackedModels

    device = torch.device(args.device)
    spec, kept = stage_two_shapes(args.scenario, num_classes=3)
    heads, width = spec.num_heads, spec.lpm_dim
    batch = args.batch_size
    generator = torch.Generator().manual_seed(0)
    feature_shape = (batch, spec.num_layers, heads, kept, width // heads)
    images = torch.randn(batch, 3, 128, 128, generator=generator).to(device)
    keys = torch.randn(feature_shape, generator=generator).to(device)
    values = torch.randn(feature_shape, generator=generator).to(device)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=generator).to(device)

    def stack_of(count: int) -> StackedModels:
        models = []
        for seed in range(count):
            torch.manual_seed(seed)
            models.append(FPTPlus(spec).to(device))
        return StackedModels([FlatParameters(m) for m in models])

    def parts(stack: StackedModels) -> dict[str, Callable[[], object]]:
        count = len(stack)
        masks = torch.ones(count, *stack.dropout_mask_shape(batch), device=device)
        prompts = torch.randn(count, batch, spec.num_layers, spec.num_prompts, spec.side_width, device=device)

        def fusion_forward() -> object:
            with torch.no_grad():
                return stack._fusion(stack.parameters(), keys, values)

        def fusion_step() -> None:
            (stack._fusion(stack.leaves(), keys, values) * masks).sum().backward()

        def side_forward() -> object:
            with torch.no_grad():
                return stack._side(stack.parameters(), images, prompts)

        def side_step() -> None:
            logits = stack._side(stack.leaves(), images, prompts)
            F.cross_entropy(logits.flatten(0, 1), labels.repeat(count)).backward()

        def whole_step() -> None:
            logits = stack.forward(stack.leaves(), images, keys, values, masks)
            F.cross_entropy(logits.flatten(0, 1), labels.repeat(count)).backward()

        return {"fusion forward": fusion_forward, "fusion forward + backward": fusion_step,
                "side network forward": side_forward, "side network forward + backward": side_step,
                "whole step (forward + backward)": whole_step}

    stacks = {1: parts(stack_of(1)), args.models: parts(stack_of(args.models))}
    times: dict[int, dict[str, list[float]]] = {k: {name: [] for name in p} for k, p in stacks.items()}
    for _ in range(args.rounds):
        for count, actions in stacks.items():
            for name, action in actions.items():
                times[count][name].append(_timed(action, device, args.repeats))

    K = args.models
    rows, figures = [], {}
    for name in stacks[1]:
        one, many = statistics.median(times[1][name]), statistics.median(times[K][name])
        rows.append([name, one, many, many / K, K * one / many])
        figures[name] = {"one_model_ms": one, f"stack_of_{K}_ms": many, "rounds_one": times[1][name],
                         f"rounds_{K}": times[K][name]}
    print_table(f"One training step's parts, {args.scenario} shapes, batch {batch}, {device}, "
                f"{torch.get_num_threads()} threads (median of {args.rounds} rounds)",
                ["part", "1 model (ms)", f"{K} stacked (ms)", "per model in the stack (ms)", "stacking gain"], rows)
    write_results("pack_step" + ("_quick" if args.quick else ""),
                  {"scenario": args.scenario, "models": K, "batch_size": batch, "kept_tokens": kept, "parts": figures})


if __name__ == "__main__":
    main()

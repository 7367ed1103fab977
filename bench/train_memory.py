"""Memory of one stage-two training step at the ViT-B/512 defaults, batch 16 (paper: 736 MB for FPT+).

    python bench/train_memory.py [--quick] [--device cpu|cuda] [--batch-size 16]

On CUDA: torch.cuda.max_memory_allocated over a few training steps with inputs shaped as the
cache delivers them (float16 keys/values copied to the device, then cast to float32, as
stages/train/train_side.py does). Without a GPU it reports 'no GPU' for that figure and measures the
CPU-side equivalents: parameters + gradients + AdamW state, the tensors autograd saves for
backward (counted with saved_tensors_hooks), the batch, and this process's peak RSS growth.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import apply_threads, print_table, stage_two_shapes, write_results  # noqa: E402

PAPER_MB = 736


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    apply_threads(args.threads)

    from fpt.stages.model.fpt_model import FPTPlus

    rss_start = psutil.Process().memory_info().rss
    device = torch.device(args.device)
    steps = args.steps or (1 if args.quick else 3)
    spec, selected = stage_two_shapes("vitb512", 5)
    shape = (args.batch_size, spec.num_layers, spec.num_heads, selected, spec.lpm_dim // spec.num_heads)
    torch.manual_seed(0)
    model = FPTPlus(spec).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=0.1)
    params = sum(p.numel() for p in model.parameters())
    keys16 = torch.randn(shape).half()
    values16 = torch.randn(shape).half()
    images = torch.randn(args.batch_size, 3, spec.side_input_size, spec.side_input_size)
    labels = torch.randint(0, 5, (args.batch_size,))
    saved_bytes = 0

    seen: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        """Count each storage autograd keeps once, and not the batch's own tensors (counted apart)."""
        nonlocal saved_bytes
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved_bytes += storage.nbytes()
        return tensor

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_allocated = torch.cuda.memory_allocated(device)
    for step in range(steps):
        saved_bytes = 0
        keys, values = keys16.to(device).float(), values16.to(device).float()
        batch_images = images.to(device)
        seen = {t.untyped_storage().data_ptr() for t in (keys, values, batch_images)} | {
            p.untyped_storage().data_ptr() for p in model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(batch_images, keys, values)
            loss = F.cross_entropy(logits, labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    gpu_mb = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20
    mb = 2**20
    state_bytes = params * 4 * 4  # weights, gradients, AdamW exp_avg and exp_avg_sq, float32
    batch_bytes = keys.numel() * 4 * 2 + keys16.numel() * 2 * 2 + images.numel() * 4
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures = {
        "device": str(device), "batch_size": args.batch_size, "learnable_params": params,
        "cuda_max_memory_allocated_mb": gpu_mb, "cuda_start_allocated_mb": start_allocated / mb if gpu_mb is not None else None,
        "params_grads_adam_mb": state_bytes / mb, "saved_activations_mb": saved_bytes / mb, "batch_inputs_mb": batch_bytes / mb,
        "estimate_mb": (state_bytes + saved_bytes + batch_bytes) / mb,
        "peak_rss_growth_mb": (peak_rss - rss_start) / mb, "paper_mb": PAPER_MB,
    }
    rows = [
        ["torch.cuda.max_memory_allocated", gpu_mb if gpu_mb is not None else "no GPU", f"paper {PAPER_MB} MB, target below"],
        ["params + grads + AdamW state (f32)", figures["params_grads_adam_mb"], f"{params:,} learnable parameters"],
        ["activations saved for backward", figures["saved_activations_mb"], "saved_tensors_hooks, one step; batch and weights not counted again"],
        ["batch inputs (f16 from cache + f32 copies + images)", figures["batch_inputs_mb"], f"keys/values {tuple(shape)}"],
        ["sum: what the step must hold at once (estimate)", figures["estimate_mb"], "excludes allocator slack and temporaries"],
        ["peak RSS growth of this process", figures["peak_rss_growth_mb"], "CPU run: includes temporaries and allocator caching"],
    ]
    print_table(f"Stage-two training step memory, ViT-B/512 defaults, batch {args.batch_size}, {device}", ["figure", "MB", "note"], rows)
    write_results("train_memory" + ("_quick" if args.quick else ""), figures)


if __name__ == "__main__":
    main()

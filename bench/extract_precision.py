"""Stage one in 16 bits: how many selected tokens `extract.precision` changes, and how much faster it is.

    python bench/extract_precision.py [--quick] [--scenario demo|vitb512] [--device cpu|cuda]
                                      [--precisions fp32 bf16 fp16] [--rounds 3] [--num-images 8]

On a fixed image set (the demo's images, generated from their seed: num-images train + 4 val +
4 test, 512 px), each precision runs `TokenSelectingLPM` as `fpt extract` does, in a fresh process,
the precisions alternating round after round. Each process decodes the images, builds the LPM,
warms up on one batch, then times the selection over every image and saves the kept token indices.

Reported per precision: seconds over the image set (median of the rounds), images per second,
speed-up against fp32 (the median of each round's ratio), and the share of selected tokens that
differ from fp32's: for every image, chosen layer and head, the tokens of the fp32 set missing from
the 16-bit set, over all kept tokens (overall, and per layer). fp32 runs are checked to repeat bit
for bit, so the share is the precision's alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    apply_threads, bench_config, console, extraction_arguments, print_table, run_fresh, sync, write_results,
)


def child(args: argparse.Namespace) -> None:
    """One precision in this process: time the selection over the image set, save the kept indices."""
    import json

    from extraction import decoded_batches

    from fpt.stages.lpm.build import build_lpm
    from fpt.stages.lpm.token_selection import TokenSelectingLPM

    device = torch.device(args.device)
    config, _ = bench_config(args.scenario, args.num_images, [f"extract.device={args.device}"])
    extract = config.extract
    batches, _ = decoded_batches(config, args.batch_size)
    vit, _ = build_lpm(config.lpm, extract.input_size)
    selector = TokenSelectingLPM(vit.to(device), extract.resolved_layers(len(vit.blocks)), extract.token_ratio,
                                 extract.importance, extract.query_chunk, args.child)
    kept = []
    with torch.inference_mode():
        selector(batches[0].to(device))  # warm-up: kernels chosen, memory allocated
        sync(device)
        began = time.perf_counter()
        for batch in batches:
            kept.append(selector(batch.to(device))[2].cpu().numpy())
        sync(device)
        seconds = time.perf_counter() - began
    np.save(args.indices_out, np.concatenate(kept))
    Path(args.result_json).write_text(json.dumps({"seconds": seconds, "images": sum(len(b) for b in batches),
                                                  "layers": extract.resolved_layers(len(vit.blocks))}))


def changed_share(reference: np.ndarray, other: np.ndarray) -> tuple[float, list[float]]:
    """Share of reference's kept tokens missing from other's, overall and per layer; arrays (B, L, H, n)."""
    missing = np.zeros(reference.shape[1])
    for image in range(reference.shape[0]):
        for layer in range(reference.shape[1]):
            for head in range(reference.shape[2]):
                a, b = reference[image, layer, head], other[image, layer, head]
                missing[layer] += len(a) - len(np.intersect1d(a, b))
    per_layer = missing / (reference.shape[0] * reference.shape[2] * reference.shape[3])
    return float(per_layer.mean()), per_layer.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    extraction_arguments(parser)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--child", choices=["fp32", "bf16", "fp16"], help=argparse.SUPPRESS)
    parser.add_argument("--indices-out", help=argparse.SUPPRESS)
    parser.add_argument("--result-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.num_images = args.num_images or (4 if args.quick else 8)
    apply_threads(args.threads)
    if args.child:
        child(args)
        return
    rounds = args.rounds or (1 if args.quick else 3)
    precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]
    common = ["--scenario", args.scenario, "--num-images", str(args.num_images), "--batch-size", str(args.batch_size),
              "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    indices: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(rounds):
            for precision in precisions:
                out = Path(folder) / f"{precision}-{round_index}.npy"
                result = run_fresh(Path(__file__), [*common, "--child", precision, "--indices-out", str(out)])
                if "error" in result:
                    raise SystemExit(f"{precision}: {result['error']}\n{result.get('stderr_tail', '')}")
                seconds[precision].append(result["seconds"])
                indices[precision].append(np.load(out))
                console.print(f"round {round_index + 1}, {precision}: {result['seconds']:.2f} s")
    reference = indices["fp32"][0]
    repeatable = all(np.array_equal(reference, again) for again in indices["fp32"][1:])
    images = reference.shape[0]
    rows, figures = [], {}
    for precision in precisions:
        median = statistics.median(seconds[precision])
        speedup = statistics.median(f / s for f, s in zip(seconds["fp32"], seconds[precision]))
        share, per_layer = changed_share(reference, indices[precision][0])
        figures[precision] = {"seconds": seconds[precision], "median_s": median, "speedup_vs_fp32": speedup,
                              "changed_share": share, "changed_share_per_layer": per_layer}
        rows.append([precision, median, images / median, speedup, f"{100 * share:.2f} %",
                     ", ".join(f"{100 * s:.1f}" for s in per_layer)])
    config, _ = bench_config(args.scenario, args.num_images)
    title = (f"extract.precision, {images} images, {config.lpm.name} @ {config.extract.input_size}px, batch "
             f"{args.batch_size}, {args.device}, {rounds} round(s) alternating in fresh processes; fp32 repeats bit "
             f"for bit: {repeatable}")
    print_table(title, ["precision", "median s", "images/s", "speed-up vs fp32", "selected tokens changed vs fp32",
                        "per chosen layer, %"], rows)
    write_results(f"extract_precision_{args.scenario}_{torch.device(args.device).type}" + ("_quick" if args.quick else ""), {
        "images": images, "batch_size": args.batch_size, "device": args.device, "threads": args.threads,
        "rounds": rounds, "fp32_repeatable": repeatable, "figures": figures,
    })


if __name__ == "__main__":
    main()

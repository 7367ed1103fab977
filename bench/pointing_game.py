"""Does the heatmap point at the lesions? The pointing game on the demo's test images.

    python bench/pointing_game.py [--run RUN] [--checkpoint best|last] [--seeds 5]

Explains the test split of a trained demo run from its cache (`fpt explain --run RUN --split test`,
no LPM) and scores every map against the lesion positions the demo generator wrote
(data/demo/demo_lesions.json): the share of the map's mass on lesion patches over the share of the
fundus's patches that are lesion patches (stages/explain/pointing.py). 1 is no preference. The
control shuffles each map over the fundus's patches (mean over --seeds shuffles). The LPM's own
selection map (how often each patch was kept) is scored the same way. RUN defaults to the newest
demo run under outputs/runs (the README's main command makes one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, console, print_table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    from fpt.stages.explain.explain_run import explain_cached
    from fpt.stages.explain.pointing import demo_pointing_game
    from fpt.stages.runs.trained_run import read_run

    run_dir = args.run or max((ROOT / "outputs" / "runs").glob("demo-*"), key=lambda path: path.stat().st_mtime)
    folder, record = explain_cached(run_dir, "test", args.checkpoint, show_progress=False)
    demo_root = Path(read_run(run_dir).dataset_source)
    rows, results = [], {}
    for map_name in ("attention", "selection"):
        scores = [demo_pointing_game(folder, demo_root, seed, map_name) for seed in range(args.seeds)]
        first = scores[0]
        control = sum(score.shuffled_ratio for score in scores) / len(scores)
        results[map_name] = {"ratio": first.ratio, "shuffled_ratio": control, "by_class": first.ratio_by_class,
                             "images": first.images, "lesion_share": first.lesion_share}
        by_class = ", ".join(f"{name} {value:.2f}" for name, value in first.ratio_by_class.items())
        rows.append([map_name, first.images, f"{first.lesion_share:.1%}", first.ratio, control, by_class])
    console.print(f"run {run_dir} ({args.checkpoint} model); explained {len(record.images)} test images in "
                  f"{record.seconds_per_image:.3f} s each (maps and pictures, from the cache)")
    print_table("Pointing game on the demo test images (ratio 1 = no preference for lesion patches)",
                ["map", "images with lesions", "lesion patches / fundus", "ratio", "shuffled control", "ratio by class"],
                rows)
    write_results("pointing_game", {"run": str(run_dir), "checkpoint": args.checkpoint,
                                    "seconds_per_image": record.seconds_per_image, **results})


if __name__ == "__main__":
    main()

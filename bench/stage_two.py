"""Stage-two epoch time and peak memory: our zarr cache vs the authors' preload layout vs no cache.

    python bench/stage_two.py [--quick] [--scenarios demo vitb512]

The same side network (FPTPlus) is trained with the same optimizer step as `fpt train-side`
(AdamW, half-cycle cosine per step, gradient clipping, cross-entropy) in three ways:
  a  zarr cache: train-side's loop streaming (train.resident=off); SplitBatches streams chunks of
     stored keys/values and side images (read ahead in a background thread only on a GPU: train.prefetch
     auto). Streaming against the resident cache and the step alone: bench/resident.py
  b  the authors' preload layout: one float32 safetensors file per image with its keys/values,
     and the original full-resolution image decoded every step for the side input (a DataLoader
     with --workers processes, 1 by default: its decoding overlaps the step);
     with --original-size 2048 also on large JPEG originals, as real fundus photographs are
  c  no cache: the frozen LPM (TokenSelectingLPM) runs in every step on the decoded image
Each variant runs in its own fresh process, so its peak RSS is its own. Variant a is also run
on caches 4x and 16x larger (the extracted samples repeated) to show its memory stays flat.
Variant c is timed over a few steps and extrapolated to an epoch (it says so in the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    WORK, apply_threads, bare_torch_rss_mb, bench_config, console, peak_rss_mb, print_table, run_fresh, write_results,
)

SCRIPT = Path(__file__).resolve()


# ---------------------------------------------------------------- child side: one variant
class Trainer:
    """The optimisation step of `fpt train-side` (a stack of one, stages/train/stacked_step.py), on the
    model it would build."""

    def __init__(self, config, metadata, steps_per_epoch: int, epochs: int) -> None:
        from fpt.stages.model.flat_parameters import FlatParameters
        from fpt.stages.model.fpt_model import FPTPlus
        from fpt.stages.model.stacked_model import StackedModels
        from fpt.stages.train.recipe import adamw, half_cycle_cosine, model_spec
        from fpt.stages.train.rng_stream import RngStream
        from fpt.stages.train.stacked_step import StepMember

        self.config = config
        torch.manual_seed(config.train.seed)
        self.spec = model_spec(config, metadata)
        self.model = FPTPlus(self.spec)
        train = config.train
        flat = FlatParameters(self.model)
        optimizer = adamw([flat.buffer], train, train.lr or metadata.default_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(steps_per_epoch * epochs))
        self.stack = StackedModels([flat])
        stream = RngStream(train.seed, torch.device("cpu"))
        self.member = StepMember(self.model, optimizer, scheduler, stream, train.grad_clip)

    def step(self, images: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor) -> float:
        from fpt.stages.train.stacked_step import step_together

        return float(step_together(self.stack, [self.member], images, keys.float(), values.float(), labels)[0])


class OriginalImages(torch.utils.data.Dataset):
    """Train samples read the authors' way: per-image float32 safetensors + full-resolution decode."""

    def __init__(self, entries: list[dict], config, metadata, with_lpm_input: bool) -> None:
        self.entries = entries
        self.config = config
        self.norm = metadata.normalization
        self.with_lpm_input = with_lpm_input
        self.transform = self.side_transform()

    def __len__(self) -> int:
        return len(self.entries)

    def side_transform(self):
        """The same augmentation as train-side, done the usual torchvision way on the PIL image:
        cropping and resizing the full-resolution image in PIL is 2.4x faster than in tensors
        (63 vs 150 ms for a 2048 px JPEG), so the baseline gets its fast path."""
        from torchvision import transforms

        augment, size = self.config.train.augment, self.config.side.input_size
        return transforms.Compose([
            transforms.RandomResizedCrop(size, scale=tuple(augment.crop_scale), ratio=tuple(augment.crop_ratio)),
            transforms.RandomHorizontalFlip(augment.hflip),
            transforms.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
            transforms.ToTensor(),
            transforms.Normalize(self.norm.mean, self.norm.std),
        ])

    def __getitem__(self, position: int):
        from safetensors.torch import load_file

        from fpt.stages.datasets.images import normalized_tensor, open_rgb, resize_square

        entry = self.entries[position]
        image = open_rgb(Path(entry["image"]))
        side = self.transform(image)
        label = torch.tensor(entry["label"])
        if self.with_lpm_input:
            lpm_input = normalized_tensor(resize_square(image, self.config.extract.input_size, self.config.extract.resize),
                                          self.norm.mean, self.norm.std)
            return side, lpm_input, label
        tensors = load_file(entry["file"])
        return side, tensors["keys"], tensors["values"], label


def run_variant(args: argparse.Namespace) -> dict:
    from fpt.cache.reader import CacheReader

    config, _ = bench_config(args.scenario, args.num_train, [f"train.batch_size={args.batch_size}"])
    reader = CacheReader(Path(args.cache))
    metadata = reader.metadata
    batch_size = config.train.batch_size
    epoch_seconds: list[float] = []
    timed_steps, extrapolated = 0, False
    if args.variant == "a":
        from fpt.stages.train.augment import train_images
        from fpt.stages.train.cache_batches import SplitBatches
        from fpt.stages.train.recipe import ready_batches

        batches = SplitBatches(reader, "train", batch_size, shuffle=True, with_features=True, seed=config.train.seed,
                               buffer_shards=config.train.shuffle_buffer_shards, in_memory=config.train.in_memory)
        trainer = Trainer(config, metadata, len(batches), args.epochs)
        generator = torch.Generator().manual_seed(config.train.seed)
        crop_generator = torch.Generator().manual_seed(config.train.seed)
        norm = metadata.normalization
        samples = batches.num_samples
        for _ in range(args.epochs):
            began = time.perf_counter()
            # train-side's loop (train.prefetch auto: no reading thread on the CPU)
            for ready in ready_batches(batches, torch.device("cpu")):
                batch = ready.batch
                images = train_images(batch.side_images, trainer.spec.side_input_size, config.train.augment,
                                      norm.mean, norm.std, generator, crop_generator)
                trainer.step(images, ready.keys, ready.values, torch.from_numpy(batch.labels))
            epoch_seconds.append(time.perf_counter() - began)
    else:
        entries = json.loads((Path(args.preload) / "index.json").read_text())
        samples = len(entries)
        dataset = OriginalImages(entries, config, metadata, with_lpm_input=args.variant == "c")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=args.workers,
                                             generator=torch.Generator().manual_seed(config.train.seed))
        trainer = Trainer(config, metadata, len(loader), args.epochs)
        if args.variant == "b":
            for _ in range(args.epochs):
                began = time.perf_counter()
                for side, keys, values, labels in loader:
                    trainer.step(side, keys, values, labels)
                epoch_seconds.append(time.perf_counter() - began)
        else:
            from fpt.stages.lpm.build import build_lpm
            from fpt.stages.lpm.token_selection import TokenSelectingLPM

            vit, _ = build_lpm(config.lpm, config.extract.input_size)
            extract = config.extract
            selector = TokenSelectingLPM(vit, extract.resolved_layers(len(vit.blocks)), extract.token_ratio, extract.importance, extract.query_chunk)
            step_seconds: list[float] = []
            began = time.perf_counter()
            for side, lpm_input, labels in loader:
                with torch.no_grad():
                    keys, values, _ = selector(lpm_input)
                trainer.step(side, keys, values, labels)
                step_seconds.append(time.perf_counter() - began)
                began = time.perf_counter()
                if len(step_seconds) > args.max_steps:
                    break
            timed = step_seconds[1:] or step_seconds  # the first step includes warm-up
            timed_steps = len(timed)
            extrapolated = timed_steps < len(loader)
            epoch_seconds.append(float(np.mean(timed)) * len(loader) if extrapolated else sum(step_seconds))
    return {
        "variant": args.variant, "samples": samples, "epoch_seconds": epoch_seconds,
        # The fastest epoch after the first (which warms up): on a shared virtual machine the noise
        # only ever adds time, so the minimum is the steadiest estimate of what an epoch costs.
        "epoch_s": min(epoch_seconds[1:] or epoch_seconds), "extrapolated_from_steps": timed_steps if extrapolated else None,
        **peak_rss_mb(),
    }


# ---------------------------------------------------------------- parent side: data and comparisons
def write_preload_layout(cache: Path, config, folder: Path, original_size: int | None = None,
                         original_format: str = "jpg") -> Path:
    """One float32 safetensors file per train image, as the authors' code stores them, plus an index.

    With `original_size`, the "original" each step decodes is the demo image resampled to that
    size and saved as `original_format` (JPEG quality 95 by default): the size and format of real
    fundus photographs (the demo's own are 512 px PNGs). A smooth upsampled image decodes faster
    than a real photograph of that size, so this is a lower bound of that cost.
    """
    from PIL import Image
    from safetensors.numpy import save_file

    from fpt.cache.reader import CacheReader
    from fpt.stages.datasets.registry import resolve_dataset

    if (folder / "index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    reader = CacheReader(cache)
    samples = {s.sample_id: s for s in resolve_dataset(config, show_progress=False).samples}
    ids = reader.sample_ids()  # in storage order (the train split is stored shuffled)
    start, stop = reader.split_range("train")
    arrays = reader.read(start, stop)
    entries = []
    for row, index in enumerate(range(start, stop)):
        sample = samples[ids[index]]
        file = folder / f"{ids[index].replace('/', '_')}.safetensors"
        save_file({"keys": arrays["keys"][row].astype(np.float32), "values": arrays["values"][row].astype(np.float32)}, str(file))
        image = sample.path
        if original_size:
            image = folder / f"{ids[index].replace('/', '_')}.{original_format}"
            with Image.open(sample.path) as source:
                large = source.convert("RGB").resize((original_size, original_size), Image.LANCZOS)
            large.save(image, **({"quality": 95} if original_format == "jpg" else {}))
        entries.append({"file": str(file), "image": str(image), "label": int(arrays["labels"][row])})
    (folder / "index.json").write_text(json.dumps(entries))
    return folder


def grown_cache(cache: Path, factor: int, codec: str | None = None) -> Path:
    """A copy of the cache whose train split holds every train sample `factor` times (optionally another codec)."""
    from fpt.cache.layout import create_store, store_name
    from fpt.cache.reader import CacheReader
    from fpt.cache.writer import ShardWriter

    reader = CacheReader(cache)
    meta = reader.metadata
    start, stop = reader.split_range("train")
    count = (stop - start) * factor
    path = WORK / "grown" / f"x{factor}{'-' + codec if codec else ''}-{store_name(meta.dataset, meta.cache_key)}"
    if path.exists():
        try:
            if CacheReader(path).metadata.complete:
                return path
        except Exception:
            pass
    grown = meta.model_copy(update={  # a format-3 store: one row per sample, its labels inside
        "format_version": 3, "num_rows": count, "num_samples": count, "split_ranges": {"train": (0, count), "val": (count, count), "test": (count, count)},
        "complete": False, "storage": meta.storage.model_copy(update={"codec": codec or meta.storage.codec}),
    })
    source = reader.read(start, stop, with_token_indices=meta.has_token_indices)
    rows = np.arange(count) % (stop - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    create_store(path, grown, source["labels"][rows], np.zeros(count, np.uint8), [f"s{i}" for i in range(count)])
    writer = ShardWriter(path, grown)
    for shard in range(grown.num_shards):
        a, b = grown.shard_range(shard)
        indices = source["token_indices"][rows[a:b]] if meta.has_token_indices else None
        writer.write_shard(shard, source["keys"][rows[a:b]], source["values"][rows[a:b]], source["side_images"][rows[a:b]],
                           indices)
    writer.finish()
    return path


def run_scenario(scenario: str, num_train: int, quick: bool, args: argparse.Namespace, bare_mb: float) -> list[dict]:
    from fpt.stages.extract.run import run_extract

    config, _ = bench_config(scenario, num_train)
    console.print(f"[bold]{scenario}[/bold]: extracting {num_train} train images ({config.lpm.name} at {config.extract.input_size} px)")
    cache = run_extract(config).path
    preload = write_preload_layout(cache, config, WORK / "preload" / cache.name)
    large = args.original_size
    large_preload = (write_preload_layout(cache, config, WORK / "preload" / f"{cache.name}-{large}{args.original_format}",
                                          large, args.original_format) if large else None)
    common = ["--scenario", scenario, "--num-train", str(num_train), "--batch-size", str(args.batch_size),
              "--workers", str(args.workers), "--epochs", str(args.epochs)]
    runs = [("a", str(cache), num_train)]
    runs += [("a", str(grown_cache(cache, f)), num_train * f) for f in args.growth]
    runs += [("a-none", str(grown_cache(cache, 1, "none")), num_train)]
    runs += [("b", str(cache), num_train)]
    if large_preload:
        runs += [("b-large", str(cache), num_train)]
    runs += [("c", str(cache), num_train)]
    results = []
    for variant, path, samples in runs:
        console.print(f"  variant {variant} on {samples} train samples ...")
        extra = ["--max-steps", str(args.max_steps_c), "--epochs", "1"] if variant == "c" else []
        folder = large_preload if variant == "b-large" else preload
        threads = args.threads_b if variant.startswith("b") and args.threads_b else args.threads
        extra += ["--threads", str(threads)] if threads else []
        result = run_fresh(SCRIPT, [*common, "--variant", variant.split("-")[0], "--cache", path, "--preload", str(folder), *extra])
        result.update(scenario=scenario, variant=variant, samples=samples)
        if "self_mb" in result:
            result["above_bare_torch_mb"] = result["self_mb"] - bare_mb
        results.append(result)
    return results


LABELS = {"a": "a zarr cache", "a-none": "a zarr cache, codec none (copy of a's cache)",
          "b": "b per-image f32 safetensors + decode of the demo's 512 px PNG",
          "b-large": "b per-image f32 safetensors + decode of a large original", "c": "c no cache (LPM every step)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--scenarios", nargs="+", default=["demo", "vitb512"])
    parser.add_argument("--sizes", type=int, nargs=2, default=None, metavar=("DEMO", "VITB"), help="train images per scenario")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader workers of variants b and c (1: decoding overlaps the step, as a's read does)")
    parser.add_argument("--original-size", type=int, default=None,
                        help="also run b on originals of this size (the demo images resampled), e.g. 2048")
    parser.add_argument("--original-format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of a and b; the fastest after the first is reported")
    parser.add_argument("--max-steps-c", type=int, default=None, help="timed steps of variant c (after one warm-up)")
    parser.add_argument("--growth", type=int, nargs="*", default=None, help="dataset growth factors for variant a")
    # child mode
    parser.add_argument("--variant", choices=["a", "b", "c"])
    parser.add_argument("--scenario", default="demo")
    parser.add_argument("--cache")
    parser.add_argument("--preload")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--result-json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--threads-b", type=int, default=None,
                        help="torch threads of variant b alone (default: --threads), to time each variant at its "
                             "own best setting: b's decoding worker process needs a core of its own")
    args = parser.parse_args()
    apply_threads(args.threads)

    if args.variant:
        Path(args.result_json).write_text(json.dumps(run_variant(args)))
        return

    sizes = dict(zip(["demo", "vitb512"], args.sizes or ((16, 8) if args.quick else (128, 64))))
    args.growth = args.growth if args.growth is not None else ([4] if args.quick else [4, 16])
    args.max_steps_c = args.max_steps_c or (1 if args.quick else 3)
    bare_mb = bare_torch_rss_mb()
    results = []
    for scenario in args.scenarios:
        results += run_scenario(scenario, sizes[scenario], args.quick, args, bare_mb)

    rows = []
    for r in results:
        base = next((x for x in results if x["scenario"] == r["scenario"] and x["variant"] == "a"
                     and x["samples"] == r["samples"] and "epoch_s" in x), None)
        ratio = r["epoch_s"] / base["epoch_s"] if base and "epoch_s" in r else None
        note = f"extrapolated from {r['extrapolated_from_steps']} steps" if r.get("extrapolated_from_steps") else ""
        if "error" in r:
            note = r["error"]
        rows.append([r["scenario"], LABELS[r["variant"]], r["samples"], r.get("epoch_s"),
                     ratio if r["variant"] in ("b", "b-large", "c") else None, r.get("self_mb"), r.get("above_bare_torch_mb"), note])
    print_table(f"Stage-two epoch (batch {args.batch_size}); bare `import torch` peak RSS {bare_mb:.0f} MB",
                ["LPM", "variant", "train samples", "epoch s", "x slower than a", "peak RSS MB", "RSS above torch MB", "note"], rows)
    write_results("stage_two_quick" if args.quick else "stage_two",
                  {"bare_torch_rss_mb": bare_mb, "threads": args.threads, "threads_b": args.threads_b, "sizes": sizes, "growth": args.growth, "batch_size": args.batch_size, "workers": args.workers,
                   "original_size": args.original_size, "original_format": args.original_format, "results": results})


if __name__ == "__main__":
    main()

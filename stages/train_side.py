"""Stage two: train the fusion modules and side network from the cache alone.

Neither the LPM nor the original images are touched: keys/values and the stored side images
come from the zarr cache. AdamW, half-cycle cosine per step without warm-up, gradient-norm
clipping, cross-entropy; the best epoch is chosen by validation AUC and the test metrics of
the best and of the final model are reported.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cache.catalog import find_cache
from cache.metadata import CacheMetadata
from cache.reader import CacheReader
from pipeline.config import PipelineConfig
from stages.augment import eval_images, train_images
from stages.cache_batches import SplitBatches
from stages.extract import resolve_device
from stages.fpt_model import FPTPlus, ModelSpec
from stages.metrics import Metrics, classification_metrics
from stages.run_folder import (
    append_jsonl, load_checkpoint, new_run_dir, save_checkpoint, write_config, write_json, write_predictions,
)


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    val: Metrics


class TrainResult(BaseModel):
    run_dir: Path
    cache: Path
    best_epoch: int
    best_val: Metrics
    test_best: Metrics
    test_last: Metrics
    learnable_params: int
    seconds: float


def model_spec(config: PipelineConfig, metadata: CacheMetadata) -> ModelSpec:
    side = config.side
    return ModelSpec(
        num_classes=len(metadata.class_names),
        lpm_dim=metadata.lpm.embed_dim,
        num_heads=metadata.lpm.num_heads,
        patch_size=metadata.lpm.patch_size,
        num_layers=len(metadata.extraction.layers),
        side_input_size=side.input_size,
        side_reduction=side.reduction,
        num_prompts=side.num_prompts,
        prompt_reduction=side.prompt_reduction,
        prompt_norm=side.prompt_norm,
        prompt_projection=side.prompt_projection,
        use_prompts=side.use_prompts,
        fusion_dropout=side.fusion_dropout,
        mlp_ratio=side.mlp_ratio,
    )


def half_cycle_cosine(total_steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _features(batch_array: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    if batch_array is None:
        return None
    return torch.from_numpy(batch_array).to(device).float()


@torch.no_grad()
def predict_split(model: FPTPlus, batches: SplitBatches, metadata: CacheMetadata, side_size: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(sample indices, labels, probabilities, mean loss) of a split, in cache order."""
    model.eval()
    norm = metadata.normalization
    indices, labels, probabilities, losses = [], [], [], []
    for batch in batches:
        images = eval_images(batch.side_images, side_size, norm.mean, norm.std).to(device)
        logits = model(images, _features(batch.keys, device), _features(batch.values, device))
        target = torch.from_numpy(batch.labels).to(device)
        losses.append(F.cross_entropy(logits, target, reduction="sum").item())
        probabilities.append(logits.float().softmax(-1).cpu().numpy())
        labels.append(batch.labels)
        indices.append(batch.indices)
    count = sum(len(x) for x in labels)
    return np.concatenate(indices), np.concatenate(labels), np.concatenate(probabilities), sum(losses) / max(count, 1)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), disable=not show,
    )


def train_side(config: PipelineConfig, cache_path: Path | None = None, show_progress: bool = True) -> TrainResult:
    began = time.perf_counter()
    path = find_cache(config, cache_path)
    reader = CacheReader(path)
    metadata = reader.metadata
    train_cfg = config.train
    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    generator = torch.Generator().manual_seed(train_cfg.seed)

    spec = model_spec(config, metadata)
    model = FPTPlus(spec).to(device)
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = train_cfg.lr if train_cfg.lr is not None else metadata.default_lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay)

    with_features = spec.use_prompts
    common = dict(with_features=with_features, buffer_shards=train_cfg.shuffle_buffer_shards, in_memory=train_cfg.in_memory)
    train_batches = SplitBatches(reader, "train", train_cfg.batch_size, shuffle=True, seed=train_cfg.seed, **common)
    val_batches = SplitBatches(reader, "val", train_cfg.batch_size, shuffle=False, **common)
    total_steps = train_cfg.epochs * len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(total_steps))

    run_dir = new_run_dir(config, "fptplus" if spec.use_prompts else "side-only")
    write_config(run_dir, config)
    write_json(run_dir / "run.json", {
        "cache": str(path.resolve()), "cache_key": metadata.cache_key, "model_spec": spec.model_dump(),
        "class_names": metadata.class_names, "normalization": metadata.normalization.model_dump(),
        "learnable_params": learnable, "lr": lr,
    })
    norm = metadata.normalization
    best_auc, best_epoch, best_val = -math.inf, 0, None
    with _progress(show_progress) as progress:
        task = progress.add_task("Training", total=total_steps, status="")
        for epoch in range(1, train_cfg.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            loss_sum, seen = 0.0, 0
            for batch in train_batches:
                images = train_images(batch.side_images, spec.side_input_size, train_cfg.augment, norm.mean, norm.std, generator)
                logits = model(images.to(device), _features(batch.keys, device), _features(batch.values, device))
                loss = F.cross_entropy(logits, torch.from_numpy(batch.labels).to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(batch.labels)
                seen += len(batch.labels)
                progress.update(task, advance=1, status=f"epoch {epoch} loss {loss_sum / seen:.4f}")
            _, val_labels, val_probs, val_loss = predict_split(model, val_batches, metadata, spec.side_input_size, device)
            val = classification_metrics(val_labels, val_probs, val_loss)
            record = EpochRecord(epoch=epoch, train_loss=loss_sum / max(seen, 1), lr=scheduler.get_last_lr()[0],
                                 seconds=time.perf_counter() - epoch_start, val=val)
            append_jsonl(run_dir / "metrics.jsonl", record.model_dump())
            score = val.auc if not math.isnan(val.auc) else val.accuracy
            if score > best_auc:
                best_auc, best_epoch, best_val = score, epoch, val
                save_checkpoint(run_dir / "checkpoints" / "best.safetensors", model, {"epoch": str(epoch)})
            progress.update(task, status=f"epoch {epoch} loss {record.train_loss:.4f} val AUC {val.auc:.4f}")
    save_checkpoint(run_dir / "checkpoints" / "last.safetensors", model, {"epoch": str(train_cfg.epochs)})

    test_batches = SplitBatches(reader, "test", train_cfg.batch_size, shuffle=False, **common)
    sample_ids = reader.sample_ids()
    test_results = {}
    for which in ("last", "best"):
        if which == "best":
            load_checkpoint(run_dir / "checkpoints" / "best.safetensors", model)
        indices, labels, probs, loss = predict_split(model, test_batches, metadata, spec.side_input_size, device)
        test_results[which] = classification_metrics(labels, probs, loss)
        write_predictions(run_dir / f"predictions_test_{which}.csv", [sample_ids[i] for i in indices], labels, probs,
                          metadata.class_names)
    assert best_val is not None
    result = TrainResult(
        run_dir=run_dir, cache=path, best_epoch=best_epoch, best_val=best_val, test_best=test_results["best"],
        test_last=test_results["last"], learnable_params=learnable, seconds=time.perf_counter() - began,
    )
    write_json(run_dir / "final_metrics.json", result.model_dump(mode="json"))
    from stages.run_summary import summarize_run

    summarize_run(run_dir)
    return result

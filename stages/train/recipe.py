"""The pieces of a trial's training: its model spec, AdamW and the half-cycle cosine schedule,
one optimisation step (cross-entropy, optionally class-weighted, gradient-norm clipping, its forward
in train.precision's arithmetic), batches on the device, predictions. Validation and test losses stay
plain cross-entropy whatever the training loss's weights, and predictions are computed in fp32
whatever the training precision (`predict_many` says why).

The loop that uses them, for one trial or a pack of them, is stages/train/packed_training.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from fpt.cache.metadata import CacheMetadata
from fpt.stages.core.precision import TrainPrecision, arithmetic
from fpt.stages.core.settings import PipelineConfig, TrainConfig
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.model.side_input import eval_images
from fpt.stages.runs.bootstrap import BootstrapSettings, ClassRates, Interval
from fpt.stages.runs.metrics import Metrics
from fpt.stages.train.cache_batches import Batch, SplitBatches
from fpt.stages.train.prefetch import prefetched

Prepared = TypeVar("Prepared")


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    val: Metrics


class TrainResult(BaseModel):
    """final_metrics.json. The intervals and per-class rates (stages/runs/bootstrap.py) are None in the
    files of runs that finished before they were computed."""

    run_dir: Path
    cache: Path
    best_epoch: int
    best_val: Metrics
    test_best: Metrics
    test_last: Metrics
    learnable_params: int
    seconds: float
    test_best_ci: dict[str, Interval] | None = None  # score -> [low, high], 95 %
    test_last_ci: dict[str, Interval] | None = None
    test_best_per_class: list[ClassRates] | None = None  # each class's sensitivity and specificity
    test_last_per_class: list[ClassRates] | None = None
    bootstrap: BootstrapSettings | None = None  # resamples, seed, confidence and method of the intervals


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


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """Cross-entropy weights n_samples / (n_classes * count_c) of the training samples' class counts,
    sklearn's compute_class_weight('balanced') over the classes present; a class with no training
    sample is never a target and gets 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def class_weights(train: TrainConfig, counts: np.ndarray) -> np.ndarray | None:
    """The weights of the training loss that train.class_weights asks for (None: plain cross-entropy)."""
    return balanced_class_weights(counts) if train.class_weights == "balanced" else None


def training_losses(logits: torch.Tensor, labels: torch.Tensor, weights: list[torch.Tensor | None]) -> torch.Tensor:
    """(K,) training losses of K models' logits (K, B, C) on one batch: each model's cross-entropy,
    weighted by its class weights where it has them (the weighted mean sum w_y l / sum w_y, as
    `F.cross_entropy(weight=)` gives it). A model without weights in a pack with weighted ones gets
    weights of 1, its plain mean up to float rounding."""
    count, batch = logits.shape[:2]
    losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(count), reduction="none").view(count, batch)
    if all(w is None for w in weights):
        return losses.mean(dim=1)
    ones = torch.ones(logits.shape[-1], device=logits.device)
    per_sample = torch.stack([ones if w is None else w for w in weights])[:, labels]  # (K, B)
    return (losses * per_sample).sum(dim=1) / per_sample.sum(dim=1)


def optimization_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler, images: torch.Tensor,
                      keys: torch.Tensor | None, values: torch.Tensor | None, labels: torch.Tensor,
                      grad_clip: float, class_weights: torch.Tensor | None = None,
                      precision: TrainPrecision = "fp32") -> torch.Tensor:
    """One step of the recipe: cross-entropy (weighted by `class_weights` if given), gradient-norm
    clipping, AdamW, per-step schedule. The forward and the loss run in `precision`'s arithmetic
    (stages/core/precision.py); the backward pass and the update outside it, in the parameters' fp32."""
    with arithmetic(precision, images.device):
        loss = F.cross_entropy(model(images, keys, values), labels, weight=class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    recipe_update(optimizer, scheduler, grad_clip)
    return loss


def recipe_update(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                  grad_clip: float) -> None:
    """The recipe's update once the model's gradients are in: clipping, AdamW step, schedule step.

    The optimiser holds all of the model's parameters, and its lists are clipped: `model.parameters()`
    walks the module tree on every call, which costs a pack of 16 about 6 ms a step (bench/README.md).
    """
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    scheduler.step()


def adamw(parameters: Iterable[torch.Tensor], train: TrainConfig, lr: float) -> torch.optim.AdamW:
    """The recipe's AdamW; torch's fused kernel (CPU and CUDA) is 3.5x faster per step than foreach
    for the side network's ~100 small tensors (bench/README.md)."""
    return torch.optim.AdamW(parameters, lr=lr, betas=train.betas, weight_decay=train.weight_decay, fused=True)


def half_cycle_cosine(total_steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def feature_tensor(features: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Cached keys or values of a batch (float32) on the device (None for the side network alone)."""
    return None if features is None else features.to(device)


@dataclass
class ReadyBatch:
    """A batch from the cache with its keys/values already float32 tensors on the training device."""

    batch: Batch
    keys: torch.Tensor | None
    values: torch.Tensor | None


def use_prefetch(setting: bool | str, device: torch.device) -> bool:
    """train.prefetch resolved: auto reads ahead on a GPU only. On the CPU the reading thread and the
    step compete for the same cores: on 2 vCPUs it gained nothing and held 200-400 MB more."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def ready_batches(batches: SplitBatches, device: torch.device, prefetch: bool | None = None) -> Iterator[ReadyBatch]:
    """One epoch of the split with keys/values on the device, for a loop done with each batch before
    it asks for the next: the batches' float32 keys/values are decoded into reused buffers, one, or
    two with prefetch, where each batch is read in a background thread while the previous one
    trains. None: as `use_prefetch("auto", device)`."""
    return prepared_batches(batches, device, _as_ready, prefetch)


def prepared_batches(batches: SplitBatches, device: torch.device, then: Callable[[ReadyBatch], Prepared],
                     prefetch: bool | None = None) -> Iterator[Prepared]:
    """`ready_batches` with `then` applied to each ready batch where it is read: in the background
    thread with prefetch, so what `then` does (augmenting the side images) overlaps the step too."""
    def prepare(batch: Batch) -> Prepared:
        return then(ReadyBatch(batch, feature_tensor(batch.keys, device), feature_tensor(batch.values, device)))

    if use_prefetch("auto", device) if prefetch is None else prefetch:
        return prefetched(batches.batches(reuse=2), prepare)
    return (prepare(batch) for batch in batches.batches(reuse=1))


def _as_ready(ready: ReadyBatch) -> ReadyBatch:
    return ready


BatchLogits = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


@torch.no_grad()
def predict_many(logits_of: BatchLogits, count: int, batches: SplitBatches, metadata: CacheMetadata, side_size: int,
                 device: torch.device, prefetch: bool | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """(sample indices, labels, probabilities, mean loss) of a split for each of `count` models, in
    cache order, on one read of it; `logits_of(images, keys, values)` gives their logits (count, B, C).

    No autocast here, whatever train.precision: a model trained in bf16 keeps fp32 weights, and its
    validation scores, best-epoch choice and the predictions written are those of its fp32 forward,
    the same that `fpt evaluate` and `fpt predict` compute from its checkpoints later on any device.
    Evaluation is a forward pass without backward over the smaller splits, a small share of an epoch."""
    norm = metadata.normalization
    indices, labels = [], []
    probabilities: list[list[np.ndarray]] = [[] for _ in range(count)]
    losses = [0.0] * count
    for ready in ready_batches(batches, device, prefetch):
        batch = ready.batch
        images = eval_images(batch.side_images, side_size, norm.mean, norm.std).to(device)
        target = torch.from_numpy(batch.labels).to(device)
        logits = logits_of(images, ready.keys, ready.values).float()
        batch_losses = F.cross_entropy(logits.flatten(0, 1), target.repeat(count), reduction="none")
        for k, loss in enumerate(batch_losses.view(count, -1).sum(dim=1).tolist()):
            losses[k] += loss
        for k, batch_probabilities in enumerate(logits.softmax(-1).cpu().numpy()):
            probabilities[k].append(batch_probabilities)
        labels.append(batch.labels)
        indices.append(batch.indices)
    total = max(sum(len(x) for x in labels), 1)
    all_indices, all_labels = np.concatenate(indices), np.concatenate(labels)
    return [(all_indices, all_labels, np.concatenate(probabilities[k]), losses[k] / total) for k in range(count)]


def predict_models(models: list[torch.nn.Module], batches: SplitBatches, metadata: CacheMetadata, side_size: int,
                   device: torch.device, prefetch: bool | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """`predict_many` for modules, each run on its own."""
    for model in models:
        model.eval()
    return predict_many(lambda images, keys, values: torch.stack([m(images, keys, values) for m in models]),
                        len(models), batches, metadata, side_size, device, prefetch)


def predict_split(model: FPTPlus, batches: SplitBatches, metadata: CacheMetadata, side_size: int,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(sample indices, labels, probabilities, mean loss) of a split for one model, in cache order."""
    return predict_models([model], batches, metadata, side_size, device)[0]

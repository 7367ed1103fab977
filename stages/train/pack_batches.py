"""The one stream of batches a pack's trials share.

Trials packed together have one batch size, seed and data settings (`pack_key`), so the pack reads
each split of the cache once for all of them and augments each training batch once: the augmentation
draws from a random stream of its own, seeded by train.seed, whatever the models draw in between.

The training and validation samples are the cache's train and val splits, or, for a fold of a
cross-validation (train.fold), the fold's two parts of train + val (stages/datasets/folds.py). The
training samples are drawn as train.sampler says (stages/train/cache_batches.py).

Where train.resident puts them (stages/train/resident.py), the training and validation samples are
read once, into one copy in RAM or on the GPU that every epoch of every trial of the pack draws from,
in the order streaming would read them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.datasets.folds import fold_samples
from fpt.stages.train.augment import train_images
from fpt.stages.train.cache_batches import FeatureRings, SplitBatches
from fpt.stages.train.recipe import ReadyBatch, prepared_batches, use_prefetch
from fpt.stages.train.resident import CopySize, Residency, ResidentSamples, resolve_residency

# (side images, keys, values, labels) on the training device, the images augmented
TrainingBatch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]


class PackBatches:
    """The cache's three splits in the batches of `lead`, the pack's first trial, and its augmentation."""

    def __init__(self, reader: CacheReader, lead: PipelineConfig, device: torch.device) -> None:
        self.reader = reader
        self.metadata = reader.metadata
        self.device = device
        self.prefetch = use_prefetch(lead.train.prefetch, device)
        self.side_size = lead.side.input_size
        train = lead.train
        self.augment = train.augment
        # the splits are read one at a time: one set of float32 batch buffers serves them all
        common = dict(with_features=lead.side.use_prompts, buffer_shards=train.shuffle_buffer_shards,
                      in_memory=train.in_memory, rings=FeatureRings())
        if train.folds > 1 and train.fold is None:
            raise UserError(f"train.folds={train.folds} is a cross-validation, which trains one run per fold.",
                            "Run it with `fpt train-side` (or fpt.cross_validate), or set train.folds=1.")
        if train.fold is not None:
            training, validation = fold_samples(reader, train.folds, train.fold_seed, train.fold)
        else:
            training, validation = (np.arange(*reader.split_range(split), dtype=np.int64) for split in ("train", "val"))
        resident_samples = np.union1d(training, validation)
        self.residency: Residency = resolve_residency(
            train.resident, CopySize.of(reader, resident_samples, lead.side.use_prompts), device)
        resident = None if self.residency.where == "off" else ResidentSamples(
            reader, resident_samples, lead.side.use_prompts, device if self.residency.where == "device" else None)
        # a split by its name: SplitBatches reads a split stored shuffled by whole shards
        self.train = SplitBatches(reader, "train" if train.fold is None else training, train.batch_size, shuffle=True,
                                  seed=train.seed, balanced=train.sampler == "balanced", resident=resident, **common)
        self.val = SplitBatches(reader, "val" if train.fold is None else validation, train.batch_size, shuffle=False,
                                resident=resident, **common)
        self.test = SplitBatches(reader, "test", train.batch_size, shuffle=False, **common)
        # the augmentation's own streams: the crops', and the flips' and colour factors'; both seeded by
        # train.seed, and only ever drawn from by one thread at a time (the step's or the reading one's)
        self.crop_generator = torch.Generator().manual_seed(train.seed)
        self.generator = torch.Generator().manual_seed(train.seed)

    def training_epoch(self) -> Iterator[TrainingBatch]:
        """One epoch of the training split, augmented: with prefetch (on a GPU) in the reading thread,
        where the host would otherwise wait on the device's step, else in this one. The batches and their
        draws come in the same order either way, so they are the same bits."""
        return prepared_batches(self.train, self.device, self.augmented, self.prefetch)

    def augmented(self, ready: ReadyBatch) -> TrainingBatch:
        """(images, keys, values, labels) of a training batch as every model of the pack trains on it."""
        norm = self.metadata.normalization
        batch = ready.batch
        images = train_images(batch.side_images, self.side_size, self.augment, norm.mean, norm.std, self.generator,
                              self.crop_generator)
        return images.to(self.device), ready.keys, ready.values, torch.from_numpy(batch.labels).to(self.device)

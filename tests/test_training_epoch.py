"""A pack's augmented training epoch: the same bits whether the reading thread augments the batches
(train.prefetch, a GPU's default) or the step's thread does, whatever else draws from torch's global
random generator meanwhile, and equal to the augmentation applied by hand with generators seeded by
train.seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sweep_support import build_tiny_cache, tiny_config

from fpt.cache.reader import CacheReader
from fpt.stages.train.augment import train_images
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.pack_batches import PackBatches
from fpt.stages.train.pack_resume import PackResume

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training_epoch")
    return root, build_tiny_cache(root)


def _pack(store: tuple[Path, Path], prefetch: bool) -> PackBatches:
    root, cache = store
    config = tiny_config(root, [f"train.prefetch={str(prefetch).lower()}", "train.seed=4"])
    return PackBatches(CacheReader(cache), config, CPU)


def _epochs(batches: PackBatches, count: int = 2, draw_between: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """`count` epochs of training batches, copied as they come (keys and values sit in reused buffers);
    `draw_between`: draw from torch's global generator before each batch, as a model's dropout does."""
    got = []
    for _ in range(count):
        for images, keys, values, labels in batches.training_epoch():
            if draw_between:
                torch.rand(1000)
            got.append((images.clone(), keys.clone(), values.clone(), labels.clone()))
    return got


def test_the_reading_thread_augments_the_same_bits_as_the_steps_thread(store: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    here = _epochs(_pack(store, prefetch=False))
    torch.manual_seed(1)  # another global state, and draws from it while the reading thread augments
    ahead = _epochs(_pack(store, prefetch=True), draw_between=True)
    assert len(here) == len(ahead) > 2
    for mine, theirs in zip(here, ahead):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))


def test_the_epoch_is_the_augmentation_of_the_split_with_generators_seeded_by_train_seed(
        store: tuple[Path, Path]) -> None:
    batches = _pack(store, prefetch=True)
    got = _epochs(batches)
    root, cache = store
    config = tiny_config(root, ["train.seed=4"])
    reader = CacheReader(cache)
    split = SplitBatches(reader, "train", config.train.batch_size, shuffle=True, with_features=True, seed=4,
                         balanced=config.train.sampler == "balanced", buffer_shards=config.train.shuffle_buffer_shards)
    flips, crops = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    norm = reader.metadata.normalization
    expected = [(train_images(b.side_images, config.side.input_size, config.train.augment, norm.mean, norm.std, flips,
                              crops), b.keys.clone(), torch.from_numpy(b.labels.copy()))
                for _ in range(2) for b in split]
    assert len(got) == len(expected)
    for (images, keys, _, labels), (want_images, want_keys, want_labels) in zip(got, expected):
        assert torch.equal(images, want_images)
        assert torch.equal(keys, want_keys) and torch.equal(labels, want_labels)


def test_a_resume_state_keeping_the_crops_as_a_private_stream_restores_them(store: tuple[Path, Path]) -> None:
    """A state whose crops' stream is a (CPU, CUDA) pair of torch states, as an RngStream keeps it."""
    crops = torch.Generator().manual_seed(99)
    torch.rand(7, generator=crops)
    batches = _pack(store, prefetch=False)
    state = {"augment_stream": (crops.get_state(), None), "augment_generator": batches.generator.get_state(),
             "shuffle": batches.train.rng.bit_generator.state, "epoch": 3}
    resume = PackResume(batches)
    resume.restore_shared(state)
    assert torch.equal(batches.crop_generator.get_state(), crops.get_state()) and resume.epochs_done == 3

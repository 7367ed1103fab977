"""Class imbalance: balanced cross-entropy weights (sklearn's definition) and the class-balanced sampler,
on an imbalanced synthetic cache; both recorded in run.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_testing import class_count_store
from safetensors.torch import load_file
from sklearn.metrics import log_loss
from sklearn.utils.class_weight import compute_class_weight
from tiny import TRAINING, tiny_config

from fpt.cache.reader import CacheReader
from fpt.cache.synthetic import sample_labels
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.packed_training import pack_key, train_pack
from fpt.stages.train.recipe import balanced_class_weights, training_losses
from fpt.stages.train.train_side import train_side

# train: 60 / 15 / 5 of three classes (12:3:1); shards of 8 in chunks of 2
COUNTS = {"train": [60, 15, 5], "val": [12, 3, 3], "test": [4, 4, 4]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_count_store(tmp_path_factory.mktemp("cache"), COUNTS)


def test_the_synthetic_store_holds_the_class_counts_asked_for(store: Path) -> None:
    reader = CacheReader(store)
    start, stop = reader.split_range("train")
    labels = reader.labels()[start:stop]
    assert np.bincount(labels).tolist() == COUNTS["train"]
    assert (sample_labels(reader.metadata)[start:stop] == labels).all()


def test_balanced_weights_are_sklearns() -> None:
    labels = np.repeat([0, 1, 2, 3], [60, 15, 5, 1])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    assert np.allclose(balanced_class_weights(np.bincount(labels)), expected)
    # a class without training samples is never a target: weight 0, the others as sklearn gives them
    partial = balanced_class_weights(np.array([60, 0, 5]))
    assert partial[1] == 0
    assert np.allclose(partial[[0, 2]], compute_class_weight("balanced", classes=np.array([0, 2]),
                                                             y=np.repeat([0, 2], [60, 5])))


def test_the_weighted_training_loss_is_sklearns_weighted_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (16,), generator=generator)
    weights = torch.tensor(balanced_class_weights(np.array([60, 15, 5])))
    losses = training_losses(logits, labels, [weights, None])
    probabilities = logits.softmax(-1).numpy()
    y = labels.numpy()
    weighted = log_loss(y, probabilities[0], sample_weight=weights.numpy()[y], labels=[0, 1, 2])
    plain = log_loss(y, probabilities[1], labels=[0, 1, 2])
    assert losses.tolist() == pytest.approx([weighted, plain], rel=1e-10)
    # the unstacked step's loss, torch's own weighted cross-entropy, is the same number
    torch_loss = torch.nn.functional.cross_entropy(logits[0], labels, weight=weights)
    assert torch_loss.item() == pytest.approx(weighted, rel=1e-10)
    # without weights, the plain mean of each model
    assert torch.equal(training_losses(logits, labels, [None, None]),
                       torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.repeat(2),
                                                         reduction="none").view(2, 16).mean(dim=1))


def _epoch(batches: SplitBatches) -> tuple[np.ndarray, np.ndarray]:
    drawn = [(batch.indices, batch.labels) for batch in batches]
    return np.concatenate([i for i, _ in drawn]), np.concatenate([label for _, label in drawn])


@pytest.mark.parametrize("in_memory", [False, True])
def test_the_balanced_sampler_draws_every_class_about_equally_often(store: Path, in_memory: bool) -> None:
    reader = CacheReader(store)
    labels = reader.labels()
    batches = SplitBatches(reader, "train", batch_size=8, shuffle=True, with_features=True, seed=5, buffer_shards=2,
                           in_memory=in_memory, balanced=True)
    frequencies = np.zeros(3)
    for _ in range(20):
        indices, batch_labels = _epoch(batches)
        assert len(indices) == batches.num_samples == 80  # an epoch is as long as the split
        assert (labels[indices] == batch_labels).all()  # every batch carries the samples it names
        start, stop = reader.split_range("train")
        assert ((indices >= start) & (indices < stop)).all()
        frequencies += np.bincount(batch_labels, minlength=3)
    shares = frequencies / frequencies.sum()
    # 1,600 draws: each class's share within 0.05 of a third (about 4 standard deviations), against 0.75 / 0.19 / 0.06
    assert np.abs(shares - 1 / 3).max() < 0.05, shares


def test_the_balanced_sampler_repeats_for_a_seed_and_differs_for_another(store: Path) -> None:
    def two_epochs(seed: int) -> list[np.ndarray]:
        batches = SplitBatches(CacheReader(store), "train", batch_size=8, shuffle=True, with_features=False,
                               seed=seed, buffer_shards=2, balanced=True)
        return [_epoch(batches)[0] for _ in range(2)]

    first, again, other = two_epochs(3), two_epochs(3), two_epochs(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])  # a new draw every epoch
    assert not np.array_equal(first[0], other[0])


def test_the_sampler_is_part_of_the_pack_key_and_class_weights_are_not(tmp_path: Path) -> None:
    plain = tiny_config(tmp_path)
    assert pack_key(plain) == pack_key(tiny_config(tmp_path, "train.class_weights=balanced"))
    assert pack_key(plain) != pack_key(tiny_config(tmp_path, "train.sampler=balanced"))


def test_run_json_and_config_record_the_class_weights_and_the_sampler(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, *TRAINING, "train.epochs=1", "train.class_weights=balanced",
                         "train.sampler=balanced", "train.loggers=[]")
    store = run_extract(config, show_progress=False).path
    result = train_side(config, store, show_progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    counts = np.array(run["train_class_counts"])
    assert counts.sum() == 12
    assert run["class_weights"] == pytest.approx(balanced_class_weights(counts).tolist())
    assert run["sampler"] == "balanced"
    assert run["fold"] is None
    saved = (result.run_dir / "config.yaml").read_text()
    assert "class_weights: balanced" in saved and "sampler: balanced" in saved


def test_a_weighted_and_a_plain_trial_packed_together_train_as_each_alone(tmp_path: Path, torch_threads) -> None:
    torch_threads(1)
    # 13 training images: classes of 5, 4 and 4, so the balanced weights are not all 1
    settings = [*TRAINING, "demo.num_train=13", "train.epochs=1", "train.loggers=[]"]
    store = run_extract(tiny_config(tmp_path, *settings), show_progress=False).path
    trials = [["train.class_weights=balanced"], ["train.class_weights=none"]]
    alone = [train_side(tiny_config(tmp_path, *settings, *t, f"train.run_name=alone{i}"), store, show_progress=False)
             for i, t in enumerate(trials)]
    configs = [tiny_config(tmp_path, *settings, *t, f"train.run_name=packed{i}") for i, t in enumerate(trials)]
    outcomes = train_pack(configs, store, isolate_failures=False)
    weights = json.loads((outcomes[0].result.run_dir / "run.json").read_text())["class_weights"]
    assert weights == pytest.approx(balanced_class_weights(np.array([5, 4, 4])).tolist())
    # each model has its own loss in the shared step: the plain one's weights of 1 give its mean to float rounding
    for single, outcome in zip(alone, outcomes):
        a, b = (load_file(str(r / "checkpoints" / "last.safetensors")) for r in (single.run_dir, outcome.result.run_dir))
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    first, second = (load_file(str(r.run_dir / "checkpoints" / "last.safetensors")) for r in alone)
    assert not all(torch.equal(first[k], second[k]) for k in first)  # the weights changed the training

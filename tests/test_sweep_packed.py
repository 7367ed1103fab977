"""Packed trials: K models on one read of each batch give exactly what each gives alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sweep_support import build_tiny_cache, tiny_config

from fpt.stages.model.stacked_model import StackedModels
from fpt.stages.train.packed_training import pack_key, train_pack
from fpt.stages.train.train_side import train_side


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packed")
    build_tiny_cache(root)
    return root


def _checkpoint(run_dir: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"{which}.safetensors"))


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packed_trials_equal_the_same_trials_run_alone(tiny_root: Path, torch_threads,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    settings = [
        ["train.lr=0.002", "side.num_prompts=4"],  # an architecture of its own: stacked alone
        ["train.lr=0.0005", "train.weight_decay=0.01", "train.epochs=1"],  # stops an epoch earlier
        ["train.lr=0.001", "train.grad_clip=0.5"],  # stacked with the one above for its first epoch
    ]
    alone = [train_side(tiny_config(tiny_root, s + [f"train.run_name=alone{i}"]), show_progress=False)
             for i, s in enumerate(settings)]
    # the pack also reads ahead in a background thread (train.prefetch, off by default on the CPU), and
    # streams from the store where the trials alone served their samples from RAM (train.resident auto):
    # where the batches are read must not change a single weight
    configs = [tiny_config(tiny_root, s + [f"train.run_name=packed{i}", "train.prefetch=true", "train.resident=off"])
               for i, s in enumerate(settings)]
    assert pack_key(configs[0]) == pack_key(configs[1]) == pack_key(configs[2])

    reads = []
    import fpt.cache.reader

    original = fpt.cache.reader.CacheReader.read_stored_into
    monkeypatch.setattr(fpt.cache.reader.CacheReader, "read_stored_into",
                        lambda self, a, b, rows: reads.append((a, b)) or original(self, a, b, rows))
    import fpt.stages.train.pack_stacks

    stacked_sizes = []
    monkeypatch.setattr(fpt.stages.train.pack_stacks, "StackedModels",
                        lambda models: stacked_sizes.append(len(models)) or StackedModels(models))
    outcomes = train_pack(configs, isolate_failures=False)
    monkeypatch.undo()
    # training epoch 1: the trial of its own architecture, then the two that share one; epoch 2: the two
    # left, each alone; then the test split for all three last models (the best models' re-evaluation,
    # for trials whose best epoch was not their last, follows)
    assert stacked_sizes[:6] == [1, 2, 1, 1, 1, 2]

    for single, outcome in zip(alone, outcomes):
        packed = outcome.result
        assert outcome.error is None and packed is not None
        assert packed.run_dir != single.run_dir
        for which in ("best", "last"):
            assert _same_weights(_checkpoint(single.run_dir, which), _checkpoint(packed.run_dir, which))
        assert packed.best_epoch == single.best_epoch
        assert packed.best_val == single.best_val
        assert packed.test_best == single.test_best and packed.test_last == single.test_last
        epochs_alone = [json.loads(x) for x in (single.run_dir / "metrics.jsonl").read_text().splitlines()]
        epochs_packed = [json.loads(x) for x in (packed.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [(e["train_loss"], e["val"]) for e in epochs_alone] == [(e["train_loss"], e["val"]) for e in epochs_packed]
        for name in ("predictions_test_best.csv", "predictions_test_last.csv", "config.yaml", "final_metrics.json"):
            assert (packed.run_dir / name).is_file()
    # the models differ (different settings), so equality above is not trivial
    assert not _same_weights(_checkpoint(alone[1].run_dir, "last"), _checkpoint(alone[2].run_dir, "last"))

    # the train split (12 samples) is read once per epoch for the pack, not once per trial
    meta = fpt.cache.reader.read_metadata(alone[0].cache)
    train_start, train_stop = meta.split_ranges["train"]
    train_reads = [r for r in reads if train_start <= r[0] < train_stop]
    assert sum(b - a for a, b in train_reads) == 2 * (train_stop - train_start)  # 2 epochs


def test_a_failing_trial_does_not_stop_its_pack(tiny_root: Path) -> None:
    good = tiny_config(tiny_root, ["train.run_name=good", "train.epochs=1"])
    bad = tiny_config(tiny_root, ["train.run_name=bad", "train.epochs=1", "side.reduction=5"])  # 192 % 5 != 0
    outcomes = train_pack([bad, good])
    assert outcomes[0].result is None and "side.reduction 5" in outcomes[0].error
    assert outcomes[1].error is None and (outcomes[1].result.run_dir / "final_metrics.json").is_file()


def test_a_stack_that_fails_is_split_so_its_trials_go_on_alone(tiny_root: Path, torch_threads,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. out of memory for 16 stacked models: each trial then trains on its own stack of one."""
    import fpt.stages.train.pack_step

    torch_threads(1)  # the two trials in one stack (on more threads each has a stack thread of its own)

    original = fpt.stages.train.pack_step.stacked_losses

    def fails_when_stacked(stack, *args, **kwargs):
        if len(stack) > 1:
            raise RuntimeError("out of memory (simulated)")
        return original(stack, *args, **kwargs)

    monkeypatch.setattr(fpt.stages.train.pack_step, "stacked_losses", fails_when_stacked)
    configs = [tiny_config(tiny_root, [f"train.run_name=split{i}", "train.epochs=1", f"train.lr={lr}"])
               for i, lr in enumerate((0.001, 0.002))]
    outcomes = train_pack(configs)
    assert all(o.error is None and o.result is not None for o in outcomes)
    with pytest.raises(RuntimeError, match="simulated"):  # without isolation (train-side), the error stops it
        train_pack(configs, isolate_failures=False)


def test_a_model_the_stack_cannot_reproduce_trains_through_its_own_forward(
        tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fpt.stages.train.pack_stacks
    import fpt.stages.train.trial_setup

    monkeypatch.setattr(fpt.stages.train.trial_setup, "stackable", lambda model: False)
    monkeypatch.setattr(fpt.stages.train.pack_stacks, "StackedModels", None)  # must not be used
    settings = [["train.lr=0.002"], ["train.lr=0.0005"]]
    alone = [train_side(tiny_config(tiny_root, s + [f"train.run_name=unstacked-alone{i}", "train.epochs=1"]),
                        show_progress=False) for i, s in enumerate(settings)]
    outcomes = train_pack([tiny_config(tiny_root, s + [f"train.run_name=unstacked-packed{i}", "train.epochs=1"])
                           for i, s in enumerate(settings)], isolate_failures=False)
    for single, outcome in zip(alone, outcomes):
        assert _same_weights(_checkpoint(single.run_dir, "last"), _checkpoint(outcome.result.run_dir, "last"))
        assert outcome.result.test_last == single.test_last


def test_on_two_cpu_threads_the_pack_runs_its_stacks_in_stack_threads_and_equals_one_thread_alone(
        tiny_root: Path, torch_threads, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stacks of two, side by side in two threads of one torch thread each (stages/train/stack_threads.py):
    every trial ends bit for bit as it does alone on one torch thread (`OMP_NUM_THREADS=1 fpt train-side`)."""
    import threading

    import fpt.stages.train.pack_step

    settings = [["train.lr=0.002"], ["train.lr=0.0005", "train.weight_decay=0.01"], ["train.lr=0.001"],
                ["train.lr=0.003", "train.grad_clip=0.5"]]
    torch_threads(1)
    alone = [train_side(tiny_config(tiny_root, s + [f"train.run_name=one-thread{i}"]), show_progress=False)
             for i, s in enumerate(settings)]
    torch_threads(2)

    seen = []  # (thread name, its torch threads, stack size) of every stacked training step
    original = fpt.stages.train.pack_step.stacked_losses

    def recorded(stack, *args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads(), len(stack)))
        return original(stack, *args, **kwargs)

    monkeypatch.setattr(fpt.stages.train.pack_step, "stacked_losses", recorded)
    outcomes = train_pack([tiny_config(tiny_root, s + [f"train.run_name=stack-threads{i}"])
                           for i, s in enumerate(settings)], isolate_failures=False)
    monkeypatch.undo()
    assert seen and {(name.startswith("fpt-stack"), threads, size) for name, threads, size in seen} == {(True, 1, 2)}
    assert len({name for name, _, _ in seen}) == 2
    assert torch.get_num_threads() == 2  # the caller's own setting is left as it was

    for single, outcome in zip(alone, outcomes):
        packed = outcome.result
        assert outcome.error is None and packed is not None
        for which in ("best", "last"):
            assert _same_weights(_checkpoint(single.run_dir, which), _checkpoint(packed.run_dir, which))
        assert (packed.best_epoch, packed.best_val) == (single.best_epoch, single.best_val)
        assert packed.test_best == single.test_best and packed.test_last == single.test_last


def test_a_failing_stack_in_a_stack_thread_is_split_and_its_trials_go_on(
        tiny_root: Path, torch_threads, monkeypatch: pytest.MonkeyPatch) -> None:
    import fpt.stages.train.pack_step
    import fpt.stages.train.trial_setup

    torch_threads(2)
    original = fpt.stages.train.pack_step.stacked_losses
    failed = []

    def first_stack_fails(stack, *args, **kwargs):
        if len(stack) > 1 and stack.members[0].model is first_model[0]:
            failed.append(len(stack))
            raise RuntimeError("out of memory (simulated)")
        return original(stack, *args, **kwargs)

    first_model: list = []
    original_prepare = fpt.stages.train.trial_setup.TrialSetup.write_run_files

    def remember_first(self, trial):
        original_prepare(self, trial)
        if not first_model:
            first_model.append(trial.model)

    monkeypatch.setattr(fpt.stages.train.pack_step, "stacked_losses", first_stack_fails)
    monkeypatch.setattr(fpt.stages.train.trial_setup.TrialSetup, "write_run_files", remember_first)
    configs = [tiny_config(tiny_root, [f"train.run_name=thread-split{i}", "train.epochs=1", f"train.lr={lr}"])
               for i, lr in enumerate((0.001, 0.002, 0.003, 0.004))]
    outcomes = train_pack(configs)
    assert failed == [2]  # the first stack of two failed once, and its two trials went on alone
    assert all(o.error is None and (o.result.run_dir / "final_metrics.json").is_file() for o in outcomes)
    first_model.clear()
    with pytest.raises(RuntimeError, match="simulated"):  # without isolation, the worker's error stops the pack
        train_pack([c.model_copy(update={"train": c.train.model_copy(update={"run_name": c.train.run_name + "-b"})})
                    for c in configs], isolate_failures=False)
    assert torch.get_num_threads() == 2

"""train.precision: auto resolves per device; bf16 runs the step's products under autocast with fp32
weights, in the module's own forward and in the stacked one; a bf16 run trains and records it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_stacked_model import SPECS, batch, models_of, stacked
from tiny import REPO, TRAINING, tiny_config
from torch import nn

import fpt.stages.model.stacked_model
from fpt.cache.errors import UserError
from fpt.pipeline.config import load_config
from fpt.stages.core.precision import train_precision
from fpt.stages.core.settings import TrainConfig
from fpt.stages.extract.run import run_extract
from fpt.stages.train.recipe import adamw, half_cycle_cosine, optimization_step
from fpt.stages.train.rng_stream import RngStream
from fpt.stages.train.stacked_step import stacked_losses
from fpt.stages.train.train_side import train_side

CPU = torch.device("cpu")


def test_precision_resolves_as_documented() -> None:
    assert train_precision("auto", CPU) == "fp32"
    assert train_precision("auto", torch.device("cuda")) == "bf16"  # a device object needs no GPU
    assert train_precision("bf16", CPU) == "bf16"
    assert train_precision("fp32", torch.device("cuda")) == "fp32"
    assert load_config(REPO / "pipeline.yaml", dataset="demo").train.precision == "auto"


def test_a_bad_precision_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(UserError) as error:
        load_config(REPO / "pipeline.yaml", ["train.precision=fp16"], dataset="demo")
    message = error.value.paragraph()
    assert "train.precision" in message and "'bf16'" in message and "fp16" in message


def _products(model: nn.Module, seen: list[torch.dtype]) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks recording the output dtype of every linear layer and convolution of the model."""
    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen.append(output.dtype)
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_module_step_runs_its_products_in_the_precision_with_fp32_weights(precision: str) -> None:
    spec = SPECS["fpt+"]
    (model,) = models_of(spec, 1)
    images, keys, values, labels = batch(spec)
    optimizer = adamw(model.parameters(), TrainConfig(), 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(10))
    seen: list[torch.dtype] = []
    handles = _products(model, seen)
    loss = optimization_step(model, optimizer, scheduler, images, keys, values, labels, 1.0, precision=precision)
    for handle in handles:
        handle.remove()
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen and set(seen) == {expected}  # the side network's and the fusion's products
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer.state.values() for v in state.values()
               if v.is_floating_point())


def test_a_stacked_bf16_step_runs_its_products_in_bf16_with_fp32_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS["fpt+"]
    stack = stacked(models_of(spec, 2))
    images, keys, values, labels = batch(spec)
    seen: list[torch.dtype] = []
    original = fpt.stages.model.stacked_model._linear

    def recorded(*args: torch.Tensor) -> torch.Tensor:
        out = original(*args)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(fpt.stages.model.stacked_model, "_linear", recorded)
    streams = [RngStream(seed, CPU) for seed in range(2)]
    losses = stacked_losses(stack, streams, images, keys, values, labels, precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    for member in stack.members:
        assert member.buffer.dtype == torch.float32 and member.buffer.grad.dtype == torch.float32
        assert torch.isfinite(member.buffer.grad).all() and member.buffer.grad.abs().sum() > 0
    # the same models in fp32: the losses agree to bf16's rounding
    fp32 = stacked_losses(stack, [RngStream(seed, CPU) for seed in range(2)], images, keys, values, labels)
    assert torch.allclose(losses, fp32, rtol=0.02)


@pytest.mark.parametrize("name", SPECS)
def test_a_bf16_model_steps_in_a_stack_as_alone(name: str, torch_threads) -> None:
    """A packed bf16 trial gets the losses and gradients it gets alone, on one torch thread."""
    torch_threads(1)
    spec = SPECS[name]
    images, keys, values, labels = batch(spec)
    together = stacked(models_of(spec, 3))
    losses = stacked_losses(together, [RngStream(seed, CPU) for seed in range(3)], images, keys, values, labels,
                            precision="bf16")
    for k in range(3):
        alone = stacked([models_of(spec, 3)[k]])
        loss = stacked_losses(alone, [RngStream(k, CPU)], images, keys, values, labels, precision="bf16")
        assert torch.equal(loss[0], losses[k])
        assert torch.equal(alone.members[0].buffer.grad, together.members[k].buffer.grad)


def test_a_tiny_bf16_run_trains_in_bf16_and_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, *TRAINING, "train.precision=bf16")
    run_extract(config, show_progress=False)
    calls: list[tuple[bool, torch.dtype]] = []  # (gradients on: a training step, not an evaluation; dtype)
    original = fpt.stages.model.stacked_model._linear

    def recorded(*args: torch.Tensor) -> torch.Tensor:
        out = original(*args)
        calls.append((torch.is_grad_enabled(), out.dtype))
        return out

    monkeypatch.setattr(fpt.stages.model.stacked_model, "_linear", recorded)
    result = train_side(config, show_progress=False)
    assert {dtype for training, dtype in calls if training} == {torch.bfloat16}
    assert {dtype for training, dtype in calls if not training} == {torch.float32}  # evaluation is fp32
    for metrics in (result.best_val, result.test_best, result.test_last):
        assert all(math.isfinite(v) for v in metrics.model_dump().values() if isinstance(v, float))
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and all(math.isfinite(e["train_loss"]) for e in epochs)
    assert json.loads((result.run_dir / "run.json").read_text())["precision"] == "bf16"
    assert "on cpu in bf16" in (result.run_dir / "train.log").read_text()

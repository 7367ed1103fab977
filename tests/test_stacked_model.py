"""Stacked models compute what each FPTPlus module computes alone, and train each model on its own.

The reference is the plain module (timm's VisionTransformer with the fusion module), run one
model at a time; the stacked forward is a separate implementation of the same function.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from fpt.stages.core.settings import TrainConfig
from fpt.stages.model.flat_parameters import FlatParameters
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.model.stacked_model import StackedModels, stackable
from fpt.stages.train.recipe import adamw, half_cycle_cosine, optimization_step
from fpt.stages.train.rng_stream import RngStream
from fpt.stages.train.stacked_step import StepMember, dropout_masks, stacked_losses, step_together

FPT_PLUS = dict(num_classes=3, lpm_dim=48, num_heads=3, patch_size=8, num_layers=2, side_input_size=32)
SPECS = {
    "fpt+": ModelSpec(**FPT_PLUS),
    "fpt": ModelSpec(**FPT_PLUS, prompt_reduction=8, prompt_norm=False, prompt_projection=True),
    "side-only": ModelSpec(**FPT_PLUS, use_prompts=False),
}


def models_of(spec: ModelSpec, count: int) -> list[FPTPlus]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = FPTPlus(spec)
        with torch.no_grad():  # prompts start at 1e-6: make them matter
            for name, parameter in model.named_parameters():
                if "prompts" in name or "cls_token" in name:
                    parameter.normal_()
        models.append(model)
    return models


def stacked(models: list[FPTPlus]) -> StackedModels:
    return StackedModels([FlatParameters(m) for m in models])


def batch(spec: ModelSpec, size: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(7)
    head_dim = spec.lpm_dim // spec.num_heads
    images = torch.randn(size, 3, spec.side_input_size, spec.side_input_size, generator=generator)
    keys = torch.randn(size, spec.num_layers, spec.num_heads, 6, head_dim, generator=generator)
    values = torch.randn(size, spec.num_layers, spec.num_heads, 6, head_dim, generator=generator)
    labels = torch.randint(0, spec.num_classes, (size,), generator=generator)
    return images, keys, values, labels


class GivenMask(nn.Module):
    """Stands in for the fusion's dropout so the module applies the mask the stack was given."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


@pytest.mark.parametrize("name", SPECS)
def test_stacked_forward_and_gradients_equal_each_module(name: str) -> None:
    spec = SPECS[name]
    models = models_of(spec, 3)
    images, keys, values, labels = batch(spec)
    stack = stacked(models)
    streams = [RngStream(seed, torch.device("cpu")) for seed in range(3)]
    masks = dropout_masks(stack, streams, len(labels), torch.device("cpu"))
    assert (masks is None) == (name == "side-only")

    leaves = stack.leaves()
    logits = stack.forward(leaves, images, keys, values, masks)
    sum(nn.functional.cross_entropy(logits[k], labels) for k in range(3)).backward()
    stack.hand_back_gradients(leaves)
    stacked_grads = [{n: g.clone() for n, g in member.gradients().items()} for member in stack.members]
    assert all(stacked_grads[k].keys() == dict(m.named_parameters()).keys() for k, m in enumerate(models))

    for k, model in enumerate(models):
        model.zero_grad()
        if masks is not None:
            model.fusion.dropout = GivenMask(masks[k])
        reference = model(images, keys, values)
        nn.functional.cross_entropy(reference, labels).backward()
        torch.testing.assert_close(logits[k].detach(), reference.detach(), rtol=1e-5, atol=1e-5)
        for parameter_name, parameter in model.named_parameters():
            torch.testing.assert_close(stacked_grads[k][parameter_name], parameter.grad, rtol=1e-4, atol=1e-6,
                                       msg=f"gradient of {parameter_name}, model {k}")


def test_at_the_demos_sizes_a_stack_of_one_is_bit_for_bit_a_row_of_a_larger_stack() -> None:
    """What makes packed trials equal lone ones, checked at the sizes a real pack has (the tiny specs
    above stay under the sizes where torch's kernels change strategy): the default demo's model,
    205 cached tokens per head and layer, a batch of 16. On one torch thread the stack's every
    operation computes row k of a stack of 3 exactly as a stack of model k alone computes it. With
    more threads the matrix-product library may split a lone model's weight-gradient sums across
    them (it does on this project's 2-core machine), which is why the guarantee is stated for one
    thread (docs/sweeps.md, "Packed trials")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = ModelSpec(num_classes=5, lpm_dim=192, num_heads=3, patch_size=16, num_layers=6, side_input_size=128)
        models = models_of(spec, 3)
        generator = torch.Generator().manual_seed(11)
        images = torch.randn(16, 3, 128, 128, generator=generator)
        keys, values = torch.randn(2, 16, 6, 3, 205, 64, generator=generator)
        labels = torch.randint(0, 5, (16,), generator=generator)
        streams = lambda: [RngStream(seed, torch.device("cpu")) for seed in range(3)]  # noqa: E731

        together = stacked(models)
        together_losses = stacked_losses(together, streams(), images, keys, values, labels)
        together_grads = [member.buffer.grad.clone() for member in together.members]
        for k, model in enumerate(models):
            alone = stacked([model])
            loss = stacked_losses(alone, streams()[k:k + 1], images, keys, values, labels)
            assert torch.equal(loss[0], together_losses[k])
            assert torch.equal(alone.members[0].buffer.grad, together_grads[k]), f"model {k}"
        assert not torch.equal(together_grads[0], together_grads[1])
    finally:
        torch.set_num_threads(threads)


def test_dropout_masks_come_from_each_models_own_stream() -> None:
    spec = SPECS["fpt+"]
    stack = stacked(models_of(spec, 2))
    masks = dropout_masks(stack, [RngStream(5, torch.device("cpu")), RngStream(9, torch.device("cpu"))], 4,
                          torch.device("cpu"))
    alone = dropout_masks(stacked(models_of(spec, 1)), [RngStream(9, torch.device("cpu"))], 4,
                          torch.device("cpu"))
    assert torch.equal(masks[1], alone[0]) and not torch.equal(masks[0], masks[1])
    # inverted dropout: kept outputs are scaled by 1 / (1 - p), p = 0.5
    assert set(masks.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < (masks == 0).float().mean().item() < 0.6


def test_each_models_parameters_live_in_its_buffer_and_the_stack_gathers_them() -> None:
    models = models_of(SPECS["fpt+"], 3)
    before = [m.state_dict()["fusion.output.weight"].clone() for m in models]
    stack = stacked(models)
    assert all(member.buffer.numel() == sum(p.numel() for p in m.parameters()) for member, m in zip(stack.members, models))
    for k, model in enumerate(models):
        assert torch.equal(stack.parameters()["fusion.output.weight"][k], before[k])
    with torch.no_grad():
        stack.members[1].buffer.add_(1.0)  # what an optimiser step on the buffer does
    assert torch.equal(models[1].fusion.output.weight, before[1] + 1)
    assert torch.equal(stack.parameters()["fusion.output.weight"][1], before[1] + 1)
    assert torch.equal(stack.parameters()["fusion.output.weight"][0], before[0])
    models[2].load_state_dict(models[0].state_dict())  # what loading the best checkpoint does
    assert torch.equal(stack.parameters()["fusion.output.weight"][2], before[0])
    assert torch.equal(stack.members[2].buffer, stack.members[0].buffer)


def test_a_stacked_step_is_each_models_own_recipe_step() -> None:
    """Each model's lr, weight decay and clipping; against train-side's module-by-module step."""
    spec = SPECS["fpt+"]
    settings = [TrainConfig(lr=1e-2, grad_clip=0.1), TrainConfig(lr=3e-3, weight_decay=0.0, grad_clip=1.0)]
    stacked_models, reference_models = models_of(spec, 2), models_of(spec, 2)
    images, keys, values, labels = batch(spec)

    def pieces(parameters, train: TrainConfig):
        optimizer = adamw(parameters, train, train.lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, half_cycle_cosine(4))

    # the stacked models' optimisers step their buffers; the references' step each parameter tensor
    stack = stacked(stacked_models)
    members = [StepMember(m.model, *pieces([m.buffer], t), RngStream(k, torch.device("cpu")), t.grad_clip)
               for k, (m, t) in enumerate(zip(stack.members, settings))]
    references = [pieces(m.parameters(), t) for m, t in zip(reference_models, settings)]
    reference_streams = [RngStream(k, torch.device("cpu")) for k in range(2)]  # the same seeds as the members'
    for _ in range(3):
        losses = step_together(stack, members, images, keys, values, labels)
        for k, (model, (optimizer, scheduler)) in enumerate(zip(reference_models, references)):
            mask = dropout_masks(stack, [reference_streams[k]], len(labels), torch.device("cpu"))[0]
            model.fusion.dropout = GivenMask(mask)
            loss = optimization_step(model, optimizer, scheduler, images, keys, values, labels, settings[k].grad_clip)
            torch.testing.assert_close(losses[k], loss.detach(), rtol=1e-5, atol=1e-6)
    for trained, reference in zip(stacked_models, reference_models):
        for (name, a), b in zip(trained.named_parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(stacked_models[0].fusion.prompts, reference_models[1].fusion.prompts)


def test_a_model_with_pieces_the_stack_does_not_know_is_not_stackable() -> None:
    model = models_of(SPECS["fpt+"], 1)[0]
    assert stackable(model)
    model.side.vit.blocks[1].ls1 = LayerScale(model.spec.side_width, 0.1)
    assert not stackable(model)
    with pytest.raises(ValueError, match="plain ViT"):
        stacked([model])


def test_a_model_with_a_frozen_parameter_gets_no_shared_buffer() -> None:
    model = models_of(SPECS["fpt+"], 1)[0]
    model.side.vit.pos_embed.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        FlatParameters(model)

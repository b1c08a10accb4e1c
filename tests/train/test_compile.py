"""torch.compile of each model's training objective: one graph, the same loss and gradients.

`aot_eager` runs what every backend shares (Dynamo's capture with `fullgraph=True`, so a
graph break fails the test, and AOTAutograd's forward and backward graphs) for all five
families in seconds. Inductor, the backend `train.compile` uses, is checked on Glow: it
compiles C++ kernels on a CPU (about 10 s with a warm cache, 1.5-4 minutes cold on the 2-core
dev box), and on a GPU Triton kernels instead, which only `make gpu-check` exercises.
"""

from __future__ import annotations

import copy

import pytest
import torch
from train_helpers import TINY_MODELS

from flows import build_model, initialize_from_batch
from flows.config import ModelConfig

pytestmark = pytest.mark.slow

DIGITS = {"image_shape": (1, 8, 8), "n_bins": 17}


def _loss_and_grads(objective, model, x, noise):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # VAE / f-VAE draw their latents from the global generator
    loss = objective(x, noise=noise).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _compare(family: str, backend: str, **model_overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_MODELS[family], **DIGITS, **model_overrides))
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 17, (16, 1, 8, 8), dtype=torch.uint8, generator=gen)
    noise = torch.rand(x.shape, generator=gen)
    initialize_from_batch(model, x)
    twin = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(twin, backend=backend, fullgraph=True)

    eager_loss, eager_grads = _loss_and_grads(model, model, x, noise)
    for _ in range(2):  # the second call runs the cached graph
        loss, grads = _loss_and_grads(compiled, twin, x, noise)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name: f"{family} {n}: {m}")


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_compiled_objective_is_one_graph_with_the_eager_loss_and_gradients(family):
    _compare(family, "aot_eager")


def test_compiled_objective_with_bf16_nets_and_checkpointing_is_one_graph():
    _compare("glow", "aot_eager", net_dtype="bfloat16", checkpoint_nets=True)


def test_inductor_compiled_glow_matches_eager():
    _compare("glow", "inductor")

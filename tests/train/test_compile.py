"""torch.compile of each model's training step: one graph, the eager step's numbers (loss,
gradients, parameters, EMA), at two batch sizes in one process.

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
from train_helpers import TINY_MODELS, tiny_train

from flows import build_model, initialize_from_batch
from flows.config import ModelConfig
from train.config import TrainConfig
from train.ddp import WorkerInfo, wrap_for_training
from train.loop import train_step
from train.state import build_state

pytestmark = pytest.mark.slow

DIGITS = {"image_shape": (1, 8, 8), "n_bins": 17}


def levels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def tiny_state(family: str, **train):
    cfg = TrainConfig.model_validate(tiny_train(family, scaling={"num_workers": 1}, **train))
    return cfg, build_state(cfg, cfg.model.model_copy(update=DIGITS), WorkerInfo(), levels(16))


def _step(state, cfg, x: torch.Tensor):
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)  # VAE / f-VAE draw their latents from the global generator
    bpd, _ = train_step(state, x, cfg, noise=noise)
    return bpd


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
def test_compiled_step_equals_the_eager_step_at_two_batch_sizes(family):
    train = {"optim": {"name": "adamax", "ema_decay": 0.9, "warmup_steps": 2}}
    cfg, eager = tiny_state(family, **train)
    _, compiled = tiny_state(family, **train)
    torch._dynamo.reset()
    compiled.objective = wrap_for_training(compiled.model, WorkerInfo(), True, "aot_eager")

    for batch in (16, 8):  # a second batch size recompiles (dynamic shapes), not fails
        x = levels(batch, seed=batch)
        loss = _step(compiled, cfg, x)
        torch.testing.assert_close(loss, _step(eager, cfg, x), rtol=1e-5, atol=1e-6)
        named = dict(compiled.model.named_parameters())
        for name, p in eager.model.named_parameters():
            torch.testing.assert_close(named[name].grad, p.grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name: f"{family} grad {n}: {m}")
            torch.testing.assert_close(named[name], p, rtol=1e-5, atol=1e-6)
        ema = compiled.ema.state_dict()
        for key, value in eager.ema.state_dict().items():
            torch.testing.assert_close(ema[key], value, rtol=1e-5, atol=1e-6)


def test_compiled_objective_with_bf16_nets_and_checkpointing_is_one_graph():
    _compare("glow", "aot_eager", net_dtype="bfloat16", checkpoint_nets=True)


def test_inductor_compiled_glow_matches_eager():
    _compare("glow", "inductor")

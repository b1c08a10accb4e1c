"""The optimiser step on the device: Adamax's math and its skip, the EMA, and a training step
that never reads a tensor on the host (no `_local_scalar_dense`), for Adam and Adamax."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import TINY_MODELS, tiny_train

from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.hooks import FaultInjection
from train.loop import train_step
from train.optim import Adamax, Ema
from train.state import build_state

DIGITS = {"image_shape": (1, 8, 8), "n_bins": 17}


def levels(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def tiny_state(family: str, **train):
    cfg = TrainConfig.model_validate(tiny_train(family, scaling={"num_workers": 1}, **train))
    torch.manual_seed(0)
    return cfg, build_state(cfg, cfg.model.model_copy(update=DIGITS), WorkerInfo(), levels(16))


def _two_groups(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g))
            for shape in [(4, 3), (5,), (2, 3, 3, 3), (3,)]]


def test_adamax_equals_torch_adamax_with_weight_decay_and_two_groups():
    ours, theirs = _two_groups(), _two_groups()
    make = [lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0}]]
    mine = Adamax(make[0](ours), lr=torch.tensor(0.05), betas=(0.8, 0.99), weight_decay=0.1)
    ref = torch.optim.Adamax(make[0](theirs), lr=0.05, betas=(0.8, 0.99), weight_decay=0.1,
                             foreach=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        mine.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
        for key in ("exp_avg", "exp_inf", "step"):
            torch.testing.assert_close(mine.state[a][key], ref.state[b][key].float(),
                                       rtol=2e-6, atol=1e-7)
    # torch's checkpoints load into it (their steps on the CPU, ours on the params' device)
    again = Adamax(make[0](_two_groups()), lr=torch.tensor(0.05))
    again.load_state_dict(ref.state_dict())
    assert len(again.state_dict()["state"]) == 4


@pytest.mark.parametrize("first", [True, False])
def test_adamax_skip_leaves_parameters_moments_and_steps_untouched(first):
    params = _two_groups()
    opt = Adamax([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, weight_decay=0.1)
    if not first:
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
              for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, (value, state) in zip(params, before, strict=True):
        assert torch.equal(p.detach(), value)
        assert opt.state[p].keys() == {"step", "exp_avg", "exp_inf"}
        if state:
            for key, saved in state.items():
                assert torch.equal(opt.state[p][key], saved), key
        else:  # a skipped first step: zero moments, step 0
            assert not opt.state[p]["exp_avg"].any() and not opt.state[p]["exp_inf"].any()
            assert opt.state[p]["step"].item() == 0


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_a_nan_gradient_step_leaves_weights_adamax_state_and_ema_untouched(family):
    cfg, state = tiny_state(family, optim={"name": "adamax", "ema_decay": 0.9})
    train_step(state, levels(seed=1), cfg)
    model = {k: v.clone() for k, v in state.model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()}
               for p, s in state.optimizer.state.items()}
    ema = {k: v.clone() for k, v in state.ema.state_dict().items()}

    train_step(state, levels(seed=2), cfg, FaultInjection(nan_at_steps=(2,)))
    state.check_finite()

    assert state.skipped == 1
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, model[key]), key
    for p, saved in state.optimizer.state.items():
        for key, value in saved.items():
            assert torch.equal(value, moments[id(p)][key]), key
    for key, value in state.ema.state_dict().items():
        assert torch.equal(value, ema[key]), key
    train_step(state, levels(seed=3), cfg)  # and the next step moves everything again
    assert not torch.equal(next(iter(state.ema.state_dict().values())),
                           next(iter(ema.values())))


def test_ema_debias_counts_the_updates_it_folded_in_on_the_device():
    model = torch.nn.Linear(2, 2)
    ema = Ema(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # t = 1: weight 1 (debiased)
    torch.testing.assert_close(ema.module.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, skipped=torch.tensor(True))  # skipped: nothing, t stays 1
    torch.testing.assert_close(ema.module.weight, torch.ones(2, 2))
    assert ema.updates.item() == 1
    ema.update(model, skipped=torch.tensor(False))  # t = 2: weight 0.5 / 0.75 = 2/3
    torch.testing.assert_close(ema.module.weight, torch.full((2, 2), 1 + 2 * 2 / 3))
    twin = Ema(model, 0.5)
    twin.load_state_dict(ema.state_dict())
    assert twin.updates.item() == 2
    twin.load_state_dict(ema.module.state_dict(), updates=7)  # a checkpoint without t
    assert twin.updates.item() == 7


class NoHostReads(TorchDispatchMode):
    """Fails on every read of a tensor's value by the host (`.item()`, `bool()`, `float()`
    reach `_local_scalar_dense`; tests/train/test_gpu_paths.py also watches `.tolist()`),
    except the objective's check of a CPU batch's levels (`flows.bpd.check_levels`; the
    loop checks a device batch on the host before the copy)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.item.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            frames = {frame.name for frame in traceback.extract_stack()}
            if "check_levels" not in frames:
                raise AssertionError(f"host sync in the training step: {func}\n"
                                     + "".join(traceback.format_stack(limit=12)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
def test_train_step_reads_no_tensor_on_the_host(optimizer):
    cfg, state = tiny_state("glow", optim={"name": optimizer, "ema_decay": 0.9,
                                           "warmup_steps": 5})
    train_step(state, levels(seed=1), cfg)
    with NoHostReads():
        for step in range(2, 4):
            bpd, _ = train_step(state, levels(seed=step), cfg, FaultInjection(nan_at_steps=(3,)))
    state.check_finite()
    assert state.step == 3 and state.skipped == 1
    assert state.lr == pytest.approx(cfg.optim.lr * 4 / 5, rel=1e-6)  # the next step's lr
    with pytest.raises(AssertionError, match="host sync"), NoHostReads():
        float(bpd)  # the mode does see a read


def test_a_checkpoint_of_float_lrs_and_an_ema_without_its_count_resumes_on_the_device():
    import copy

    from train.optim import UPDATES_KEY

    cfg, state = tiny_state("glow", optim={"name": "adamax", "ema_decay": 0.9})
    for step in range(1, 4):
        train_step(state, levels(seed=step), cfg)
    old = copy.deepcopy(state.snapshot())  # as written before lrs were tensors ...
    for group in old["optimizer"]["param_groups"]:
        group["lr"] = float(group["lr"])
    del old["ema"][UPDATES_KEY]  # ... and before the EMA saved its update count
    _, resumed = tiny_state("glow", optim={"name": "adamax", "ema_decay": 0.9})
    resumed.restore(old)

    assert all(isinstance(g["lr"], torch.Tensor) for g in resumed.optimizer.param_groups)
    assert resumed.ema.updates.item() == 3  # the attempted steps, as the EMA counted them
    x = levels(seed=9)
    for run in (state, resumed):
        train_step(run, x, cfg, noise=torch.full(x.shape, 0.5))
    for a, b in zip(resumed.model.parameters(), state.model.parameters(), strict=True):
        assert torch.equal(a, b)

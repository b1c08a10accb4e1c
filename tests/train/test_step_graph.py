"""`train.cuda_graphs`: the errors at run start, and the warm-up / capture / replay logic of
`train.step_graph.GraphedStep`, run on CPU with a stand-in for CUDA's graph (`FakeGraphs`)
that, like a capture, records the step without changing anything, and replays it into the
same output tensors. The capture itself needs a GPU: the last test runs only where one is."""

from __future__ import annotations

import contextlib

import pytest
import torch
from train_helpers import TINY_MODELS

from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.hooks import NO_HOOKS, FaultInjection
from train.loop import TrainJob, train, train_step
from train.state import build_state
from train.step_graph import WARMUP_STEPS, GraphedStep, make_step

SHAPE = (2, 3)


class FakeGraphs:
    """A CPU stand-in for `CudaGraphs`: the capture runs the step once to learn its outputs,
    then puts the tensors it changed back (a real capture records kernels without running
    them); a replay runs the step again and writes its outputs into the captured ones."""

    def __init__(self, state: list[torch.Tensor]):
        self.state, self.captures, self.replays, self.warmups = state, 0, 0, 0

    @contextlib.contextmanager
    def warmup_stream(self):
        self.warmups += 1
        yield

    def capture(self, run):
        self.captures += 1
        saved = [t.clone() for t in self.state]
        outputs = run()
        for t, s in zip(self.state, saved, strict=True):
            t.copy_(s)

        def replay():
            self.replays += 1
            for out, new in zip(outputs, run(), strict=True):
                out.copy_(new)

        return replay, outputs


def accumulate(w: torch.Tensor):
    """A step that keeps its state in `w` (in place) and draws noise when given none."""

    def step(x, noise):
        if noise is None:
            noise = torch.rand(x.shape)
        w.add_(x.sum() + noise.sum())
        return (w * 1.0,)

    return step


def test_every_batch_is_one_step_warm_up_then_capture_then_replays_with_fresh_noise():
    batches = [torch.full(SHAPE, float(i)) for i in range(7)] + [torch.ones(1, 3)]
    torch.manual_seed(0)
    w_ref, expected = torch.zeros(()), []
    for x in batches:  # the eager reference: noise drawn by the step, in batch order
        expected.append(accumulate(w_ref)(x, None)[0].clone())

    torch.manual_seed(0)
    w = torch.zeros(())
    fake, replays_counted = FakeGraphs([w]), []
    graphed = GraphedStep(accumulate(w), fake, torch.float32,
                          on_replay=lambda: replays_counted.append(1))
    outputs = [graphed(x)[0].clone() for x in batches]

    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)
    assert (fake.warmups, fake.captures, fake.replays) == (WARMUP_STEPS, 1, 7 - WARMUP_STEPS)
    assert len(replays_counted) == 7 - WARMUP_STEPS - 1  # the capture step counted itself
    torch.testing.assert_close(graphed.static_x, batches[6])  # the last same-shaped batch


def test_a_step_that_rebinds_a_held_tensor_is_refused_at_capture():
    holder = {"count": torch.zeros(())}

    def step(x, noise):
        holder["count"] = holder["count"] + 1  # rebinds: a replay would read the old tensor
        return (holder["count"],)

    graphed = GraphedStep(step, FakeGraphs([]), torch.float32, held=lambda: dict(holder),
                          warmup=0)
    with pytest.raises(RuntimeError, match="replaced count with new tensors"):
        graphed(torch.zeros(SHAPE))


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": TINY_MODELS["glow"], "batch_size": 8, "cuda_graphs": True,
        "optim": {"name": "adam", "warmup_steps": 2}, "scaling": {"num_workers": 1},
        **overrides})


def _state(cfg: TrainConfig, device: str = "cpu"):
    model_cfg = cfg.model.model_copy(update={"image_shape": (1, 8, 8), "n_bins": 17})
    x = torch.randint(0, 17, (8, 1, 8, 8), device=device)
    return build_state(cfg, model_cfg, WorkerInfo(device=device), init_x=x), x


def test_cuda_graphs_on_a_cpu_worker_fails_at_run_start(digits_manifest):
    with pytest.raises(ValueError, match="needs a CUDA device, but this worker trains on cpu"):
        train(_cfg(), TrainJob(str(digits_manifest), verbose=False), WorkerInfo(threads=1),
              lambda metrics, ckpt: None)


def test_ddp_loss_hooks_a_host_ema_weight_and_a_float_learning_rate_are_refused():
    fake = FakeGraphs([])
    cfg = _cfg(optim={"name": "adam", "ema_decay": 0.9})
    state, _ = _state(cfg)
    state.ema.weight = lambda updates: 0.1  # a Python float: a graph would freeze it
    with pytest.raises(ValueError, match="EMA weight"):
        make_step(state, cfg, WorkerInfo(), NO_HOOKS, train_step, fake)
    cfg = _cfg()
    state, _ = _state(cfg)
    with pytest.raises(ValueError, match="2 workers"):
        make_step(state, cfg, WorkerInfo(world_size=2), NO_HOOKS, train_step, fake)
    with pytest.raises(ValueError, match="loss hooks"):
        make_step(state, cfg, WorkerInfo(), FaultInjection(nan_at_steps=(3,)), train_step, fake)
    state.optimizer.param_groups[0]["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"param group\(s\) \[0\] hold a Python float"):
        make_step(state, cfg, WorkerInfo(), NO_HOOKS, train_step, fake)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_the_graphed_step_trains_as_the_eager_step_on_a_gpu():
    steps = 8  # 3 warm-up, the capture, 4 replays; the LR warms up over the first 6
    cfg = _cfg(optim={"name": "adam", "warmup_steps": 6, "ema_decay": 0.9})
    eager, x = _state(cfg.model_copy(update={"cuda_graphs": False}), "cuda")
    graphed, _ = _state(cfg, "cuda")
    step = make_step(graphed, cfg, WorkerInfo(device="cuda"), NO_HOOKS, train_step)
    batches = [torch.roll(x, i, 0) for i in range(steps)]
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        torch.manual_seed(0)
        losses = [train_step(eager, b, cfg)[0].clone() for b in batches]
        torch.manual_seed(0)  # the graphed step draws its noise as the eager one does
        graphed_losses = [step(b)[0].clone() for b in batches]

    torch.testing.assert_close(graphed_losses, losses, rtol=1e-4, atol=1e-5)
    assert graphed.step == eager.step == steps
    for a, b in zip(graphed.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(graphed.ema.module.parameters(), eager.ema.module.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
